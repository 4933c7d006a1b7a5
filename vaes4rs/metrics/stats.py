"""Reductions of per-image columns to the numbers a protocol reports.

Two ways to reduce: the study's mean of per-group means (groups of consecutive images in
dataset order, its batches of 64), and the plain per-image mean with a percentile-bootstrap
95% confidence interval, which says how far the mean of this sample of images can be
trusted. Both work on the per-image table, so any reduction can be recomputed from
per_image.csv later.
"""

from __future__ import annotations

import numpy as np

# Resamples drawn per chunk are capped at this many indices, so memory stays flat for
# datasets of any size (RESISC45's 31,500 images x 1,000 resamples would be 250 MB at once).
_CHUNK_VALUES = 4_000_000


def group_mean(values: np.ndarray, group_size: int) -> float:
    """Mean over consecutive groups of per-group means (the study's batch-mean averaging).

    ``group_size=1`` is the plain per-image mean; a short last group weighs as much as a
    full one, as the study's last, short batch did.
    """
    values = np.asarray(values, dtype=np.float64)
    means = [values[start : start + group_size].mean() for start in range(0, len(values), group_size)]
    return float(np.mean(means))


def bootstrap_ci(values: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    Images are resampled with replacement ``resamples`` times with a seeded generator, so
    the interval is reproducible to the last digit for the same table.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or resamples < 1:
        raise ValueError(f"bootstrap needs values and resamples >= 1 (got {len(values)}, {resamples})")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _CHUNK_VALUES // len(values))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        means[start : start + count] = values[rng.integers(0, len(values), (count, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    if np.isfinite(means).all():
        low, high = np.percentile(means, [tail, 100 - tail])
    else:  # an image reconstructed exactly has PSNR inf: interpolating inf - inf would give NaN
        low, high = np.percentile(means, [tail, 100 - tail], method="nearest")
    return float(low), float(high)
