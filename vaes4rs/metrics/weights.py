"""Where the metrics' network files come from: one table, one lookup, one error.

Each file is read from an explicit path (``metric.weights.<key>=<file>``) or, by default,
from the place its library would put it: the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file name>``, the names torchvision, torch-fidelity and piq
use, so a cache filled by any of them serves us too) or, for the LPIPS-AlexNet heads, the
copy shipped inside the torchmetrics wheel. A missing cache file is downloaded once; when
that fails (offline machines), the error names the file, its URL and both ways to supply it.

timm networks (CMMD's CLIP, the probe's backbone) are built by ``timm.create_model(...,
pretrained=True)``, so their weights come from where timm keeps them, the Hugging Face cache
(``timm/<model>`` repos), or from ``metric.weights.<key>=<file>`` through timm's own loading
(its checkpoint filters convert original layouts, e.g. OpenAI's CLIP file).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn

from vaes4rs.errors import ConfigError
from vaes4rs.hub import hub_offline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightFile:
    """A network file: its library's file name, where to get it, what needs it."""

    file_name: str
    url: str
    used_by: str
    switches: tuple[str, ...]  # the metric.<name>=false switches that avoid needing it
    sha256_prefix: str | None = None  # checked on download where the publisher states one


WEIGHT_FILES: dict[str, WeightFile] = {
    "alexnet": WeightFile(
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "LPIPS-AlexNet backbone (torchvision AlexNet_Weights.IMAGENET1K_V1)",
        ("lpips",),
        "7be5be79",
    ),
    "lpips_alex": WeightFile(
        "alex.pth",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
        "LPIPS v0.1 AlexNet linear heads (shipped in the torchmetrics wheel)",
        ("lpips",),
    ),
    "inception": WeightFile(
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "FID/KID InceptionV3 (torch-fidelity, TF 2015-12-05 graph)",
        ("fid", "kid"),
    ),
    "vgg16": WeightFile(
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "LPIPS-VGG and DISTS backbone (torchvision VGG16_Weights.IMAGENET1K_V1)",
        ("lpips_vgg", "dists"),
        "397923af",
    ),
    "lpips_vgg": WeightFile(
        "lpips_weights.pt",
        "https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt",
        "piq LPIPS-VGG linear weights",
        ("lpips_vgg",),
    ),
    "dists": WeightFile(
        "dists_weights.pt",
        "https://github.com/photosynthesis-team/piq/releases/download/v0.4.1/dists_weights.pt",
        "piq DISTS alpha/beta weights",
        ("dists",),
    ),
}


class MissingWeightsError(FileNotFoundError):
    """A network file is neither where the config points nor in the cache, and cannot be fetched."""


def default_path(key: str) -> Path:
    """Where the library that owns the file keeps it."""
    spec = WEIGHT_FILES[key]
    if key == "lpips_alex":
        return Path(str(resources.files("torchmetrics.functional.image") / "lpips_models" / spec.file_name))
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.file_name


def _how_to_supply(key: str, target: Path) -> str:
    spec = WEIGHT_FILES[key]
    return (
        f"{spec.used_by} needs {spec.file_name}: download {spec.url} to {target} "
        f"(the torch hub cache, $TORCH_HOME/hub/checkpoints) or set metric.weights.{key}=<file>; "
        f"or switch it off with {' '.join(f'metric.{name}=false' for name in spec.switches)}"
    )


def weight_path(key: str, explicit: Mapping[str, str | None]) -> Path:
    """The file for ``key``: the configured path, else the default one (downloaded on a miss)."""
    given = explicit.get(key)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"metric.weights.{key}={given}: no such file. {_how_to_supply(key, path)}"
            )
        return path
    path = default_path(key)
    if path.is_file():
        return path
    if key == "lpips_alex":
        raise MissingWeightsError(
            f"{path} is missing from the torchmetrics install. {_how_to_supply(key, path)}"
        )
    spec = WEIGHT_FILES[key]
    log.info("downloading %s to %s", spec.url, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(path), hash_prefix=spec.sha256_prefix)
    except (URLError, OSError, RuntimeError) as err:
        raise MissingWeightsError(
            f"{path} not found and could not be downloaded ({err}). {_how_to_supply(key, path)}"
        ) from err
    return path


