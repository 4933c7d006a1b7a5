"""A job's running state on disk, so a crash, a kill or a preempted SLURM task loses at most
the batches since the last checkpoint and a rerun continues to the same numbers.

The state is what the loop keeps across batches: the per-image rows, the metric suite's
running sums and kept features, the skipped files, the sample images, the latent shape per
input size and the batches done. Latent noise depends only on (seed, image), never on the
schedule, so the remaining batches produce exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaes4rs.errors import InputError

CHECKPOINT_SECONDS = 60.0  # run.checkpoint_every=0: checkpoint after this much work


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not belong to this job."""


@dataclass
class Progress:
    batches_done: int = 0
    rows: list[list[Any]] = field(default_factory=list)  # per_image.csv rows, in the order written
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, message)
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    suite_state: dict[str, Any] = field(default_factory=dict)
    baseline_state: dict[str, Any] = field(default_factory=dict)  # the degraded input's suite, if scored
    latent_shapes: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    seconds: float = 0.0  # compute time before this run (timing covers the whole job)
    columns: list[str] = field(default_factory=list)  # per_image.csv header the rows follow


def save(path: Path, progress: Progress) -> None:
    """Write atomically: a crash while saving leaves the previous checkpoint whole."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(asdict(progress), tmp)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(path: Path, columns: list[str]) -> Progress:
    """The checkpoint at ``path``; an unreadable one, or one of another metric suite, is an error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        progress = Progress(**state)
    except Exception as exc:  # truncated, corrupt, or written by another version
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "remove it to start the job from the beginning"
        ) from exc
    if progress.columns != columns:
        raise CheckpointError(
            f"checkpoint {path} holds columns {progress.columns}, this job writes {columns}; "
            "remove it to start the job from the beginning"
        )
    return progress


class Schedule:
    """When to checkpoint: every ``every`` batches, or (``every`` = 0) every CHECKPOINT_SECONDS."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.last = time.monotonic()

    def due(self, batches_done: int) -> bool:
        if self.every:
            return batches_done % self.every == 0
        if time.monotonic() - self.last >= CHECKPOINT_SECONDS:
            self.last = time.monotonic()
            return True
        return False
