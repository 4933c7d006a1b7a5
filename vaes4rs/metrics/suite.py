"""A protocol's metric suite: per-image columns per batch, dataset-level numbers at the end.

The evaluation loop only calls ``prepare``, ``update`` and ``finalize``; each metric is a
small class registered in ``METRICS`` so new ones (LPIPS, FID, ...) slot in without
touching the loop. A metric keeps no images: per-image values go to the results table,
set-level metrics keep small running statistics.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from vaes4rs.config import MetricConfig
from vaes4rs.metrics import pixel


class Metric:
    """Base class: ``update`` returns per-image columns; ``finalize`` set-level values."""

    name: str = ""
    columns: tuple[str, ...] = ()

    def __init__(self, cfg: MetricConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score a batch; pred/target are [-1, 1] float tensors after the protocol's casts."""
        raise NotImplementedError

    def finalize(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        """Dataset-level values from the per-image table (rows in dataset order)."""
        raise NotImplementedError


class PSNR(Metric):
    name = "psnr"
    columns = ("mse", "psnr")

    def update(self, pred, target):
        data_range = pixel.DATA_RANGE[self.cfg.value_range]
        pred = pixel.to_value_range(pred, self.cfg.value_range)
        target = pixel.to_value_range(target, self.cfg.value_range)
        mse = pixel.mse_per_image(pred, target)
        return {"mse": mse, "psnr": torch.as_tensor(pixel.psnr_from_mse(mse.cpu(), data_range))}

    def finalize(self, table):
        n_values = 3 * table["height"].astype(np.float64) * table["width"]
        data_range = pixel.DATA_RANGE[self.cfg.value_range]
        return {"psnr": pixel.pooled_psnr(table["mse"], n_values, self.cfg.pool_size, data_range)}


class SSIM(Metric):
    name = "ssim"
    columns = ("ssim",)

    def update(self, pred, target):
        data_range = pixel.DATA_RANGE[self.cfg.value_range]
        pred = pixel.to_value_range(pred, self.cfg.value_range)
        target = pixel.to_value_range(target, self.cfg.value_range)
        return {"ssim": pixel.ssim_per_image(pred, target, data_range)}

    def finalize(self, table):
        return {"ssim": pixel.group_mean(table["ssim"], self.cfg.pool_size)}


METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (PSNR, SSIM)}


class MetricSuite:
    """The metrics a protocol switches on, with its casts (ground-truth dtype, quantisation)."""

    def __init__(self, cfg: MetricConfig, device: torch.device, model_dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.model_dtype = model_dtype
        self.metrics = [cls(cfg, device) for name, cls in METRICS.items() if getattr(cfg, name)]

    @property
    def columns(self) -> list[str]:
        return [column for metric in self.metrics for column in metric.columns]

    def prepare(self, recon: torch.Tensor, original: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the protocol's casts: quantise the reconstruction, cast the ground truth."""
        pred = pixel.quantize(recon.float(), self.cfg.quantize)
        target = original.float()
        if self.cfg.gt_dtype == "model":
            target = target.to(self.model_dtype).float()
        return pred, target

    def update(self, recon: torch.Tensor, original: torch.Tensor) -> dict[str, np.ndarray]:
        pred, target = self.prepare(recon, original)
        columns: dict[str, np.ndarray] = {}
        for metric in self.metrics:
            for key, values in metric.update(pred, target).items():
                columns[key] = values.detach().double().cpu().numpy()
        return columns

    def finalize(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        values: dict[str, float] = {}
        for metric in self.metrics:
            values.update(metric.finalize(table))
        return values

    def protocol(self) -> dict[str, Any]:
        """Every parameter of the protocol, recorded with each result."""
        return {"name": self.cfg.protocol, **{k: v for k, v in asdict(self.cfg).items() if k != "protocol"}}
