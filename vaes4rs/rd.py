"""``python -m vaes4rs.rd``: rate-distortion of image codecs and of a VAE's stored latents, same images.

    python -m vaes4rs.rd model=flux2 dataset=resisc45 dataset.limit_per_class=20
    python -m vaes4rs.rd -m model=sd21,flux2 dataset=aid metric.ms_ssim=false rd.codecs=[]
    make rd RESULTS=outputs/rd      # one table, figure and BD-rate list over every job below

One job, one model on one image set. The codecs (``rd.codecs``, each over ``rd.qualities``
or its default range) encode every image to a file in memory; bits per pixel come from the
file's bytes. The VAE's latents are exported with ``vaes4rs.latents`` in each
``rd.storage`` option (float16, bfloat16, uint8, uint8+zstd, ...) into real shards, whose
bytes on disk give the bits per pixel, then read back and decoded
(``vaes4rs.latents.decode_batches``): store-then-decode is measured, not assumed. The
VAE's own reconstruction (``VAEAdapter.reconstruct``, the model's dtype) is the ceiling
every storage option can only reach. Every reconstruction is scored against the source
pixels by the protocol's per-image metrics (``metric=standard`` plus MS-SSIM by default:
PSNR, SSIM, MS-SSIM on [0, 1] after rounding to 8 bits, LPIPS when its network is there).

The job writes ``rd.csv`` (one row per codec setting and storage option), ``rd.json``
(settings, what could not be computed) and the report of ``vaes4rs.storage.report``:
``bd_rate.csv``, ``rd_table.md``, ``rd.png`` and ``rd.pdf``.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm import tqdm

from vaes4rs import preflight
from vaes4rs.config import DatasetConfig, MetricConfig, ModelConfig, RunConfig, RunSettings, register_configs
from vaes4rs.data import CorruptImageError, ImageRecord
from vaes4rs.device import resolve_dtype
from vaes4rs.encode import LICENCE_NOTES, NO_LICENCE, model_record, validate_groups
from vaes4rs.errors import ConfigError, InputError
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.latents import LatentDataset, LatentWriter, Storage, decode_batches, encode_latents, file_sha256
from vaes4rs.metrics import pixel
from vaes4rs.metrics.suite import MetricSuite
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.zoo import adapter_for, load_vae
from vaes4rs.results import software_versions, write_json
from vaes4rs.storage import report
from vaes4rs.storage.codecs import CodecError, check_available, check_params, get_codec, round_trip

log = logging.getLogger("vaes4rs")

DIRECT = report.DIRECT  # the storage label of the VAE's own reconstruction (nothing stored)
LATENTS_DIR = "latents"
RD_JSON = report.JOB_FILE
LATENT_FACTS = ("bytes", "bytes_per_image", "bpp", "shards")


@dataclass
class RDSettings:
    codecs: list[str] = field(default_factory=lambda: ["jpeg", "webp", "avif", "jpeg2000", "jxl"])
    qualities: dict[str, Any] = field(default_factory=dict)  # codec -> its parameter values; else defaults
    storage: list[str] = field(default_factory=lambda: ["float16", "bfloat16", "uint8", "uint8+zstd"])
    level: int = 10  # zstd level of the "+zstd" storage options
    keep_latents: bool = False  # keep the exported latent directories (latents/<storage>/)


@dataclass
class RDConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    run: RunSettings = field(default_factory=RunSettings)
    rd: RDSettings = field(default_factory=RDSettings)


def register_rd_config() -> None:
    register_configs()
    ConfigStore.instance().store(name="rd_schema", node=RDConfig)


register_rd_config()


def codec_params(settings: RDSettings) -> list[tuple[str, float]]:
    """Every (codec, parameter) to measure; CodecError for unknown codecs and values out of range."""
    for name, values in settings.qualities.items():
        if values is not None and name not in settings.codecs:
            get_codec(name)  # an unknown name is named as such
            raise CodecError(f"rd.qualities.{name} is set but {name} is not in rd.codecs {settings.codecs}")
    pairs = []
    for name in settings.codecs:
        codec = get_codec(name)
        check_available(codec)
        given = settings.qualities.get(name)
        params = check_params(codec, list(given)) if given is not None else list(codec.defaults)
        pairs.extend((name, param) for param in params)
    return pairs


def validate_rd(cfg: DictConfig) -> RDConfig:
    rd_cfg: RDConfig = validate_groups(cfg, RDConfig, ("model", "dataset", "metric", "run"))
    if rd_cfg.metric.fid or rd_cfg.metric.kid:
        raise ConfigError("rd scores per-image metrics only: set metric.fid=false metric.kid=false")
    try:
        codec_params(rd_cfg.rd)
        for label in rd_cfg.rd.storage:
            Storage.parse(label, rd_cfg.rd.level)
    except ValueError as exc:  # CodecError is one
        raise ConfigError(f"rd: {exc}") from exc
    if not rd_cfg.rd.storage or len(set(rd_cfg.rd.storage)) != len(rd_cfg.rd.storage):
        raise ConfigError(f"rd.storage must name each storage option once, got {rd_cfg.rd.storage}")
    return rd_cfg


class Scores:
    """Per-image metric columns of every method, and what each reconstruction cost in bytes."""

    def __init__(self, suite: MetricSuite) -> None:
        self.suite = suite
        self.columns: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        self.bytes: dict[tuple[str, str, str], int] = {}
        self.vs_direct: dict[str, list[float]] = {}  # storage -> [sum sq error, values, max abs]

    def add(self, key: tuple[str, str, str], recon: torch.Tensor, original: torch.Tensor) -> None:
        table = self.columns.setdefault(key, {"height": [], "width": []})
        for name, values in self.suite.update(recon, original).items():
            table.setdefault(name, []).extend(values.tolist())
        table["height"].extend([original.shape[-2]] * len(original))
        table["width"].extend([original.shape[-1]] * len(original))

    def compare(self, storage: str, recon: torch.Tensor, direct: torch.Tensor) -> None:
        """How far a stored latent's reconstruction is from the direct one, on [0, 1]."""
        diff = (recon.double() - direct.double()) / 2
        state = self.vs_direct.setdefault(storage, [0.0, 0.0, 0.0])
        state[0] += float(diff.pow(2).sum())
        state[1] += diff.numel()
        state[2] = max(state[2], float(diff.abs().max()))

    def summary(self, key: tuple[str, str, str]) -> dict[str, float]:
        table = {name: np.asarray(values) for name, values in self.columns[key].items()}
        return self.suite.summarise(table)

    def direct_distance(self, storage: str) -> dict[str, float]:
        sse, n, worst = self.vs_direct[storage]
        mse = sse / n
        return {
            "psnr_vs_direct": float(pixel.psnr_from_mse(mse, 1.0)) if mse > 0 else float("inf"),
            "max_abs_vs_direct": worst,
        }


