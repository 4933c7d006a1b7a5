"""End to end with a real pretrained autoencoder (TAEF2) on real remote-sensing images.

Random weights cannot reveal a wrong input range, channel order, padding or crop; a real
model does: these numbers collapse when the plumbing is wrong (see the negative case).
Needs ../shared (weights and images); skipped with the reason when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import RS_SAMPLES, SHARED, needs_shared, read_per_image
from tests.test_cli import run_cli
from vaes4rs.config import MetricConfig
from vaes4rs.data import list_images, read_image
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.metrics.suite import MetricSuite
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.taesd import load_tiny_autoencoder

TAEF2 = SHARED / "weights" / "taef2"
RESISC45 = RS_SAMPLES / "resisc45"
NO_PRETRAINED_METRIC_NETS = ["metric.lpips=false", "metric.fid=false", "metric.kid=false"]


def test_taef2_standard_protocol_on_resisc45(tmp_path: Path) -> None:
    """An independent script measured 31.5 dB / 0.92 here; a range mix-up gives ~23 dB."""
    needs_shared(TAEF2 / "taef2_encoder.pth")
    needs_shared(RESISC45)
    out = tmp_path / "run"
    result = run_cli(
        [
            "model=taef2",
            f"model.path={TAEF2}",
            "dataset=folder",
            f"dataset.root={RESISC45}",
            "metric=standard",
            *NO_PRETRAINED_METRIC_NETS,
            "logger=none",
            "run.device=cpu",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "metrics.json").read_text())
    metrics = payload["metrics"]
    assert (payload["model"], payload["dataset"], payload["n_images"]) == ("taef2", "resisc45", 24)
    assert metrics["psnr"] > 29.0 and metrics["ssim"] > 0.88, metrics
    table = read_per_image(out / "per_image.csv")
    assert metrics["psnr"] == pytest.approx(table["psnr"].mean(), abs=1e-9)  # standard: mean of images
    assert payload["model_stats"]["latent_shape"]["256x256"] == [32, 32, 32]
    assert payload["protocol"]["name"] == "standard" and payload["protocol"]["latent"] == "mode"
    assert "lpips" not in metrics and "fid" not in metrics  # switched off: missing, never zero


class RangeMixupAdapter(VAEAdapter):
    """The bug the test above must catch: [-1, 1] pixels fed to a [0, 1] model, output read as [-1, 1]."""

    def encode(self, x, module=None):
        return (module or self.module).encode(x)

    def decode(self, z, module=None):
        return (module or self.module).decode(z)


@pytest.mark.parametrize(("adapter_cls", "correct"), [(VAEAdapter, True), (RangeMixupAdapter, False)])
def test_range_mixup_fails_the_quality_bar(adapter_cls: type[VAEAdapter], correct: bool) -> None:
    needs_shared(TAEF2 / "taef2_encoder.pth")
    needs_shared(RESISC45)
    records = list_images(RESISC45, None, limit_per_class=4)
    images = torch.stack([torch.from_numpy(read_image(r.path)).permute(2, 0, 1) for r in records])
    original = to_minus_one_one(images)
    adapter = adapter_cls(load_tiny_autoencoder("taef2", str(TAEF2)), name="taef2", latent="mode")
    suite = MetricSuite(
        MetricConfig(protocol="standard", value_range="zero_one", pool_size=1, lpips=False, fid=False),
        torch.device("cpu"),
        torch.float32,
    )
    psnr = float(np.mean(suite.update(adapter.reconstruct(original), original)["psnr"]))
    assert (psnr > 29.0) == correct, f"mean PSNR {psnr:.2f} dB"
