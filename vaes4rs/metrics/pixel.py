"""Pixel metrics: PSNR (per image and pooled per group) and SSIM, on a stated value range.

PSNR per image or of a group's pooled MSE (the study averaged the PSNR of each batch of 64),
and SSIM with a Gaussian window (11, sigma 1.5, k1 0.01, k2 0.03) on a stated value range
with no hidden downsampling (piq's ``ssim`` averages 600x600 images down to 300x300 by
default). Everything is computed in float64 so neither batch size nor order moves a digit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The SSIM window's radius: 11x11 Gaussian (sigma 1.5), as torchmetrics derives it from sigma.
SSIM_RADIUS = 5
# The data range of each value range the protocols score on.
DATA_RANGE = {"minus_one_one": 2.0, "zero_one": 1.0}


def to_value_range(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """Map [-1, 1] images to the range a protocol scores on."""
    if value_range == "minus_one_one":
        return x
    if value_range == "zero_one":
        return (x + 1) / 2
    raise ValueError(f"unknown value range {value_range!r}; valid: {sorted(DATA_RANGE)}")


def quantize(x: torch.Tensor, rule: str) -> torch.Tensor:
    """[-1, 1] float -> the 8-bit picture a saved file would hold, back in [-1, 1].

    ``round`` is what a PNG writer stores; ``truncate`` is the study's FID input
    (``((x+1)/2).clamp(0,1)*255`` cast to uint8).
    """
    if rule == "none":
        return x
    return to_uint8(x, rule).float() / 127.5 - 1


def to_uint8(x: torch.Tensor, rule: str) -> torch.Tensor:
    """[-1, 1] float -> uint8 by rounding or by truncation."""
    scaled = ((x.float() + 1) / 2).clamp(0, 1) * 255
    if rule == "round":
        scaled = scaled.round()
    elif rule != "truncate":
        raise ValueError(f"unknown quantisation {rule!r}; valid: none, round, truncate")
    return scaled.to(torch.uint8)


def mse_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image of a (B, C, H, W) batch, in float64."""
    diff = pred.double() - target.double()
    return diff.pow(2).flatten(1).mean(dim=1)


def psnr_from_mse(mse: np.ndarray | torch.Tensor | float, data_range: float):
    """10 log10(range^2 / MSE) in float64; a tensor stays on its device (no copy to the host)."""
    if isinstance(mse, torch.Tensor):
        return 10.0 * torch.log10(data_range**2 / mse.double())
    return 10.0 * np.log10(data_range**2 / np.asarray(mse, dtype=np.float64))


def pooled_psnr(mse: np.ndarray, n_values: np.ndarray, group_size: int, data_range: float) -> float:
    """Mean over consecutive groups of ``group_size`` images of the PSNR of the group's MSE.

    A group's MSE pools its squared errors (images of unequal size weigh by their pixel
    count). ``group_size=1`` is the mean of per-image PSNR.
    """
    mse = np.asarray(mse, dtype=np.float64)
    n_values = np.asarray(n_values, dtype=np.float64)
    values = []
    for start in range(0, len(mse), group_size):
        sse = np.sum(mse[start : start + group_size] * n_values[start : start + group_size])
        values.append(psnr_from_mse(sse / np.sum(n_values[start : start + group_size]), data_range))
    return float(np.mean(values))


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by the window's radius, then the 11-tap Gaussian (sigma 1.5) along each axis."""
    taps = torch.arange(2 * SSIM_RADIUS + 1, dtype=x.dtype, device=x.device) - SSIM_RADIUS
    kernel = torch.exp(-(taps**2) / (2 * 1.5**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (SSIM_RADIUS,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """Local SSIM at every pixel (B, C, H, W): Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03.

    torchmetrics' definition (reflect-padded by the window's radius, so border pixels get a
    value too; no downsampling), computed in float64. Written here with a separable window
    because torchmetrics' 2-D float64 convolution is ~6x slower on a CPU (25 s vs 4 s for
    24 images of 256x256); tests/test_metrics_reference.py checks the two agree.
    """
    x, y = pred.double(), target.double()
    mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
    var_x = _gaussian_blur(x * x) - mu_x * mu_x
    var_y = _gaussian_blur(y * y) - mu_y * mu_y
    cov = _gaussian_blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float, border: str) -> torch.Tensor:
    """SSIM of each image: the mean of its SSIM map over channels and pixels.

    ``border="reflect"`` averages every pixel of the reflect-padded map, as torchmetrics'
    StructuralSimilarityIndexMeasure (>= 1.5, so the study's 1.8.2) does. ``"valid"``
    averages only pixels whose 11x11 window lies inside the image, as Wang et al.'s
    reference code and skimage do. The gap grows with the border's share of the image:
    0.015 on the 64x64 test pairs, 0.002 (256 px) to 0.006 (150 px) on the RS samples
    (experiments/paper/protocol_effects.md).
    """
    full = ssim_map(pred, target, data_range)
    if border == "valid":
        if min(full.shape[-2:]) <= 2 * SSIM_RADIUS:
            size = tuple(full.shape[-2:])
            raise ValueError(f"valid-window SSIM needs images over {2 * SSIM_RADIUS} px a side, got {size}")
        full = full[..., SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]
    elif border != "reflect":
        raise ValueError(f"unknown SSIM border handling {border!r}; valid: reflect, valid")
    return full.flatten(1).mean(dim=1)
