"""The rate a codec needs for a given quality, and a VAE point's BD-rate against a codec.

Bjøntegaard's delta rate compares two rate-quality curves by the mean difference of their
log-rates over the quality range both cover. A VAE's storage option is one point, not a
curve, so the range shrinks to that point's quality and the delta becomes the rate
difference at equal quality: ``bpp_vae / bpp_codec(q_vae) - 1``, where ``bpp_codec(q)`` is
the codec's log-rate interpolated in quality by a monotone cubic (PCHIP, as current BD-rate
tools use) through the codec's measured points. Outside the measured quality range nothing
is extrapolated: the rate is unknown (``None``), and the report says which way it lies.
Negative: the VAE point needs fewer bits than the codec for the same quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def quality_front(bpp: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The codec's efficient points: by rising rate, each better than every cheaper one.

    Drops NaN and points that spend more bits for no better quality, so quality rises
    strictly with rate and the curve can be read both ways.
    """
    rate, value = np.asarray(bpp, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    keep = np.isfinite(rate) & np.isfinite(value) & (rate > 0)
    order = np.argsort(rate[keep], kind="stable")
    rate, value = rate[keep][order], value[keep][order]
    front_rate, front_value = [], []
    for r, v in zip(rate, value):
        if not front_value or v > front_value[-1]:
            front_rate.append(r)
            front_value.append(v)
    return np.asarray(front_rate), np.asarray(front_value)


def rate_at_quality(
    bpp: Sequence[float], quality: Sequence[float], target: float, higher_is_better: bool = True
) -> float | None:
    """Bits per pixel the codec needs to reach ``target``; None outside its measured range.

    ``higher_is_better=False`` for distances such as LPIPS.
    """
    sign = 1.0 if higher_is_better else -1.0
    rate, value = quality_front(bpp, sign * np.asarray(quality, dtype=np.float64))
    goal = sign * target
    if len(rate) == 0 or not math.isfinite(goal) or not value[0] <= goal <= value[-1]:
        return None
    if len(rate) == 1:
        return float(rate[0])
    from scipy.interpolate import PchipInterpolator

    return float(np.exp(PchipInterpolator(value, np.log(rate))(goal)))


def point_bd_rate(
    point_bpp: float,
    point_quality: float,
    bpp: Sequence[float],
    quality: Sequence[float],
    higher_is_better: bool = True,
) -> tuple[float | None, float | None]:
    """(codec bpp at the point's quality, BD-rate in percent); (None, None) out of range."""
    rate = rate_at_quality(bpp, quality, point_quality, higher_is_better)
    if rate is None:
        return None, None
    return rate, 100.0 * (point_bpp / rate - 1.0)
