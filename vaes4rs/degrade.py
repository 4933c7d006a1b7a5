"""Synthetic degradations of the inputs, to test the study's claim that VAEs "may implicitly
denoise/deblur" (experiments/degradation).

Every image is degraded on its own, in the order haze, blur, down-then-up sampling, noise,
JPEG, on float32 pixels in [0, 1] (float64 made the blur ~10x slower for nothing a
uint8 result can show); the result is rounded and clipped to uint8 once at the end
(before the JPEG encoder, which quantises itself), so the VAE sees what a degraded image file
would hold. The only random step, the noise, is drawn from a generator seeded by (seed, image
id) (``NOISE_RULE``), so a degraded image does not depend on batch size, process count or resume.

Mapping the study's settings. The study names noise 0.1 / 0.2 and haze 0.3 / 0.5 without
defining them, and our reference notes of it (../shared/reference/paper.md) give no detail of
a degradation experiment at all (they say neither claim was measured). We read them as:

- noise sigma: the standard deviation of additive Gaussian noise on the [0, 1] pixel scale
  (0.1 = 25.5 of 255 levels), the usual convention of denoising benchmarks;
- haze h: the density of the atmospheric scattering model I = J t + A (1 - t) with a
  homogeneous transmission t = 1 - h and a white airlight A = 1 (haze 0.3 -> t = 0.7), the
  usual synthetic-haze convention; h read as t itself (t = 0.3) would be a far denser haze.
  The model is applied to the encoded [0, 1] pixel values, not to linear radiance.

Both readings are ours: the presets (conf/experiment/degradation_*.yaml) spell out haze_t and
noise_sigma, so another reading is one override away.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import gaussian_blur

from vaes4rs.config import DegradeConfig

ORDER = ("haze", "blur", "downsample", "noise", "jpeg")
BLUR_TRUNCATE = 3.0  # the blur kernel covers +-3 sigma (radius ceil(3 sigma) pixels)
JPEG_SUBSAMPLING = "4:2:0"  # Pillow's default chroma subsampling, as most saved JPEGs have
NOISE_RULE = (
    "noise of image i from torch.Generator('cpu').manual_seed(s), s = the first 8 bytes "
    "(little-endian, top bit cleared) of sha256('degrade:<dataset.degrade.seed>:<image_id>'), "
    "drawn as float32 standard normals of the image's (3, H, W) shape"
)


def noise_seed(seed: int, image_id: str) -> int:
    """The seed of one image's degradation noise (see NOISE_RULE).

    The "degrade:" prefix keeps this stream apart from the latent noise of the adapter
    (sha256 of '<metric.seed>:<image_id>'), which would otherwise be the same numbers
    whenever the two seeds are equal.
    """
    digest = hashlib.sha256(f"degrade:{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def kinds(cfg: DegradeConfig) -> list[str]:
    """The degradations ``cfg`` applies, in the order they are applied."""
    applied = {
        "haze": cfg.haze_t < 1.0,
        "blur": cfg.blur_sigma > 0,
        "downsample": cfg.downsample > 1,
        "noise": cfg.noise_sigma > 0,
        "jpeg": cfg.jpeg_quality is not None,
    }
    return [kind for kind in ORDER if applied[kind]]


def _strength(cfg: DegradeConfig, kind: str) -> float:
    """One number per kind for a plot's x axis (haze: its density 1 - t)."""
    values = {
        "haze": 1.0 - cfg.haze_t,
        "blur": cfg.blur_sigma,
        "downsample": float(cfg.downsample),
        "noise": cfg.noise_sigma,
        "jpeg": float(cfg.jpeg_quality or 0),
    }
    return values[kind]


STRENGTH_AXIS = {
    "haze": "haze density 1 - t",
    "blur": "blur sigma (pixels)",
    "downsample": "down-sampling factor",
    "noise": "noise sigma ([0, 1] scale)",
    "jpeg": "JPEG quality",
}


def _kind_label(cfg: DegradeConfig, kind: str) -> str:
    labels = {
        "haze": f"haze {1.0 - cfg.haze_t:g} (t={cfg.haze_t:g}, A={cfg.haze_airlight:g})",
        "blur": f"blur σ={cfg.blur_sigma:g}px",
        "downsample": f"down ×{cfg.downsample}",
        "noise": f"noise σ={cfg.noise_sigma:g}",
        "jpeg": f"JPEG q={cfg.jpeg_quality}",
    }
    return labels[kind]


