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