def image_set_id(records: list[ImageRecord], hashes: dict[int, str]) -> str:
    """Names the exact images measured, so the report never mixes curves of different sets."""
    text = "\n".join(f"{r.image_id} {hashes[r.index]}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Measured:
    """What the first pass saw: the images, their files' hashes and bytes, and their pixels."""

    records: list[ImageRecord] = field(default_factory=list)
    hashes: dict[int, str] = field(default_factory=dict)
    pixels: int = 0
    source_bytes: int = 0


def codecs_and_export(
    loader: Any,
    adapter: VAEAdapter,
    pairs: list[tuple[str, float]],
    writers: list[LatentWriter],
    scores: Scores,
    progress: tqdm,
) -> Measured:
    """Pass 1: every image through every codec setting, and its latent into every storage option."""
    seen = Measured()
    for batch in loader:
        for _, error in batch["skipped"]:
            raise CorruptImageError(f"{error} (rd measures every image: remove or fix the file)")
        images = batch["images"]
        original = to_minus_one_one(images.to(adapter.device))
        latents = encode_latents(adapter, original, [r.image_id for r in batch["records"]])
        height, width = int(images.shape[-2]), int(images.shape[-1])
        for record, latent in zip(batch["records"], latents):
            seen.hashes[record.index] = file_sha256(record.path)
            seen.source_bytes += record.path.stat().st_size
            for writer in writers:
                writer.add(record, latent, height, width, seen.hashes[record.index])
        seen.records.extend(batch["records"])
        seen.pixels += height * width * len(images)
        pixels = images.permute(0, 2, 3, 1).numpy()
        for name, param in pairs:
            coded = [round_trip(get_codec(name), image, param) for image in pixels]
            key = (name, "", str(param))
            scores.bytes[key] = scores.bytes.get(key, 0) + sum(size for size, _ in coded)
            decoded = torch.from_numpy(np.stack([p for _, p in coded])).permute(0, 3, 1, 2)
            scores.add(key, to_minus_one_one(decoded.to(adapter.device)), original)
        progress.update(len(images))
    return seen


def decode_and_score(
    directories: dict[str, Path], adapter: VAEAdapter, batch_size: int, scores: Scores
) -> None:
    """Pass 2: decode each storage option's shards and score them beside the direct reconstruction.

    Every stream batches the same images in the same order, so one direct reconstruction per
    batch serves them all.
    """
    streams = [decode_batches(LatentDataset(root), adapter, batch_size) for root in directories.values()]
    for decoded in zip(*streams):
        original = to_minus_one_one(decoded[0].images.to(adapter.device))
        direct = adapter.reconstruct(original, [r.image_id for r in decoded[0].records])
        scores.add(("vae", DIRECT, ""), direct, original)
        for label, batch in zip(directories, decoded):
            scores.add(("vae", label, ""), batch.recon, original)
            scores.compare(label, batch.recon, direct)


def result_rows(
    cfg: RDConfig, pairs: list[tuple[str, float]], seen: Measured, scores: Scores, written: dict[str, dict]
) -> list[dict[str, Any]]:
    """rd.csv's rows: the source files, each codec setting, the direct reconstruction, each storage."""
    base = {
        "dataset": cfg.dataset.name,
        "image_set": image_set_id(seen.records, seen.hashes),
        "n_images": len(seen.records),
        "pixels": seen.pixels,
    }
    rows = [
        {**base, "method": "source", "bytes": seen.source_bytes, "bpp": 8 * seen.source_bytes / seen.pixels}
    ]
    for name, param in pairs:
        key = (name, "", str(param))
        rows.append(
            {
                **base,
                "method": name,
                "param_name": get_codec(name).param_name,
                "param": param,
                "bytes": scores.bytes[key],
                "bpp": 8 * scores.bytes[key] / seen.pixels,
                **scores.summary(key),
            }
        )
    vae = {**base, "method": "vae", "model": cfg.model.name}
    rows.append({**vae, "storage": DIRECT, **scores.summary(("vae", DIRECT, ""))})
    for label, meta in written.items():
        rows.append(
            {
                **vae,
                "storage": label,
                "bytes": meta["bytes"]["shards"],
                "bpp": meta["bpp"],
                **scores.summary(("vae", label, "")),
                **scores.direct_distance(label),
            }
        )
    return rows


def rd_job(cfg: RDConfig, out_dir: Path, command: str) -> list[dict[str, Any]]:
    """Measure every codec setting and storage option on the set; write the job's files."""
    pairs = codec_params(cfg.rd)
    ready = preflight.check(RunConfig(model=cfg.model, dataset=cfg.dataset, metric=cfg.metric, run=cfg.run))
    device, dataset = ready.device, ready.dataset
    dtype = resolve_dtype(cfg.model.dtype, device)
    module = load_vae(cfg.model, device, dtype)
    adapter = adapter_for(module, cfg.model, cfg.metric)
    scores = Scores(MetricSuite(cfg.metric, device, dtype))
    meta = {
        "model": model_record(cfg.model, module, adapter),
        "latent": {
            "policy": str(cfg.metric.latent),
            "seed": cfg.metric.seed,
            "deterministic": adapter.deterministic,
        },
        "source": {
            "name": cfg.dataset.name,
            "repo": cfg.dataset.repo,
            "revision": cfg.dataset.revision,
            "root": str(dataset.root),
            "resize": cfg.dataset.resize,
            "licence": LICENCE_NOTES.get(cfg.dataset.name, NO_LICENCE),
        },
        "command": command,
    }
    directories = {label: out_dir / LATENTS_DIR / label for label in cfg.rd.storage}
    writers = {
        label: LatentWriter(root, Storage.parse(label, cfg.rd.level), meta, overwrite=True)
        for label, root in directories.items()
    }
    progress = tqdm(total=len(dataset.records), desc=f"rd {cfg.model.name}", disable=not cfg.run.progress)
    try:
        seen = codecs_and_export(dataset.loader, adapter, pairs, list(writers.values()), scores, progress)
    finally:
        progress.close()
    written = {label: writer.close() for label, writer in writers.items()}
    decode_and_score(directories, adapter, cfg.run.batch_size, scores)
    rows = result_rows(cfg, pairs, seen, scores, written)
    report.write_rows(out_dir / report.RD_FILE, rows)
    write_json(
        out_dir / RD_JSON,
        {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "command": command,
            "rd": asdict(cfg.rd),
            "protocol": scores.suite.protocol(),
            "codecs": {name: codec_settings(name, pairs) for name in cfg.rd.codecs},
            "latents": {label: {k: m[k] for k in LATENT_FACTS} for label, m in written.items()},
            "versions": software_versions(),
        },
    )
    report.write_report(out_dir, report.read_rows([out_dir / report.RD_FILE]))
    if not cfg.rd.keep_latents:
        shutil.rmtree(out_dir / LATENTS_DIR)
    return rows


def codec_settings(name: str, pairs: list[tuple[str, float]]) -> dict[str, Any]:
    """How a codec was run: its file format, swept parameter and values, fixed options."""
    codec = get_codec(name)
    params = [param for codec_name, param in pairs if codec_name == name]
    return {
        "format": codec.pil_format,
        "param_name": codec.param_name,
        "params": params,
        "fixed": codec.fixed,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="rd")
def main(cfg: DictConfig) -> list[dict[str, Any]] | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return rd_job(validate_rd(cfg), out_dir, "python -m vaes4rs.rd " + shlex.join(sys.argv[1:]))
    except InputError as exc:
        log.error("rd job in %s failed: %s", out_dir, exc)
        if not multirun:
            sys.exit(2)
    return None


if __name__ == "__main__":
    main()
