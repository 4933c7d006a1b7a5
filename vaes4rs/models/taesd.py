"""Tiny autoencoders of the TAESD family (madebyollin/taesd) built from their .pth files.

These models are published only as ``<variant>_encoder.pth`` / ``<variant>_decoder.pth``
state dicts that no diffusers class loads, so this module rebuilds their architecture as
``nn.Sequential`` stacks whose indices match the state-dict keys.

Supported variants (architecture facts live in ``_VARIANTS``, one entry per variant):

- ``taef2``: distilled into the FLUX.2 VAE latent space; 8x downscale, 32 latent channels,
  a GroupNorm "pool" branch in the lowest-resolution blocks. Checked here against the real
  weights (strict load, reconstruction PSNR) and pinned by sha256.
- ``taesana``: distilled into the Sana DC-AE latent space; 32x downscale, 32 latent
  channels, wider (256/128) low-resolution decoder stages. Its layout follows the upstream
  ``taesd.py`` ``F32Encoder``/``F32Decoder``; no weights were available to check it or to
  record a sha256, so a strict load is its only check and the hash check is skipped with a
  warning.

Images go in as RGB in [0, 1] (not [-1, 1]) and come out as RGB clamped to [0, 1]. The
latents only approximate the target VAE's latents; they are not rescaled to match it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Pinned upstream commit: the sha256 table below describes the files at this commit, and a
# moving branch would make the hash check fail whenever upstream retrains a model.
_TAESD_COMMIT = "5cccb12dc72074a4be35680c3b108548a7c69978"
_TAESD_BASE_URL = f"https://raw.githubusercontent.com/madebyollin/taesd/{_TAESD_COMMIT}"


@dataclass(frozen=True)
class _VariantSpec:
    """Architecture facts of one variant; everything else is derived from the built modules."""

    latent_channels: int
    layout: Literal["f8", "f32"]
    midblock_pool: bool = False

    def __post_init__(self) -> None:
        # Upstream only defines the pool branch for the f8 layout; refuse to invent one.
        if self.midblock_pool and self.layout != "f8":
            raise ValueError("midblock_pool is only defined for the f8 layout")


_VARIANTS: dict[str, _VariantSpec] = {
    "taef2": _VariantSpec(latent_channels=32, layout="f8", midblock_pool=True),
    "taesana": _VariantSpec(latent_channels=32, layout="f32"),
}

TINY_AUTOENCODER_URLS: dict[str, tuple[str, str]] = {
    name: (f"{_TAESD_BASE_URL}/{name}_encoder.pth", f"{_TAESD_BASE_URL}/{name}_decoder.pth")
    for name in _VARIANTS
}

# Only for files we actually had: a variant missing here loads with a logged warning.
TINY_AUTOENCODER_SHA256: dict[str, dict[str, str]] = {
    "taef2": {
        "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
        "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
    },
}


def _conv(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 'same' convolution, the only spatial kernel these models use."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Squash latents into (-3, 3) smoothly so out-of-range latents cannot blow up decoding."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Residual block ReLU(conv(x) + x), optionally preceded by a global-statistics branch.

    The ``pool`` branch (1x1 conv up to 4c, GroupNorm(4), ReLU, 1x1 conv back) gives the
    block image-wide context; upstream added it because TAEF2 did not distil well without.
    """

    def __init__(self, channels: int, pool: bool = False) -> None:
        super().__init__()
        wide = 4 * channels
        self.pool = (
            nn.Sequential(
                nn.Conv2d(channels, wide, 1, bias=False),
                nn.GroupNorm(4, wide),
                nn.ReLU(),
                nn.Conv2d(wide, channels, 1, bias=False),
            )
            if pool
            else None
        )
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(),
            _conv(channels, channels), nn.ReLU(),
            _conv(channels, channels),
        )  # fmt: skip
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def _blocks(channels: int, n: int, pool: bool = False) -> list[nn.Module]:
    return [_Block(channels, pool) for _ in range(n)]


def _f8_encoder(latent_channels: int, pool: bool) -> nn.Sequential:
    return nn.Sequential(
        _conv(3, 64), _Block(64),
        _conv(64, 64, stride=2, bias=False), *_blocks(64, 3),
        _conv(64, 64, stride=2, bias=False), *_blocks(64, 3),
        _conv(64, 64, stride=2, bias=False), *_blocks(64, 3, pool),
        _conv(64, latent_channels),
    )  # fmt: skip


def _f8_decoder(latent_channels: int, pool: bool) -> nn.Sequential:
    return nn.Sequential(
        _SoftClamp(), _conv(latent_channels, 64), nn.ReLU(),
        *_blocks(64, 3, pool), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        *_blocks(64, 3), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        *_blocks(64, 3), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        _Block(64), _conv(64, 3),
    )  # fmt: skip


def _f32_encoder(latent_channels: int) -> nn.Sequential:
    return nn.Sequential(
        _conv(3, 32, stride=2), nn.ReLU(), _conv(32, 64, stride=2), nn.ReLU(), _Block(64),
        _conv(64, 64, stride=2, bias=False), *_blocks(64, 3),
        _conv(64, 64, stride=2, bias=False), *_blocks(64, 3),
        _conv(64, 64, stride=2, bias=False), *_blocks(64, 3),
        _conv(64, latent_channels),
    )  # fmt: skip


