"""VAE families: one small class per way of driving a VAE, registered by class name.

A family knows its model's quirks and nothing else: the spatial multiple its input sides
must have, how a [-1, 1] batch becomes a latent (mode or seeded sample, or a deterministic
encoder), how a latent becomes a [-1, 1] image again, the per-image latent shape, and how to
rebuild the architecture without weights. Everything else (padding, overflow handling,
loading, counting) asks the registry, as torch-fidelity's callers look feature extractors up
by name. A new VAE family is one subclass here, decorated with ``@register_family``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn


class VAEFamily:
    """The AutoencoderKL way, which the other families adjust: a latent distribution to sample."""

    # Loaded with diffusers ``from_pretrained`` (``False``: our own module, loaded by zoo.load_vae).
    diffusers: ClassVar[bool] = True
    # The encoder yields one latent, so the latent policy (sample | mode) does not apply.
    deterministic: ClassVar[bool] = False

    def spatial_multiple(self, module: nn.Module) -> int:
        """Input sides must be multiples of this for the reconstruction to come back full size."""
        return 2 ** (len(module.config.block_out_channels) - 1)

    def encode(
        self, module: nn.Module, x: torch.Tensor, latent: str, generators: list[torch.Generator] | None
    ) -> torch.Tensor:
        """Latent of a padded [-1, 1] batch: the distribution's mode, or a sample with image i's
        noise drawn from ``generators[i]`` (diffusers draws per image from a list of generators)."""
        dist = module.encode(x).latent_dist
        if latent == "mode":
            return dist.mode()
        return sample_latent(dist, generators) if generators else dist.sample()

    def decode(self, module: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return module.decode(z).sample

    def latent_shape(self, z: torch.Tensor) -> tuple[int, ...]:
        """Per-image latent shape (C, h, w)."""
        return tuple(z.shape[1:])

    def meta_copy(self, module: nn.Module) -> nn.Module:
        """The same architecture on the meta device (no memory, no weights; the module is untouched)."""
        with torch.device("meta"):
            return type(module).from_config(module.config).eval()


def sample_latent(dist, generators: list[torch.Generator]) -> torch.Tensor:
    """``dist.sample(generator=generators)`` of a diffusers ``DiagonalGaussianDistribution``,
    the same numbers without its wait for the GPU.

    diffusers draws image i's noise with ``generators[i]`` on the CPU (ours are CPU generators,
    so an image's noise is the same on every device) and copies it from pageable memory, and
    such a copy waits until the GPU has run the encoder. The same draws, pinned, are copied
    without that wait, so the decoder is queued at once. Written here because diffusers has
    no option for it; tests compare it with ``dist.sample`` bit for bit.
    """
    one_image = (1, *dist.mean.shape[1:])
    noise = torch.cat([torch.randn(one_image, generator=g, dtype=dist.parameters.dtype) for g in generators])
    if dist.mean.device.type == "cuda":
        noise = noise.pin_memory()
    return dist.mean + dist.std * noise.to(dist.mean.device, non_blocking=True)


_REGISTRY: dict[str, VAEFamily] = {}


def register_family(*class_names: str) -> Callable[[type[VAEFamily]], type[VAEFamily]]:
    """Class decorator: drive models of these classes (``type(model).__name__``) with this family."""

    def register(cls: type[VAEFamily]) -> type[VAEFamily]:
        for name in class_names:
            if name in _REGISTRY:
                owner = type(_REGISTRY[name]).__name__
                raise ValueError(f"VAE class {name} is already registered to {owner}")
            _REGISTRY[name] = cls()
        return cls

    return register


def family_for(model: nn.Module | str) -> VAEFamily:
    """The family of a model (or of a class name), with the supported classes named when there is none."""
    name = model if isinstance(model, str) else type(model).__name__
    if name not in _REGISTRY:
        raise ValueError(f"VAE class {name!r} is not supported; supported: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def diffusers_class_names() -> list[str]:
    """The diffusers classes a model folder's ``config.json`` may name."""
    return sorted(name for name, family in _REGISTRY.items() if family.diffusers)


@register_family("AutoencoderKL", "AutoencoderKLFlux2")
class KLFamily(VAEFamily):
    """SD2.1, SDXL, SD3.5, FLUX.1 (AutoencoderKL) and FLUX.2: the base behaviour as it is."""


@register_family("AutoencoderKLQwenImage")
class QwenImageFamily(VAEFamily):
    """A video VAE run on single frames: a frame axis of 1 goes in and is dropped coming out."""

    def spatial_multiple(self, module: nn.Module) -> int:
        return 2 ** len(module.config.temperal_downsample)

    def encode(self, module, x, latent, generators):
        return super().encode(module, x.unsqueeze(2), latent, generators)

    def decode(self, module, z):
        return super().decode(module, z)[:, :, 0]

    def latent_shape(self, z):
        """(C, h, w): the frame axis of 1 stores nothing."""
        channels, _, *spatial = z.shape[1:]
        return (channels, *spatial)


@register_family("AutoencoderDC")
class DeepCompressionFamily(VAEFamily):
    """SANA's DC-AE: a deterministic encoder, sides a multiple of 32 for the f32 model."""

    deterministic = True

    def spatial_multiple(self, module):
        return 2 ** (len(module.config.encoder_block_out_channels) - 1)

    def encode(self, module, x, latent, generators):
        return module.encode(x).latent


@register_family("AutoencoderTiny")
class DiffusersTinyFamily(DeepCompressionFamily):
    """The TAESD family as diffusers ships it (taesd, taesdxl, taesd3, taef1): deterministic."""

    def encode(self, module, x, latent, generators):
        return module.encode(x).latents


@register_family("TinyAutoencoder")
class UnitRangeTinyFamily(VAEFamily):
    """Our module for the TAESD-family ``.pth`` files (taef2, taesana): images in [0, 1], not [-1, 1]."""

    diffusers = False
    deterministic = True

    def spatial_multiple(self, module):
        return int(module.spatial_multiple)

    def encode(self, module, x, latent, generators):
        return module.encode((x + 1) / 2)

    def decode(self, module, z):
        return module.decode(z) * 2 - 1

    def meta_copy(self, module):
        """The variant names the architecture (there is no config dict)."""
        with torch.device("meta"):
            return type(module)(module.variant).eval()
