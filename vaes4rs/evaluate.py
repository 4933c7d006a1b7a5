"""The streaming loop of one job: dataset -> adapter -> metric suite -> result files.

Nothing outlives its batch except per-image rows (on disk after every batch) and the
suite's running statistics, so memory stays flat however large the dataset.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vaes4rs import checkpoint, files, results
from vaes4rs.config import RunConfig
from vaes4rs.data import CorruptImageError, ImageRecord
from vaes4rs.device import resolve_dtype
from vaes4rs.distributed import SINGLE_PROCESS, Ranks, gather
from vaes4rs.metrics.suite import MetricSuite
from vaes4rs.models.adapter import NOISE_RULE, VAEAdapter
from vaes4rs.models.compile import compile_vae
from vaes4rs.models.cost import model_stats
from vaes4rs.models.zoo import load_vae
from vaes4rs.preflight import ReadyJob

log = logging.getLogger(__name__)


def to_minus_one_one(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1] exactly as ToTensor + Normalize(0.5, 0.5) computes it."""
    return (images.float() / 255.0 - 0.5) / 0.5


def _row(record: ImageRecord, height: int, width: int) -> dict[str, Any]:
    return {
        "index": record.index,
        "image_id": record.image_id,
        "class": record.label,
        "height": height,
        "width": width,
    }


