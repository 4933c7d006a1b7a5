"""The one place that knows each VAE family's quirks.

Everything upstream hands it images in [-1, 1]; everything downstream receives
reconstructions in [-1, 1]. In between: reflect-pad to the model's spatial multiple (SANA's
DC-AE needs 32, so AID's 600x600 becomes 608x608) and crop back, a 5-D frame axis for
Qwen-Image, the latent policy (seeded sample or mode; DC-AE and the tiny autoencoders are
deterministic), [0, 1] I/O for our TAESD-family module, and overflow handling for fp16/bf16.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NonFiniteOutputError(RuntimeError):
    """A reconstruction held NaN/inf: a silently wrong number is never written."""


def family_of(module: nn.Module) -> str:
    name = type(module).__name__
    families = {
        "AutoencoderKL": "kl",
        "AutoencoderKLFlux2": "kl",
        "AutoencoderDC": "dc",
        "AutoencoderKLQwenImage": "qwen",
        "AutoencoderTiny": "tiny",
        "TinyAutoencoder": "tiny01",
    }
    if name not in families:
        raise ValueError(f"no adapter for VAE class {name}; supported: {sorted(families)}")
    return families[name]


def spatial_multiple(module: nn.Module) -> int:
    """Input sides must be multiples of this for the reconstruction to come back full size."""
    family = family_of(module)
    config = getattr(module, "config", None)
    if family == "kl":
        return 2 ** (len(config.block_out_channels) - 1)
    if family in ("dc", "tiny"):
        return 2 ** (len(config.encoder_block_out_channels) - 1)
    if family == "qwen":
        return 2 ** len(config.temperal_downsample)
    return int(module.spatial_multiple)


def latent_shape_of(z: torch.Tensor) -> tuple[int, ...]:
    """Per-image latent shape (C, h, w); a 5-D latent (Qwen) has a frame axis of 1 that stores nothing."""
    shape = tuple(z.shape[1:])
    return (shape[0], *shape[2:]) if z.dim() == 5 else shape


class VAEAdapter:
    """Runs encode+decode of any supported VAE on a batch of [-1, 1] images."""

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        latent: str = "sample",
        seed: int = 42,
        upcast_on_overflow: bool = False,
    ) -> None:
        self.module = module
        self.name = name
        self.family = family_of(module)
        self.multiple = spatial_multiple(module)
        self.latent = latent
        self.upcast_on_overflow = upcast_on_overflow
        first = next(module.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.generator = torch.Generator(device=self.device if self.device.type != "meta" else "cpu")
        self.generator.manual_seed(seed)
        self._float32_copy: nn.Module | None = None
        self.latent_shapes: dict[tuple[int, int], tuple[int, ...]] = {}  # (H, W) -> (C, h, w)

    @property
    def deterministic(self) -> bool:
        return self.family in ("dc", "tiny", "tiny01") or self.latent == "mode"

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return x, (height, width)

    def encode(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Latent of padded [-1, 1] input, following the latent policy."""
        module = module or self.module
        if self.family == "qwen":
            x = x.unsqueeze(2)
        if self.family == "dc":
            return module.encode(x).latent
        if self.family == "tiny":
            return module.encode(x).latents
        if self.family == "tiny01":
            return module.encode((x + 1) / 2)
        dist = module.encode(x).latent_dist
        if self.latent == "mode":
            return dist.mode()
        return dist.sample(generator=self.generator)

    def decode(self, z: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        module = module or self.module
        if self.family == "tiny01":
            return module.decode(z) * 2 - 1
        out = module.decode(z).sample
        return out[:, :, 0] if self.family == "qwen" else out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, image_ids: Sequence[str] = ()) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) -> reconstructions clamped to [-1, 1], float32."""
        padded, (height, width) = self.pad(x.to(self.device, self.dtype))
        z = self.encode(padded)
        self.latent_shapes[(height, width)] = latent_shape_of(z)
        out = self.decode(z)[..., :height, :width]
        if not torch.isfinite(out).all() and self.upcast_on_overflow:
            out = self._reconstruct_float32(padded)[..., :height, :width]
        if not torch.isfinite(out).all():
            raise NonFiniteOutputError(
                f"model '{self.name}' in {out.dtype} produced non-finite values for image(s) "
                f"{list(image_ids)[:8]}; run with model.dtype=float32 or model.upcast_on_overflow=true"
            )
        return out.float().clamp(-1.0, 1.0)

    def _reconstruct_float32(self, padded: torch.Tensor) -> torch.Tensor:
        if self._float32_copy is None:
            self._float32_copy = copy.deepcopy(self.module).float()
        z = self.encode(padded.float(), self._float32_copy)
        return self.decode(z, self._float32_copy)
