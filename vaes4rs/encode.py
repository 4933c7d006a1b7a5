"""``python -m vaes4rs.encode``: write a latent dataset (shards, index, card) of one VAE on one image set.

    python -m vaes4rs.encode model=flux2 dataset=aid export.dtype=float16
    python -m vaes4rs.encode model=taef2 model.path=<dir> dataset=folder dataset.root=<dir> \
        export.dtype=uint8 export.codec=zstd
    python -m vaes4rs.encode -m model=sd21,flux2 dataset=aid,resisc45 export.dtype=bfloat16

The model and dataset groups are ``vaes4rs.run``'s (same files in ``conf/``, same checks);
``export.*`` says how latents are stored (``vaes4rs.latents``). The latent directory is the
Hydra run directory: ``outputs/latents/<model>-<dataset>-<storage>`` unless
``hydra.run.dir`` says otherwise. It logs the bytes on disk per image and the bits per pixel.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from vaes4rs import preflight
from vaes4rs.config import (
    DatasetConfig,
    LatentPolicy,
    MetricConfig,
    ModelConfig,
    RunConfig,
    RunSettings,
    register_configs,
    unknown_keys,
    validate,
)
from vaes4rs.data import CorruptImageError
from vaes4rs.degrade import kinds
from vaes4rs.device import resolve_dtype
from vaes4rs.errors import ConfigError, InputError
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.latents import (
    MAX_SHARD_BYTES,
    LatentCodec,
    LatentWriter,
    Storage,
    StorageDType,
    encode_latents,
    file_sha256,
    model_identity,
)
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.zoo import load_vae
from vaes4rs.results import software_versions

log = logging.getLogger("vaes4rs")

# What is known of each study dataset's terms (their hub cards say "license: unknown").
LICENCE_NOTES = {
    "resisc45": "hub card (blanchon/RESISC45): license unknown. NWPU-RESISC45, Cheng, Han and Lu, "
    "Proc. IEEE 105(10), 2017: check its terms before sharing derived data",
    "aid": "hub card (blanchon/AID): license unknown. AID, Xia et al., IEEE TGRS 55(7), 2017: "
    "check its terms before sharing derived data",
    "ucmerced": "UC Merced Land Use, Yang and Newsam, ACM GIS 2010 (torchgeo/ucmerced): check its "
    "terms before sharing derived data",
}
NO_LICENCE = "not recorded: state the source's licence with export.licence=... before sharing"


@dataclass
class ExportSettings:
    dtype: StorageDType = StorageDType.float16
    codec: LatentCodec = LatentCodec.none
    level: int = 10  # zstd level, 1-22
    latent: LatentPolicy = LatentPolicy.mode  # deterministic by default
    seed: int = 42  # of the sampled latent (latent=sample)
    shard_bytes: int = MAX_SHARD_BYTES
    licence: str | None = None  # the source's licence, for the card (known study sets have a note)
    overwrite: bool = False  # replace a latent dataset already in the directory


@dataclass
class EncodeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    run: RunSettings = field(default_factory=RunSettings)
    export: ExportSettings = field(default_factory=ExportSettings)


def storage_label(dtype: str, codec: str) -> str:
    """``float16`` or ``uint8+zstd``: the directory name's storage part (a resolver)."""
    return Storage(str(dtype), str(codec)).label


def register_encode_config() -> None:
    register_configs()
    ConfigStore.instance().store(name="encode_schema", node=EncodeConfig)
    OmegaConf.register_new_resolver("vaes4rs.storage_label", storage_label, replace=True)


register_encode_config()


def run_config(model: ModelConfig, dataset: DatasetConfig, run: RunSettings) -> RunConfig:
    """A RunConfig for the checks ``vaes4rs.run`` makes, with no metric (no window limits the sides)."""
    metric = MetricConfig(psnr=False, ssim=False, lpips=False, fid=False, kid=False)
    return RunConfig(model=model, dataset=dataset, metric=metric, run=run)


def validate_groups(cfg: DictConfig, schema: type, groups: tuple[str, ...]) -> Any:
    """Unknown keys against ``schema``, ``vaes4rs.config.validate`` on the shared ``groups``, the merge."""
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    problems = unknown_keys(task, schema)
    if problems:
        raise ConfigError("; ".join(problems))
    validate(OmegaConf.masked_copy(task, list(groups)))
    merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), task))
    _check_image_folder(merged.dataset)
    return merged


def _check_image_folder(dataset: DatasetConfig) -> None:
    """encode and rd read image sets as they are: refuse what only ``vaes4rs.run`` applies or reads.

    Without this a degradation would be ignored (the clean images encoded, silently), and a
    latent set or a scene would fail later with a less helpful error.
    """
    if dataset.source in ("latents", "scene"):
        raise ConfigError(
            f"dataset.source={dataset.source} is read by vaes4rs.run only; this command encodes image "
            "sets: use dataset.source=hub or folder"
        )
    if dataset.degrade.active:
        raise ConfigError(
            f"dataset.degrade ({'+'.join(kinds(dataset.degrade))}) is applied by vaes4rs.run only; "
            "this command encodes the clean images: drop the dataset.degrade.* overrides"
        )


