"""Where a job computes and in which precision: the one place that turns ``auto`` into a choice."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when visible; asking for CUDA without it is an error, never a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible; use run.device=cpu")
    return torch.device(str(name))


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (as the study ran) and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, str(name))


class HostCopy:
    """A tensor on its way to host memory: the copy is queued now and read when needed.

    Any copy from a GPU into ordinary (pageable) memory waits until the GPU has run all it was
    given. From a GPU this one goes into pinned memory without waiting, and ``get`` waits only
    for it (a CUDA event), so the run loop can queue the next batch before reading this one's
    values. Either way it is a copy: later changes to the tensor do not reach it.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self._ready: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = tensor.detach().to("cpu", copy=True)

    def get(self) -> torch.Tensor:
        """The host tensor, once the copy has arrived."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host
