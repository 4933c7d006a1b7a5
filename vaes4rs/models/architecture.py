"""Architectures without weights: shipped study configs, a model folder's config.json, meta copies.

The seven study architectures ship as diffusers ``config.json`` files in ``configs/`` so cost
can be counted and tests can build random-init models without any download. Building under
``torch.device("meta")`` allocates nothing, which is how the profiler counts FLOPs of
billion-parameter models on any machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaes4rs.config import ModelConfig
from vaes4rs.models.families import diffusers_class_names, family_for

CONFIG_DIR = Path(__file__).parent / "configs"


class _IgnoredForceUpcast(logging.Filter):
    """FLUX.2's published config.json carries ``force_upcast`` (a pipeline hint), which
    AutoencoderKLFlux2 does not take; diffusers warns about it on every build. The key
    changes nothing, so the warning is dropped; any other unexpected key is still reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("{'force_upcast': True}" in message and "are not expected" in message)


logging.getLogger("diffusers.configuration_utils").addFilter(_IgnoredForceUpcast())


def shipped_architectures() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def architecture_config(arch: str) -> dict[str, Any]:
    """The shipped diffusers config.json of a study architecture (sd21, ..., qwen)."""
    path = CONFIG_DIR / f"{arch}.json"
    if not path.is_file():
        raise ValueError(f"unknown architecture {arch!r}; shipped: {shipped_architectures()}")
    return json.loads(path.read_text())


def diffusers_class(class_name: str) -> type[nn.Module]:
    """The diffusers class a config names, if a registered family drives it."""
    if class_name not in diffusers_class_names():
        raise ValueError(
            f"VAE class {class_name!r} is not supported; supported: {', '.join(diffusers_class_names())}"
        )
    import diffusers

    return getattr(diffusers, class_name)


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Instantiate an architecture from its config dict (random init; use under a meta device)."""
    return diffusers_class(config["_class_name"]).from_config(config)


def read_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json of the model to load, from its folder or the hub (cached like the weights)."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if cfg.subfolder:
            folder = folder / cfg.subfolder
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"model '{cfg.name}': no config.json in {folder} (a diffusers VAE folder holds "
                "config.json and diffusion_pytorch_model.safetensors)"
            )
        return _parse_config(config_file)
    from huggingface_hub import hf_hub_download

    assert cfg.repo is not None
    local = hf_hub_download(cfg.repo, "config.json", subfolder=cfg.subfolder, revision=cfg.revision)
    return _parse_config(Path(local))


def _parse_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model config {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"model config {path} is not a JSON object")
    return config


def build_architecture(cfg: ModelConfig, device: torch.device | str = "meta") -> nn.Module:
    """The configured model's architecture, random-init on ``device`` (meta: no memory at all).

    Shipped study architectures come from ``model.arch``; any other diffusers VAE from its own
    config.json (local folder or hub, no weights); the tiny autoencoders from ``model.variant``.
    """
    if cfg.loader == "tiny":
        from vaes4rs.models.taesd import TinyAutoencoder

        if cfg.variant is None:
            raise ValueError(f"model '{cfg.name}': model.variant must name the tiny autoencoder")
        with torch.device(device):
            return TinyAutoencoder(cfg.variant).eval()
    if cfg.arch is not None:
        config = architecture_config(cfg.arch)
    elif cfg.path or cfg.repo:
        try:
            config = read_model_config(cfg)
        except OSError as exc:  # not on disk, not in the hub cache, hub unreachable
            raise RuntimeError(
                f"model '{cfg.name}': counting needs its config.json (not its weights) and it cannot be "
                f"read ({type(exc).__name__}: {exc}); download it, pass model.path=<dir>, or "
                f"model.arch=<one of {shipped_architectures()}>"
            ) from exc
    else:
        raise ValueError(f"model '{cfg.name}': set model.arch, model.path or model.repo")
    with torch.device(device):
        return build_from_config(config).eval()


def meta_copy(module: nn.Module) -> nn.Module:
    """The same architecture as an already-built model, on the meta device (its weights untouched)."""
    return family_for(module).meta_copy(module)
