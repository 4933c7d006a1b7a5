"""Loading VAEs with their weights: one path (diffusers ``from_pretrained``) for hub ids and local
folders alike, and our loader for the tiny autoencoders published only as ``.pth`` files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vaes4rs.config import MetricConfig, ModelConfig
from vaes4rs.hub import hub_offline
from vaes4rs.models.adapter import VAEAdapter
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


SAFETENSORS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
PICKLED = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")


def _local_folder_problems(cfg: ModelConfig) -> list[str]:
    """What is wrong with a local diffusers model folder, said in the folder's terms."""
    assert cfg.path is not None
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        return [f"model '{cfg.name}': model.path {root} does not exist or is not a directory"]
    folder = root / cfg.subfolder if cfg.subfolder else root
    if not folder.is_dir():
        subs = sorted(p.name for p in root.iterdir() if p.is_dir())
        return [f"model '{cfg.name}': no sub-folder {cfg.subfolder!r} in {root}; sub-folders: {subs}"]
    if not (folder / "config.json").is_file():
        if (folder / "vae" / "config.json").is_file():
            return [
                f"model '{cfg.name}': {folder} looks like a pipeline (its VAE is in vae/): "
                f"add model.subfolder={(Path(cfg.subfolder or '') / 'vae').as_posix()}"
            ]
        return [
            f"model '{cfg.name}': no config.json in {folder} (a diffusers VAE folder holds "
            "config.json and diffusion_pytorch_model.safetensors)"
        ]
    try:
        class_name = read_model_config(cfg).get("_class_name", "")
        diffusers_class(class_name)
    except ValueError as exc:  # invalid JSON (named by read_model_config) or an unsupported class
        return [f"model '{cfg.name}': {exc}"]
    if any((folder / name).is_file() for name in SAFETENSORS):
        return []
    if any((folder / name).is_file() for name in PICKLED):
        if cfg.allow_pickle:
            return []
        return [
            f"model '{cfg.name}': {folder} holds only pickled .bin weights, and only .safetensors are "
            "read unless model.allow_pickle=true (pickled weights can run code when loaded)"
        ]
    return [f"model '{cfg.name}': no weights file ({SAFETENSORS[0]}) in {folder}"]


def _tiny_problems(cfg: ModelConfig, offline: bool) -> list[str]:
    from vaes4rs.models.taesd import TINY_AUTOENCODER_URLS

    assert cfg.variant is not None, "model.variant must name the tiny autoencoder"
    files = [f"{cfg.variant}_{part}.pth" for part in ("encoder", "decoder")]
    folder = Path(cfg.path).expanduser() if cfg.path else Path(torch.hub.get_dir()) / "checkpoints"
    if cfg.path and not folder.is_dir():
        return [f"model '{cfg.name}': model.path {folder} does not exist (the folder holding {files})"]
    missing = [name for name in files if not (folder / name).is_file()]
    if not missing or (not cfg.path and not offline):
        return []
    urls = ", ".join(TINY_AUTOENCODER_URLS[cfg.variant])
    where = "model.path" if cfg.path else "the torch hub cache (offline)"
    return [
        f"model '{cfg.name}': {missing} not in {folder} ({where}); download {urls} into one folder "
        "and pass model.path=<that folder>"
    ]


def _hub_problems(cfg: ModelConfig) -> list[str]:
    """Offline, the config and the weights must already be in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    assert cfg.repo is not None
    prefix = f"{cfg.subfolder}/" if cfg.subfolder else ""
    for name in ("config.json", *SAFETENSORS[:1]):
        cached = try_to_load_from_cache(cfg.repo, f"{prefix}{name}", revision=cfg.revision)
        if not isinstance(cached, str):
            return [_missing_weights_message(cfg, FileNotFoundError(f"{prefix}{name} not cached"))]
    return []


def model_problems(cfg: ModelConfig, offline: bool) -> list[str]:
    """Everything that would stop ``load_vae``, found without loading anything."""
    if cfg.loader == "tiny":
        return _tiny_problems(cfg, offline)
    if cfg.path:
        return _local_folder_problems(cfg)
    return _hub_problems(cfg) if offline else []


def load_vae(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Load the configured VAE in eval mode on ``device``; the user-facing loading path."""
    offline = hub_offline() if cfg.loader == "diffusers" and not cfg.path else False
    problems = model_problems(cfg, offline)
    if problems:
        raise RuntimeError("; ".join(problems))
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
            local_files_only=offline,
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


def adapter_for(module: nn.Module, model: ModelConfig, metric: MetricConfig) -> VAEAdapter:
    """The adapter a job scores through: the protocol's latent policy and seed, the model's overflow rule."""
    return VAEAdapter(
        module,
        name=model.name,
        latent=str(metric.latent),
        seed=metric.seed,
        upcast_on_overflow=model.upcast_on_overflow,
    )