def validate_encode(cfg: DictConfig) -> EncodeConfig:
    encode_cfg: EncodeConfig = validate_groups(cfg, EncodeConfig, ("model", "dataset", "run"))
    export = encode_cfg.export
    if export.shard_bytes < 1:
        raise ConfigError(f"export.shard_bytes must be positive, got {export.shard_bytes}")
    try:
        Storage.parse(storage_label(export.dtype, export.codec), export.level)
    except ValueError as exc:
        raise ConfigError(f"export: {exc}") from exc
    return encode_cfg


def model_record(cfg: ModelConfig, module: Any, adapter: VAEAdapter) -> dict[str, Any]:
    """The model as ``latents.json`` records it: where it came from, its factors and identity."""
    config = getattr(module, "config", {})
    return {
        "name": cfg.name,
        "loader": str(cfg.loader),
        "repo": cfg.repo,
        "subfolder": cfg.subfolder,
        "path": str(Path(cfg.path).expanduser().resolve()) if cfg.path else None,
        "revision": cfg.revision,
        "variant": cfg.variant,
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "spatial_multiple": adapter.multiple,
        "scaling_factor": config.get("scaling_factor"),
        "shift_factor": config.get("shift_factor"),
        "identity": model_identity(module),
    }


def export(cfg: EncodeConfig, out_dir: Path, command: str) -> dict[str, Any]:
    """Encode every image of the set and write the latent dataset into ``out_dir``; returns latents.json."""
    storage = Storage(str(cfg.export.dtype), str(cfg.export.codec), cfg.export.level)
    ready = preflight.check(run_config(cfg.model, cfg.dataset, cfg.run))
    device, dataset = ready.device, ready.dataset
    module = load_vae(cfg.model, device, resolve_dtype(cfg.model.dtype, device))
    adapter = VAEAdapter(module, name=cfg.model.name, latent=str(cfg.export.latent), seed=cfg.export.seed)
    source = {
        "name": cfg.dataset.name,
        "repo": cfg.dataset.repo,
        "revision": cfg.dataset.revision,
        "root": str(dataset.root),
        "resize": cfg.dataset.resize,
        "classes": cfg.dataset.classes,
        "limit_per_class": cfg.dataset.limit_per_class,
        "licence": cfg.export.licence or LICENCE_NOTES.get(cfg.dataset.name, NO_LICENCE),
        "skipped": [{"image_id": r.image_id, "reason": reason} for r, reason, _ in dataset.skipped],
    }
    meta = {
        "model": model_record(cfg.model, module, adapter),
        "latent": {
            "policy": str(cfg.export.latent),
            "seed": cfg.export.seed,
            "deterministic": adapter.deterministic,
        },
        "source": source,
        "export": asdict(cfg.export),
        "command": command,
        "versions": software_versions(),
    }
    writer = LatentWriter(out_dir, storage, meta, cfg.export.shard_bytes, cfg.export.overwrite)
    start = time.perf_counter()
    progress = tqdm(total=len(dataset.records), desc=f"encode {cfg.model.name}", disable=not cfg.run.progress)
    try:
        for batch in dataset.loader:
            for record, error in batch["skipped"]:
                if not cfg.dataset.skip_corrupt:
                    raise CorruptImageError(f"{error} (set dataset.skip_corrupt=true to skip such files)")
                log.warning("skipping %s", error)
                source["skipped"].append({"image_id": record.image_id, "reason": error.reason})
            if batch["images"] is None:
                continue
            images = batch["images"]
            ids = [record.image_id for record in batch["records"]]
            latents = encode_latents(adapter, to_minus_one_one(images.to(device)), ids)
            height, width = int(images.shape[-2]), int(images.shape[-1])
            for record, latent in zip(batch["records"], latents):
                writer.add(record, latent, height, width, file_sha256(record.path))
            progress.update(len(batch["records"]) + len(batch["skipped"]))
    finally:
        progress.close()
    written = writer.close()
    log.info(
        "%d latents of %s (%s) in %s: %d shard(s), %.1f bytes on disk per image, %.4f bpp (%.0f s)",
        written["n_images"],
        cfg.model.name,
        storage.label,
        out_dir,
        len(written["shards"]),
        written["bytes_per_image"],
        written["bpp"],
        time.perf_counter() - start,
    )
    return written


def command_line() -> str:
    return "python -m vaes4rs.encode " + shlex.join(sys.argv[1:])


@hydra.main(version_base="1.3", config_path="../conf", config_name="encode")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return export(validate_encode(cfg), out_dir, command_line())
    except InputError as exc:
        log.error("export to %s failed: %s", out_dir, exc)
        if not multirun:
            sys.exit(2)
    return None


if __name__ == "__main__":
    main()
