"""Inception features of the reference images, kept across the jobs of one process (a sweep).

Why: a sweep scores every model against the same originals, and Inception on them is half of
FID's cost, the largest part of the metric suite at small image sizes (experiments/throughput).
Kept here, the originals' features are computed by the sweep's first model only.

A hit needs the same input to the same computation, so the key holds everything that makes
Inception's input from the dataset's files: the dataset's resolved config, the batch's files
(path, size, modification time) in order, which images are the reference (clean or the
degraded input), the batch's shape, and the metric's own settings (ground-truth cast, model
dtype, quantisation, resize, weights file, device). The features are then those the same
computation would give again; ``run.feature_cache_mb`` bounds the memory (0: off).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vaes4rs.device import HostCopy

MIB = 2**20


def file_identity(path: Path) -> tuple[str, int, int]:
    """(path, size, modification time in ns): what a key holds to say a file is the one it was."""
    stat = os.stat(path)
    return str(path), stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class ReferenceBatch:
    """What identifies one batch's reference images before any metric casts them."""

    dataset: str  # the resolved dataset config, as text
    files: tuple[tuple[str, str, int, int], ...]  # (image id, path, size, mtime_ns), in batch order
    which: str  # "clean" or "input" (the degraded images the VAE was given)
    shape: tuple[int, ...]

    @classmethod
    def of(
        cls, dataset: str, images: Sequence[tuple[str, Path]], which: str, shape: Sequence[int]
    ) -> ReferenceBatch:
        """``images``: (image id, file) of each image; an id also names the band (band_mode=each)."""
        files = tuple((image_id, *file_identity(path)) for image_id, path in images)
        return cls(dataset, files, which, tuple(int(n) for n in shape))


@dataclass(frozen=True)
class Reuse:
    """What a metric needs to look its reference features up: the key so far and the budget."""

    key: Hashable  # a ReferenceBatch and the suite's casts; the metric adds its own settings
    budget_mib: int


class FeatureCache:
    """Features by key, on the host, within a byte budget; nothing is evicted (a sweep reuses all)."""

    def __init__(self) -> None:
        self.entries: dict[Hashable, HostCopy] = {}
        self.bytes = 0
        self.hits = 0  # lookups answered (the loop logs each job's share)

    def get(self, key: Hashable, device: torch.device) -> torch.Tensor | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.hits += 1
        return entry.get().to(device, non_blocking=True)  # its copy to the host is normally long finished

    def put(self, key: Hashable, features: torch.Tensor, budget_mib: int) -> None:
        """Keep ``features`` under ``key`` if the budget allows, without waiting for the device."""
        size = features.numel() * features.element_size()
        if key in self.entries or self.bytes + size > budget_mib * MIB:
            return
        self.entries[key] = HostCopy(features)  # features are never changed in place
        self.bytes += size

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = self.hits = 0


REFERENCE_FEATURES = FeatureCache()  # one per process: the jobs of a sweep run one after another in it