def _score_batch(
    batch: dict,
    adapter: VAEAdapter,
    suite: MetricSuite,
    writer: results.PerImageWriter,
    sample_ids: list[str],
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> int:
    """Reconstruct and score one batch; its rows go to per_image.csv, chosen images to ``samples``."""
    records = batch["records"]
    images = batch["images"].to(device, non_blocking=True)
    original = to_minus_one_one(images)
    recon = adapter.reconstruct(original, [r.image_id for r in records])
    columns = suite.update(recon, original)
    rows = []
    for i, record in enumerate(records):
        row = _row(record, int(images.shape[-2]), int(images.shape[-1]))
        row.update({key: float(values[i]) for key, values in columns.items()})
        rows.append(row)
        if record.image_id in sample_ids:
            samples[record.image_id] = (images[i].cpu(), results.to_uint8_images(recon[i : i + 1])[0])
    writer.write(rows)
    return len(records)


def evaluate(
    cfg: RunConfig, out_dir: Path, ready: ReadyJob, resume: bool = False, ranks: Ranks = SINGLE_PROCESS
) -> dict[str, Any] | None:
    """Run one (model, dataset, protocol) job, checked by the pre-flight, writing into ``out_dir``.

    With ``resume``, continue from the checkpoint in ``out_dir`` (same config, checked by the
    caller). Under torchrun (``ranks.world`` > 1) each rank scores its share of the batches and
    rank 0 merges them and writes the files (checkpoints are a single process's); other ranks
    return None.
    """
    device, dataset = ready.device, ready.dataset
    dtype = resolve_dtype(cfg.model.dtype, device)
    classes = dataset.scan.class_counts()
    log.info(
        "dataset %s: %d images in %d classes from %s: %s",
        cfg.dataset.name,
        len(dataset.records),
        len(classes),
        dataset.root,
        ", ".join(f"{label} ({n})" for label, n in classes.items()),
    )
    if dataset.scan.ignored:
        log.warning("files in the class folders that are not images, ignored: %s", dataset.scan.ignored)
    module = load_vae(cfg.model, device, dtype)
    if cfg.run.compile:
        compile_vae(module, channels_last=True)
    adapter = VAEAdapter(
        module,
        name=cfg.model.name,
        latent=cfg.metric.latent,
        seed=cfg.metric.seed,
        upcast_on_overflow=cfg.model.upcast_on_overflow,
    )
    suite = MetricSuite(cfg.metric, device, dtype)
    columns = [*results.ID_COLUMNS, *suite.columns]
    checkpoint_file = out_dir / files.CHECKPOINT_FILE
    progress = checkpoint.Progress(columns=columns)
    if resume:
        progress = checkpoint.load(checkpoint_file, columns)
        suite.load_state_dict(progress.suite_state)
        adapter.latent_shapes.update(progress.latent_shapes)
        log.info(
            "resuming after batch %d (%d images) from %s",
            progress.batches_done,
            len(progress.rows),
            checkpoint_file,
        )
    by_index = {record.index: record for record in dataset.records + [r for r, _, _ in dataset.skipped]}
    skipped = [(record, reason, message) for record, reason, message in dataset.skipped]
    skipped += [(by_index[index], reason, message) for index, reason, message in progress.skipped]
    if ranks.world > 1:
        dataset.batches.shard(ranks.rank, ranks.world)
    own_rows = out_dir / (files.PER_IMAGE_FILE if ranks.main else f".per_image.rank{ranks.rank}.csv")
    writer = results.PerImageWriter(own_rows, columns, progress.rows)
    sample_ids = results.choose_sample_ids([r.image_id for r in dataset.records], cfg.run.n_samples)
    samples = dict(progress.samples)  # image_id -> (original, recon), uint8 CHW
    dataset.batches.skip(progress.batches_done)
    numbers = list(dataset.batches.numbers)  # each coming batch's position in the whole set
    scored: list[int] = []  # numbers of the batches this process scored (KID keeps their features)
    schedule = checkpoint.Schedule(cfg.run.checkpoint_every) if ranks.world == 1 else None
    n_images = len(progress.rows)
    start = time.perf_counter() - progress.seconds
    bar = tqdm(
        total=len(dataset.records),
        initial=n_images,
        desc=f"{cfg.model.name}/{cfg.dataset.name}",
        unit="img",
        disable=not cfg.run.progress or not ranks.main,
    )
    try:
        for number, batch in zip(numbers, dataset.loader):
            for record, error in batch["skipped"]:
                if not cfg.dataset.skip_corrupt:
                    raise CorruptImageError(
                        f"{error} (set dataset.skip_corrupt=true to skip and count such files)"
                    )
                log.warning("skipping %s", error)
                skipped.append((record, error.reason, str(error)))
                progress.skipped.append((record.index, error.reason, str(error)))
            progress.batches_done += 1
            if batch["images"] is not None:
                n_images += _score_batch(batch, adapter, suite, writer, sample_ids, samples, device)
                scored.append(number)
            bar.update(len(batch["records"]) + len(batch["skipped"]))
            bar.set_postfix(img_s=f"{n_images / (time.perf_counter() - start):.2f}")
            if schedule is not None and schedule.due(progress.batches_done):
                progress.rows, progress.samples = list(writer.rows), dict(samples)
                progress.suite_state, progress.latent_shapes = suite.state_dict(), dict(adapter.latent_shapes)
                progress.seconds = time.perf_counter() - start
                checkpoint.save(checkpoint_file, progress)
    finally:
        bar.close()
        writer.close()
    if ranks.world > 1:
        share = {
            "rows": writer.rows,
            "skipped": progress.skipped,
            "samples": samples,
            "suite": suite.state_dict(),
            "scored": scored,
            "latent_shapes": adapter.latent_shapes,
        }
        parts = gather(share, ranks)
        if not ranks.main:
            own_rows.unlink(missing_ok=True)
            return None
        for part in parts[1:]:
            writer.rows.extend(part["rows"])
            skipped += [(by_index[index], reason, message) for index, reason, message in part["skipped"]]
            samples.update(part["samples"])
            adapter.latent_shapes.update(part["latent_shapes"])
        suite.merge_state_dicts([part["suite"] for part in parts], [part["scored"] for part in parts])
        n_images = len(writer.rows)
    seconds = time.perf_counter() - start
    if n_images == 0:
        raise CorruptImageError(f"dataset '{cfg.dataset.name}': every image was skipped")
    writer.rewrite_in_dataset_order()
    checkpoint_file.unlink(missing_ok=True)  # the results are complete: nothing left to resume
    table = writer.table()
    metrics = suite.finalize(table)
    results.write_per_class(out_dir / files.PER_CLASS_FILE, table, suite)
    if samples:
        ordered = [samples[image_id] for image_id in sample_ids if image_id in samples]
        results.save_samples(samples, out_dir / files.SAMPLES_DIR)
        results.save_sample_grid(
            [o for o, _ in ordered],
            [r for _, r in ordered],
            out_dir / files.SAMPLES_FILE,
            ("original", f"{cfg.model.name}"),
        )
    payload: dict[str, Any] = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "protocol": {
            **suite.protocol(),
            "noise": "none (deterministic)" if adapter.deterministic else NOISE_RULE,
        },
        "n_images": n_images,
        "n_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(reason for _, reason, _ in skipped)),
        "skipped": [{"image_id": r.image_id, "reason": reason, "error": e} for r, reason, e in skipped],
        "ignored_files": dataset.scan.ignored,
        "metrics": metrics,
        "model_stats": model_stats(module, adapter),
        "timing": {
            "seconds": seconds,
            "images_per_second": n_images / seconds,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "batch_size": cfg.run.batch_size,
            "processes": ranks.world,
            "compiled": cfg.run.compile,
        },
        "versions": results.software_versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return payload