def label(cfg: DegradeConfig) -> str:
    """One line for plots and logs, e.g. ``noise σ=0.1``; ``none`` when nothing is applied."""
    return " + ".join(_kind_label(cfg, kind) for kind in kinds(cfg)) or "none"


def describe(cfg: DegradeConfig) -> dict[str, Any]:
    """The settings for metrics.json, with what the degradation report plots by.

    ``kind`` joins the applied kinds with "+"; ``strength`` is the one number of a single kind
    (None for none or several), on the axis ``strength_axis`` names.
    """
    applied = kinds(cfg)
    single = applied[0] if len(applied) == 1 else None
    return {
        "active": cfg.active,
        "kind": "+".join(applied) or "none",
        "strength": _strength(cfg, single) if single else None,
        "strength_axis": STRENGTH_AXIS[single] if single else None,
        "label": label(cfg),
        "haze_t": cfg.haze_t,
        "haze_airlight": cfg.haze_airlight,
        "blur_sigma": cfg.blur_sigma,
        "downsample": cfg.downsample,
        "noise_sigma": cfg.noise_sigma,
        "jpeg_quality": cfg.jpeg_quality,
        "seed": cfg.seed,
        "order": list(ORDER),
        "resampling": "bicubic (a = -0.5, Pillow's kernel), antialiased down, back up to the original size",
        "blur_kernel": f"Gaussian, radius ceil({BLUR_TRUNCATE:g} sigma), reflect borders",
        "jpeg": f"Pillow, chroma subsampling {JPEG_SUBSAMPLING}",
        "noise_rule": NOISE_RULE,
    }


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(BLUR_TRUNCATE * sigma)
    if radius >= min(x.shape[-2:]):
        raise ValueError(
            f"dataset.degrade.blur_sigma={sigma:g} needs a kernel radius of {radius} px, at least the "
            f"image side {min(x.shape[-2:])}; reflect borders need a smaller blur"
        )
    side = 2 * radius + 1
    return gaussian_blur(x, [side, side], [sigma, sigma])  # reflect-padded


def _down_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic down by ``factor`` (floor of each side, at least 1 pixel) and back up.

    torch's ``antialias=True`` bicubic is Pillow's resampling (a = -0.5, support widened on the
    way down so it does not alias); used both ways so the whole step is Pillow's ``resize``.
    """
    height, width = x.shape[-2:]
    small = (max(1, height // factor), max(1, width // factor))
    down = F.interpolate(x, size=small, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(down, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def _jpeg(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode a uint8 CHW image with Pillow, as a JPEG file written at ``quality`` holds it."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(
        buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING
    )
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        array = np.array(decoded.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _degrade_one(image: torch.Tensor, image_id: str, cfg: DegradeConfig) -> torch.Tensor:
    x = image.to(torch.float32).unsqueeze(0) / 255.0
    if cfg.haze_t < 1.0:
        x = x * cfg.haze_t + cfg.haze_airlight * (1.0 - cfg.haze_t)
    if cfg.blur_sigma > 0:
        x = _blur(x, cfg.blur_sigma)
    if cfg.downsample > 1:
        x = _down_up(x, cfg.downsample)
    if cfg.noise_sigma > 0:
        generator = torch.Generator("cpu").manual_seed(noise_seed(cfg.seed, image_id))
        x = x + cfg.noise_sigma * torch.randn(x.shape, generator=generator, dtype=torch.float32)
    pixels = (x[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return _jpeg(pixels, cfg.jpeg_quality) if cfg.jpeg_quality is not None else pixels


def degrade(images: torch.Tensor, image_ids: Sequence[str], cfg: DegradeConfig) -> torch.Tensor:
    """Degrade a (B, 3, H, W) uint8 CPU batch as ``cfg`` says; the input itself when nothing applies.

    Each image is processed alone with its own seeded noise, so the result for an image is the
    same whatever batch it comes in.
    """
    if not cfg.active:
        return images
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"degrade expects (B, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}"
        )
    if len(image_ids) != images.shape[0]:
        raise ValueError(f"{len(image_ids)} image ids for a batch of {images.shape[0]} images")
    images = images.cpu()
    return torch.stack([_degrade_one(image, image_id, cfg) for image, image_id in zip(images, image_ids)])
