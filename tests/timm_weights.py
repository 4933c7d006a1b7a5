"""Random timm weights planted where timm reads pretrained ones: a Hugging Face cache laid out by hand.

``timm.create_model(name, pretrained=True)`` downloads ``model.safetensors`` of the model's hub
repo (``timm/<model>``) into the hub cache, or reads it from there when offline. The tests write
a randomly initialised model's state into that layout in a temporary cache, so the loading path
users run (timm, huggingface_hub, the offline switch) is the one the tests exercise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from torch import nn

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def repo_of(name: str) -> str:
    return get_pretrained_cfg(name).hf_hub_id


def plant_timm(cache: Path, name: str, **overrides: object) -> nn.Module:
    """A random ``name`` (built with ``overrides``) saved as its hub repo's model.safetensors in ``cache``."""
    model = timm.create_model(name, pretrained=False, **overrides).eval()
    folder = cache / f"models--{repo_of(name).replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), snapshot / "model.safetensors")
    return model


def one_thread() -> Iterator[None]:
    """Run on one CPU thread, then restore: the tiny networks of these tests are dominated by thread
    hand-offs, which cost ten times the work on a machine shared with other jobs (measured: 0.5 s
    instead of 0.05 s for one block of a ViT-B/32 on two images)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def offline_cache(cache: Path) -> Iterator[Path]:
    """Point huggingface_hub at ``cache`` and switch it offline for as long as the generator runs."""
    import huggingface_hub.constants as hub_constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield cache