def _f32_decoder(latent_channels: int) -> nn.Sequential:
    return nn.Sequential(
        _SoftClamp(), _conv(latent_channels, 256), nn.ReLU(),
        *_blocks(256, 3), nn.Upsample(scale_factor=2), _conv(256, 128, bias=False),
        *_blocks(128, 3), nn.Upsample(scale_factor=2), _conv(128, 64, bias=False),
        *_blocks(64, 3), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        *_blocks(64, 3), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        *_blocks(64, 3), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        _Block(64), _conv(64, 3),
    )  # fmt: skip


def _spec(variant: str) -> _VariantSpec:
    try:
        return _VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown tiny autoencoder variant {variant!r}; valid variants: {sorted(_VARIANTS)}"
        ) from None


class TinyAutoencoder(nn.Module):
    """A TAESD-family autoencoder with randomly initialised weights (see load_tiny_autoencoder).

    ``encoder`` and ``decoder`` are ``nn.Sequential`` so the upstream ``.pth`` files load into
    them with ``strict=True``. Nothing here touches tensor data at construction time, so the
    model can be built on (or moved to) the ``meta`` device for FLOP counting.
    """

    input_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, variant: str) -> None:
        super().__init__()
        spec = _spec(variant)
        self.variant = variant
        self.latent_channels: int = spec.latent_channels
        if spec.layout == "f8":
            self.encoder = _f8_encoder(spec.latent_channels, spec.midblock_pool)
            self.decoder = _f8_decoder(spec.latent_channels, spec.midblock_pool)
        else:
            self.encoder = _f32_encoder(spec.latent_channels)
            self.decoder = _f32_decoder(spec.latent_channels)
        # Derived from the strided convolutions so it cannot disagree with the layout.
        self.spatial_multiple: int = math.prod(
            m.stride[0] for m in self.encoder.modules() if isinstance(m, nn.Conv2d)
        )

    def encode(self, x01: Tensor) -> Tensor:
        """Encode RGB in [0, 1] (N, 3, H, W) to latents (N, C, H/f, W/f); [-1, 1] input is wrong."""
        return self.encoder(x01)

    def decode(self, z: Tensor) -> Tensor:
        """Decode latents to RGB clamped to [0, 1] (the raw output overshoots slightly)."""
        return self.decoder(z).clamp(0.0, 1.0)


def _check_sha256(file: Path, variant: str) -> None:
    """Refuse a cached download that is not the file the table pins (corrupt or replaced)."""
    expected = TINY_AUTOENCODER_SHA256.get(variant, {}).get(file.name)
    if expected is None:
        logger.warning(
            "no sha256 recorded for %s (variant %r); skipping its integrity check",
            file.name,
            variant,
        )
        return
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise ValueError(
            f"sha256 mismatch for {file}: expected {expected}, got {actual}; "
            "delete the file so it is downloaded again"
        )


def _load_from_dir(directory: Path, file_name: str, url: str) -> dict[str, Tensor]:
    file = directory / file_name
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; download it from {url}")
    return torch.load(file, map_location="cpu", weights_only=True)


def _load_from_hub(file_name: str, url: str, variant: str) -> dict[str, Tensor]:
    """Load through the torch hub cache, hash-checking the cached file.

    A file already cached is checked before unpickling, so a corrupt file gives the hash
    error rather than an obscure unpickling one; a fresh download is checked right after.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    was_cached = cached.is_file()
    if was_cached:
        _check_sha256(cached, variant)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", weights_only=True, file_name=file_name
        )
    except OSError as err:  # URLError (offline, HTTP error) is an OSError, as are timeouts
        raise RuntimeError(
            f"could not download {file_name} from {url} ({err}) and it is not cached at "
            f"{cached}; download it and pass model.path=<dir containing it>, or place it "
            "in $TORCH_HOME/hub/checkpoints"
        ) from err
    if not was_cached:
        _check_sha256(cached, variant)
    return state


def load_tiny_autoencoder(
    variant: str,
    path: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyAutoencoder:
    """Build ``variant`` and load its published weights, in eval mode on ``device``/``dtype``.

    With ``path``, read ``<path>/<variant>_{encoder,decoder}.pth`` (no hash check: the caller
    chose the files). Without it, use the torch hub cache ($TORCH_HOME/hub/checkpoints),
    downloading on a miss, and verify the file's sha256 where the table records one.
    """
    model = TinyAutoencoder(variant)
    urls = TINY_AUTOENCODER_URLS[variant]
    for part, module, url in zip(("encoder", "decoder"), (model.encoder, model.decoder), urls):
        file_name = f"{variant}_{part}.pth"
        if path is not None:
            state = _load_from_dir(Path(path), file_name, url)
        else:
            state = _load_from_hub(file_name, url, variant)
        module.load_state_dict(state, strict=True)
    return model.eval().to(device=device, dtype=dtype)
