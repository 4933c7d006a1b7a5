"""A mixed-size dataset through the paper protocol: the grouped PSNR of metrics.json and of
per_class.csv, against sums written out here.

Two classes in dataset order, image sizes changing inside a class and inside a group of
``pool_size`` images, and short last groups. The expected numbers are the study's reduction
written out: each consecutive group's PSNR of its pooled squared errors (images weigh by
their pixel count; range 2 on [-1, 1]), averaged over groups, a short last group weighing
as a full one; per class, the same over that class's rows in dataset order. The squared
errors are numpy's, on the arrays the test built (known_level_pairs).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR
from tests.metric_weights import known_level_pairs
from vaes4rs.config import MetricConfig
from vaes4rs.metrics.suite import MetricSuite
from vaes4rs.results import write_per_class

# (class, images, height, width, error scale) in dataset order; groups of 2 straddle sizes and
# classes, and errors differ by segment so that weighing images by their pixels changes the PSNR
SEGMENTS = (
    ("forest", 3, 32, 32, 1.0),
    ("harbor", 1, 48, 40, 4.0),
    ("harbor", 1, 24, 24, 0.5),
    ("harbor", 2, 48, 40, 2.0),
)
GROUP = 2
PSNR_REL = 1e-6  # float32 pixels against float64 sums: ~1e-8 of the PSNR (see test_ref_pixels.py)


def paper_protocol() -> MetricConfig:
    merged = OmegaConf.merge(
        OmegaConf.structured(MetricConfig), OmegaConf.load(CONF_DIR / "metric" / "paper.yaml")
    )
    return replace(OmegaConf.to_object(merged), pool_size=GROUP, lpips=False, fid=False, kid=False)


def grouped_psnr(sse: list[float], pixels: list[int]) -> float:
    """Mean over consecutive groups of GROUP images of 10 log10(2^2 / (group SSE / group values))."""
    values = [
        10 * np.log10(4.0 / (sum(sse[i : i + GROUP]) / sum(pixels[i : i + GROUP])))
        for i in range(0, len(sse), GROUP)
    ]
    return float(np.mean(values))


def grouped_mean(values: list[float]) -> float:
    return float(np.mean([np.mean(values[i : i + GROUP]) for i in range(0, len(values), GROUP)]))


def test_mixed_sizes_grouped_psnr_overall_and_per_class(tmp_path: Path) -> None:
    suite = MetricSuite(paper_protocol(), torch.device("cpu"), torch.float32)
    parts, rows = [], []  # rows: (class, height, width, sum of squared errors, values)
    for seed, (name, n, height, width, scale) in enumerate(SEGMENTS):
        pairs = known_level_pairs(n, height, width, seed=seed)
        recons = pairs.x + scale * (pairs.recon - pairs.x)  # float32; the paper protocol does not quantise
        parts.append(suite.update(recons, pairs.x))  # one batch per run of equal sizes
        for recon, x in zip(recons.numpy(), pairs.x.numpy()):
            error = recon.astype(np.float64) - x.astype(np.float64)
            rows.append((name, height, width, float(np.sum(error**2)), 3 * height * width))
    table = {key: np.concatenate([part[key] for part in parts]) for key in suite.columns}
    table["class"] = np.array([row[0] for row in rows])
    table["height"] = np.array([row[1] for row in rows])
    table["width"] = np.array([row[2] for row in rows])

    sse, pixels = [row[3] for row in rows], [row[4] for row in rows]
    metrics = suite.finalize(table)
    assert metrics["psnr"] == pytest.approx(grouped_psnr(sse, pixels), rel=PSNR_REL)
    # pixel weighting matters here: an unweighted mean of the group's MSEs is another number
    unweighted = np.mean(
        [
            10 * np.log10(4.0 / np.mean([s / p for s, p in zip(sse[i : i + GROUP], pixels[i : i + GROUP])]))
            for i in range(0, len(sse), GROUP)
        ]
    )
    assert abs(metrics["psnr"] - unweighted) > 1e3 * PSNR_REL * metrics["psnr"]
    assert metrics["ssim"] == pytest.approx(grouped_mean(list(table["ssim"])), rel=1e-12)

    write_per_class(tmp_path / "per_class.csv", table, suite)
    with (tmp_path / "per_class.csv").open(newline="") as handle:
        per_class = {row["class"]: row for row in csv.DictReader(handle)}
    assert list(per_class) == ["forest", "harbor"]
    for name in per_class:
        mine = [i for i, row in enumerate(rows) if row[0] == name]
        row = per_class[name]
        assert int(row["n_images"]) == len(mine)
        expected = grouped_psnr([sse[i] for i in mine], [pixels[i] for i in mine])
        assert float(row["psnr"]) == pytest.approx(expected, rel=PSNR_REL), name
        assert float(row["ssim"]) == pytest.approx(grouped_mean([table["ssim"][i] for i in mine]), rel=1e-12)
    # harbor's groups are (48x40, 24x24) and (48x40, 48x40): not the overall grouping
    assert float(per_class["harbor"]["psnr"]) != pytest.approx(metrics["psnr"], rel=1e-3)
