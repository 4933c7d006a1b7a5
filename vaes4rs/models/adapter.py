"""Encode+decode of any registered VAE family on a batch, whatever its size and precision.

Everything upstream hands it images in [-1, 1]; everything downstream receives
reconstructions in [-1, 1]. In between: reflect-pad to the model's spatial multiple (SANA's
DC-AE needs 32, so AID's 600x600 becomes 608x608) and crop back, the latent policy (seeded
sample or mode), and overflow handling for fp16/bf16. The family (``families.py``) supplies
each model's quirks: the 5-D frame axis of Qwen-Image, deterministic encoders, [0, 1] I/O.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaes4rs.device import HostCopy
from vaes4rs.models.families import family_for

NOISE_RULE = (
    "latent=sample: image i's noise from torch.Generator('cpu').manual_seed(s), s = the first 8 bytes "
    "(little-endian, top bit cleared) of sha256('<metric.seed>:<image_id>'), whatever the schedule"
)


def noise_seed(seed: int, image_id: str) -> int:
    """The seed of one image's latent noise (see NOISE_RULE)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class NonFiniteOutputError(RuntimeError):
    """A reconstruction held NaN/inf: a silently wrong number is never written."""


@dataclass
class Reconstruction:
    """Reconstructions whose finiteness is read only when asked.

    Reading it waits for the GPU to finish the batch, so the run loop asks one batch later,
    after queueing the next one, and before anything of the batch is written.
    """

    images: torch.Tensor  # [-1, 1], float32
    finite: HostCopy  # 0-dim bool: whether every value is finite, on its way to the host
    problem: str  # the error's message when they are not finite

    def checked(self) -> torch.Tensor:
        """The images, or NonFiniteOutputError if any value is NaN/inf (waits for the flag's copy)."""
        if not bool(self.finite.get()):
            raise NonFiniteOutputError(self.problem)
        return self.images


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
        self.family = family_for(module)
        self.multiple = self.family.spatial_multiple(module)
        self.latent = latent
        self.upcast_on_overflow = upcast_on_overflow
        first = next(module.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.seed = seed
        self._float32_copy: nn.Module | None = None
        self.latent_shapes: dict[tuple[int, int], tuple[int, ...]] = {}  # (H, W) -> (C, h, w)

    @property
    def deterministic(self) -> bool:
        return self.family.deterministic or self.latent == "mode"

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return x, (height, width)

    def noise_generators(self, image_ids: Sequence[str], batch_size: int) -> list[torch.Generator] | None:
        """One CPU generator per image, seeded by (seed, image id), when the policy samples.

        So an image's latent noise is the same whatever the batch, the process, the device or
        a resume. Without ids (direct calls), the image's position in the batch stands in.
        """
        if self.deterministic:
            return None
        ids = list(image_ids) or [str(i) for i in range(batch_size)]
        if len(ids) != batch_size:
            raise ValueError(f"{len(ids)} image ids for a batch of {batch_size}")
        return [torch.Generator("cpu").manual_seed(noise_seed(self.seed, image_id)) for image_id in ids]

    def encode(
        self, x: torch.Tensor, module: nn.Module | None = None, image_ids: Sequence[str] = ()
    ) -> torch.Tensor:
        """Latent of padded [-1, 1] input, following the latent policy."""
        generators = self.noise_generators(image_ids, len(x))
        return self.family.encode(module or self.module, x, self.latent, generators)

    def decode(self, z: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        return self.family.decode(module or self.module, z)

    def reconstruct(self, x: torch.Tensor, image_ids: Sequence[str] = ()) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) -> reconstructions clamped to [-1, 1], float32."""
        return self.start_reconstruction(x, image_ids).checked()

    def start_reconstruction(self, x: torch.Tensor, image_ids: Sequence[str] = ()) -> Reconstruction:
        """``reconstruct`` with its finiteness check left to the caller: nothing here waits for
        the GPU, unless ``upcast_on_overflow`` must decide at once whether to rerun in float32.

        ``no_grad`` as a block, not a decorator: mutation testing (``make mutation``) skips
        decorated functions, and this is the one that pads and crops.
        """
        with torch.no_grad():
            padded, (height, width) = self.pad(x.to(self.device, self.dtype))
            z = self.encode(padded, image_ids=image_ids)
            self.latent_shapes[(height, width)] = self.family.latent_shape(z)
            out = self.decode(z)[..., :height, :width]
            finite = torch.isfinite(out).all()
            if self.upcast_on_overflow and not bool(finite):
                out = self._reconstruct_float32(padded, image_ids)[..., :height, :width]
                finite = torch.isfinite(out).all()
            images = out.float().clamp(-1.0, 1.0)
        problem = (
            f"model '{self.name}' in {out.dtype} produced non-finite values for image(s) "
            f"{list(image_ids)[:8]}; run with model.dtype=float32 or model.upcast_on_overflow=true"
        )
        return Reconstruction(images, HostCopy(finite), problem)

    def _reconstruct_float32(self, padded: torch.Tensor, image_ids: Sequence[str]) -> torch.Tensor:
        if self._float32_copy is None:
            self._float32_copy = copy.deepcopy(self.module).float()
        z = self.encode(padded.float(), self._float32_copy, image_ids)
        return self.decode(z, self._float32_copy)