def load_state(key: str, explicit: Mapping[str, str | None]) -> dict[str, torch.Tensor]:
    """The state dict (or piq's tensor list/dict) stored in the file for ``key``, on the CPU."""
    return torch.load(weight_path(key, explicit), map_location="cpu", weights_only=True)


def timm_weights_source(name: str, setting: str) -> tuple[str, str]:
    """Where timm reads ``name``'s pretrained weights and how to fetch them; a ConfigError when
    timm has no such model or no pretrained weights for it (a typo must not pass as "missing")."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"{setting}={name}: not a timm model with pretrained weights{hint}; e.g. resnet50, "
            "vit_small_patch14_dinov2.lvd142m (timm.list_models(pretrained=True) lists them all)"
        )
    if cfg.hf_hub_id:
        return f"the hub repo {cfg.hf_hub_id}", f"`hf download {cfg.hf_hub_id}` (same HF_HOME)"
    return cfg.url, f"a download of {cfg.url} into {Path(torch.hub.get_dir()) / 'checkpoints'}"


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (tensors only: no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_every_weight(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a timm state dict into ``model``; a weight the file leaves unset is an error.

    Written here because timm's own loader turns lenient when the head is dropped
    (``num_classes=0``, the probe's pooled features) and then only logs missing keys: a file of
    another network would leave a randomly initialised backbone and publish its numbers. The
    file's classifier (timm's ``pretrained_cfg["classifier"]``) may be left over.
    """
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = set(model.state_dict())
    kept = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(f"{h}." for h in heads))}
    result = model.load_state_dict(kept, strict=False)
    problems = {"lacks": result.missing_keys, "has keys the model has not:": result.unexpected_keys}
    for what, keys in problems.items():
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise ValueError(f"the file {what} {shown}")


def load_timm(
    name: str,
    key: str,
    explicit: Mapping[str, str | None],
    *,
    setting: str,
    used_by: str,
    switch: str,
    **overrides: Any,
) -> nn.Module:
    """timm's ``name`` with its pretrained weights, in eval mode and frozen.

    The weights come from ``metric.weights.<key>=<file>`` or timm's hub cache (downloaded there
    when the hub answers). ``setting`` is the config key that names the model and ``switch``
    turns its metric off; both appear in the errors. ``overrides`` go to ``timm.create_model``
    (``num_classes=0`` for pooled features; the tests' small stand-ins set ``depth``).
    """
    import timm

    source, fetch = timm_weights_source(name, setting)
    supply = (
        f"set metric.weights.{key}=<file> (a timm state dict, .safetensors or .pth); "
        f"or switch it off with {switch}"
    )
    given = explicit.get(key)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"metric.weights.{key}={given}: no such file. {used_by} needs {name}: {supply}"
            )
        model = timm.create_model(name, pretrained=False, **overrides)
        try:
            _load_every_weight(model, _read_state(path))
        except (RuntimeError, KeyError, ValueError) as err:
            raise ConfigError(f"metric.weights.{key}={given} does not hold {name}'s weights: {err}") from err
    else:
        offline = hub_offline()
        try:
            model = timm.create_model(name, pretrained=True, **overrides)
        except OSError as err:  # huggingface_hub's errors, urllib's and a missing file are all OSErrors
            why = (str(err).splitlines() or [type(err).__name__])[0]
            raise MissingWeightsError(
                f"{used_by} needs {name}'s pretrained weights from {source}: not in the cache and "
                f"{'the hub is offline' if offline else 'the download failed'} ({why}). Fetch them with "
                f"{fetch} where there is network, or {supply}"
            ) from err
    return model.eval().requires_grad_(False)
