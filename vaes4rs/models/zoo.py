"""Loading VAEs: one path (diffusers ``from_pretrained``) for hub ids and local folders alike.

The seven study architectures ship as diffusers ``config.json`` files in ``configs/`` so
cost can be profiled and tests can build random-init models without any download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaes4rs.config import ModelConfig

CONFIG_DIR = Path(__file__).parent / "configs"

# The VAE classes the adapter knows how to drive.
SUPPORTED_CLASSES = (
    "AutoencoderKL",
    "AutoencoderKLFlux2",
    "AutoencoderDC",
    "AutoencoderKLQwenImage",
    "AutoencoderTiny",
)


def shipped_architectures() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def architecture_config(arch: str) -> dict[str, Any]:
    """The shipped diffusers config.json of a study architecture (sd21, ..., qwen)."""
    path = CONFIG_DIR / f"{arch}.json"
    if not path.is_file():
        raise ValueError(f"unknown architecture {arch!r}; shipped: {shipped_architectures()}")
    return json.loads(path.read_text())


def diffusers_class(class_name: str) -> type[nn.Module]:
    if class_name not in SUPPORTED_CLASSES:
        raise ValueError(
            f"VAE class {class_name!r} is not supported; supported: {', '.join(SUPPORTED_CLASSES)}"
        )
    import diffusers

    return getattr(diffusers, class_name)


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Instantiate an architecture from its config dict (random init; use under a meta device)."""
    cls = diffusers_class(config["_class_name"])
    return cls.from_config(config)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (as the study ran) and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


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
        return json.loads(config_file.read_text())
    from huggingface_hub import hf_hub_download

    assert cfg.repo is not None
    local = hf_hub_download(cfg.repo, "config.json", subfolder=cfg.subfolder, revision=cfg.revision)
    return json.loads(Path(local).read_text())


def _missing_weights_message(cfg: ModelConfig, exc: Exception) -> str:
    where = f"{cfg.repo}" + (f" (subfolder {cfg.subfolder})" if cfg.subfolder else "")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    include = f" --include '{cfg.subfolder}/*'" if cfg.subfolder else ""
    return (
        f"model '{cfg.name}': weights {where}, revision {cfg.revision or 'main'}, are not in the "
        f"Hugging Face cache{' and HF_HUB_OFFLINE is set' if offline else ' and the hub is unreachable'}. "
        f"On a connected machine run `hf download {cfg.repo}{include}` with the same HF_HOME, "
        f"or download the folder and pass model=local model.path=<dir>. ({type(exc).__name__}: {exc})"
    )


def load_vae(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Load the configured VAE in eval mode on ``device``; the user-facing loading path."""
    if cfg.loader == "tiny":
        from vaes4rs.models.taesd import load_tiny_autoencoder

        assert cfg.variant is not None, "model.variant must name the tiny autoencoder"
        return load_tiny_autoencoder(cfg.variant, cfg.path, device=device, dtype=dtype).eval()

    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        class_name = read_model_config(cfg).get("_class_name", "")
        cls = diffusers_class(class_name)
        source = str(Path(cfg.path).expanduser()) if cfg.path else cfg.repo
        model = cls.from_pretrained(
            source,
            subfolder=cfg.subfolder,
            revision=cfg.revision,
            torch_dtype=dtype,
            # Pickled .bin weights can run arbitrary code; only with explicit consent.
            use_safetensors=None if cfg.allow_pickle else True,
        )
    except (LocalEntryNotFoundError, HFValidationError) as exc:
        raise RuntimeError(_missing_weights_message(cfg, exc)) from exc
    except OSError as exc:
        if cfg.path:
            raise RuntimeError(
                f"model '{cfg.name}': cannot load weights from {cfg.path}"
                f"{'/' + cfg.subfolder if cfg.subfolder else ''}: {exc}"
                + ("" if cfg.allow_pickle else " (only .safetensors are read unless model.allow_pickle=true)")
            ) from exc
        raise RuntimeError(_missing_weights_message(cfg, exc)) from exc
    return model.to(device).eval()
