"""Frozen timm networks as feature extractors of [-1, 1] image batches (CMMD's CLIP, the probe).

Each network sees images the way it was evaluated when published: its own eval preprocessing
from timm's pretrained config (``resolve_data_config`` + ``create_transform``: resize of the
shorter side to input size / crop_pct with the config's interpolation, antialiased; centre crop;
the config's mean and std), applied to whole batches of float tensors, so reconstructions are
never rounded to 8 bits on the way unless the protocol quantises them.

Features are kept per batch in host memory in float32 with the batch's class labels; ``KeptFeatures``
is that store, which checkpoints hold and several processes' states merge into in batch order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from vaes4rs.device import HostCopy


class FrozenFeatures:
    """``model``'s float32 output for [-1, 1] images after its eval preprocessing (unit length: ``unit``)."""

    def __init__(self, model: nn.Module, device: torch.device, *, unit: bool = False) -> None:
        from timm.data import create_transform, resolve_data_config

        self.model = model.to(device)
        self.config = resolve_data_config({}, model=model)
        self.transform = create_transform(**self.config, is_training=False)
        self.unit = unit

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) features of (B, 3, H, W) images in [-1, 1]; values outside an image's range are clipped."""
        pixels = ((images.float() + 1) / 2).clamp(0, 1)
        out = self.model(self.transform(pixels)).float()
        return nn.functional.normalize(out, dim=1) if self.unit else out


class KeptFeatures:
    """Features of originals and reconstructions, one entry per batch in the order scored.

    ``labels`` of a batch are None when the caller gave none (a metric that needs them says so).
    Each batch's copy to the host is queued when it is added and waited for when read
    (``entries``), so adding one does not wait for the GPU.
    """

    def __init__(self, entries: Iterable[tuple[list[str] | None, torch.Tensor, torch.Tensor]] = ()) -> None:
        self._batches = [(labels, HostCopy(real), HostCopy(fake)) for labels, real, fake in entries]

    def add(self, labels: Sequence[str] | None, real: torch.Tensor, fake: torch.Tensor) -> None:
        if labels is not None and len(labels) != len(real):
            raise ValueError(f"{len(labels)} labels for a batch of {len(real)} images")
        self._batches.append((None if labels is None else list(labels), HostCopy(real), HostCopy(fake)))

    @property
    def entries(self) -> list[tuple[list[str] | None, torch.Tensor, torch.Tensor]]:
        """(labels, real, fake) per batch, on the host."""
        return [(labels, real.get(), fake.get()) for labels, real, fake in self._batches]

    @classmethod
    def merge(cls, parts: list[KeptFeatures], batches: list[list[int]]) -> KeptFeatures:
        """Several processes' entries put back in the set's batch order (``batches[r]``: rank r's numbers)."""
        numbered = [pair for part, numbers in zip(parts, batches) for pair in zip(numbers, part.entries)]
        return cls([entry for _, entry in sorted(numbered, key=lambda pair: pair[0])])

    @property
    def count(self) -> int:
        return sum(len(real) for _, real, _ in self.entries)

    def real(self) -> torch.Tensor:
        return torch.cat([real for _, real, _ in self.entries])

    def fake(self) -> torch.Tensor:
        return torch.cat([fake for _, _, fake in self.entries])

    def labels(self) -> list[str] | None:
        """Every image's label in order; None when any batch came without labels."""
        if any(labels is None for labels, _, _ in self.entries):
            return None
        return [label for labels, _, _ in self.entries for label in labels or []]
