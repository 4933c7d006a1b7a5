"""One job over several processes (``torchrun``): each rank scores every world-th batch, rank 0
merges and writes the same files a single process writes.

Batches are dealt out whole, by position, so no image is padded in or scored twice (a
DistributedSampler pads, which would corrupt means and FID). Per-image values do not depend
on the rank (latent noise is seeded per image), FID's running sums add, and KID's kept
features are put back in batch order, so the merged results equal a single process's: every
per-image value exactly, FID to rounding in the order of the sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Ranks()


def ranks_from_environment() -> Ranks:
    """The process group torchrun describes in the environment (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE_PROCESS
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (torchrun's LOCAL_RANK) when the job runs on CUDA."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    index = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if ranks.world == 1:
        return [value]
    parts: list[Any] = [None] * ranks.world
    dist.all_gather_object(parts, value)
    return parts
