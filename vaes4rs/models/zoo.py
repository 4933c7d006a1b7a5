"""Loading VAEs with their weights: one path (diffusers ``from_pretrained``) for hub ids and local
folders alike, and our loader for the tiny autoencoders published only as ``.pth`` files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vaes4rs.config import ModelConfig
from vaes4rs.models.architecture import diffusers_class, read_model_config


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
