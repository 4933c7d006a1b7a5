"""One job over several processes (``torchrun``, or a SLURM job of several tasks through
hydra's submitit launcher): each rank scores every world-th batch, rank 0 merges and writes
the same files a single process writes.

Batches are dealt out whole, by position, so no image is padded in or scored twice (a
DistributedSampler pads, which would corrupt means and FID). Per-image values do not depend
on the rank (latent noise is seeded per image), FID's running sums add (in fixed point, so
exactly, in any order), and KID's kept features are put back in batch order, so the merged
results equal a single process's, every number to the last bit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Ranks()


def ranks_from_environment() -> Ranks:
    """The process group torchrun or a submitit job of several tasks describes (one process without)."""
    if "WORLD_SIZE" not in os.environ and "SUBMITIT_EXECUTOR" in os.environ:
        export_submitit_tasks()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE_PROCESS
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def export_submitit_tasks() -> None:
    """Describe a submitit job's tasks (SLURM's ``tasks_per_node`` x nodes) the way torchrun does.

    submitit's own helper sets RANK, WORLD_SIZE, LOCAL_RANK from SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID, MASTER_ADDR to the first host of the job's node list and MASTER_PORT from
    the job id (a MASTER_PORT already set wins), so every task of the job, and only they, meet
    there. CUDA_VISIBLE_DEVICES is left alone: ``local_device`` picks the task's GPU.
    """
    from submitit.helpers import TorchDistributedEnvironment

    tasks = TorchDistributedEnvironment()
    if tasks.world_size > 1:
        tasks.export(set_cuda_visible_devices=False, overwrite=True)
        log.info(
            "task %d of %d (local rank %d), process group at %s:%d",
            tasks.rank,
            tasks.world_size,
            tasks.local_rank,
            tasks.master_addr,
            tasks.master_port,
        )


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (LOCAL_RANK) when the job runs on CUDA.

    The GPU of that index among those the process sees, or the only one it sees (a cluster
    that binds one GPU to each task).
    """
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local_rank, visible = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
    if visible > 1 and local_rank >= visible:
        raise RuntimeError(
            f"the process of local rank {local_rank} sees only {visible} GPUs: give every node as many "
            "GPUs as processes (hydra.launcher.gpus_per_node = hydra.launcher.tasks_per_node)"
        )
    index = local_rank if visible > 1 else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if ranks.world == 1:
        return [value]
    parts: list[Any] = [None] * ranks.world
    dist.all_gather_object(parts, value)
    return parts


def rank_zero_decides(go: bool, ranks: Ranks) -> bool:
    """Rank 0's go/no-go for the job, on every rank: the others' ``go`` is ignored.

    Rank 0 alone claims the directory; when it does not score (a finished job skipped, a
    refused directory, a scene, which one process tiles) the other ranks must not wait for it
    in the final gather until the process group times out.
    """
    if ranks.world == 1:
        return go
    box = [go if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
