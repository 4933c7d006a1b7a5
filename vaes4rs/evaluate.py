"""The streaming loop of one job: dataset -> adapter -> metric suite -> result files.

Nothing outlives its batch except per-image rows (on disk after every batch) and the
suite's running statistics, so memory stays flat however large the dataset.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vaes4rs import checkpoint, files, results
from vaes4rs.config import RunConfig
from vaes4rs.data import CorruptImageError, ImageRecord, usable_cpus
from vaes4rs.degrade import describe
from vaes4rs.device import HostCopy, resolve_dtype
from vaes4rs.distributed import SINGLE_PROCESS, Ranks, gather
from vaes4rs.latents import start_decoding
from vaes4rs.metrics.pixel import to_uint8
from vaes4rs.metrics.reference_cache import REFERENCE_FEATURES, ReferenceBatch
from vaes4rs.metrics.suite import SHARED_NETWORKS, MetricSuite, PendingColumns
from vaes4rs.models.adapter import NOISE_RULE, Reconstruction, VAEAdapter
from vaes4rs.models.compile import compile_vae
from vaes4rs.models.cost import model_stats
from vaes4rs.models.zoo import adapter_for, load_vae
from vaes4rs.preflight import ReadyJob
from vaes4rs.reconstructions import ReconstructionWriter

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
        "band": record.band,  # written only under dataset.band_mode=each
    }


def _per_band(table: dict[str, Any], suite: MetricSuite) -> dict[str, dict[str, float]]:
    """band_mode=each: every band's images aggregated as the protocol aggregates the set."""
    bands = sorted({int(band) for band in table["band"]})
    return {
        f"b{band}": suite.summarise({k: v[table["band"] == band] for k, v in table.items()}) for band in bands
    }


@dataclass
class _Job:
    """What scoring a batch needs, built once per job."""

    adapter: VAEAdapter
    suite: MetricSuite
    baseline: MetricSuite | None  # the degraded input scored as is, against the clean image
    writer: results.PerImageWriter
    sample_ids: list[str]
    samples: dict[str, tuple[torch.Tensor, ...]]  # image_id -> (original, reconstruction[, input]) uint8
    device: torch.device
    reference: str  # metric.reference
    reconstructions: ReconstructionWriter | None
    # The resolved dataset config, part of the key of reference features kept across jobs; None
    # when the suite keeps none (run.feature_cache_mb=0, no FID/KID, or Inception's file missing),
    # so no file is stat'ed per batch.
    dataset_key: str | None


@dataclass
class _Submitted:
    """A batch whose work is queued on the device; ``_finish_batch`` reads its values."""

    records: list[ImageRecord]
    height: int
    width: int
    reconstruction: Reconstruction
    columns: PendingColumns
    baseline: PendingColumns | None
    pixels: HostCopy | None  # the rounded uint8 reconstructions, when saved or shown
    clean: torch.Tensor  # the batch's images, on the host
    given: torch.Tensor | None  # what the VAE was given instead (dataset.degrade), on the host


def _submit_batch(batch: dict, job: _Job) -> _Submitted:
    """Queue one batch's reconstruction and scores; nothing here waits for the GPU.

    With ``dataset.degrade`` the VAE is given the degraded images; ``metric.reference=clean``
    scores its reconstructions against the clean ones and the degraded input too (the
    do-nothing baseline), ``input`` against what it was given. A latent dataset's batch carries
    the stored latents, which are decoded instead of reconstructing the images.
    """
    records = batch["records"]
    ids = [record.image_id for record in records]
    clean = batch["images"]
    degraded = "inputs" in batch  # dataset.degrade, applied by the data workers
    given = batch["inputs"] if degraded else clean
    model_input = to_minus_one_one(given.to(job.device, non_blocking=True))
    height, width = int(clean.shape[-2]), int(clean.shape[-1])
    if "latents" in batch:
        channels_last = batch["layout"] == "channels_last"
        reconstruction = start_decoding(job.adapter, batch["latents"], height, width, channels_last)
    else:
        reconstruction = job.adapter.start_reconstruction(model_input, ids)
    recon = reconstruction.images
    against_clean = degraded and job.reference == "clean"
    reference = to_minus_one_one(clean.to(job.device, non_blocking=True)) if against_clean else model_input
    labels = [record.label for record in records]
    source = None
    if job.dataset_key is not None:
        images = [(record.image_id, record.path) for record in records]
        which = "input" if degraded and not against_clean else "clean"
        source = ReferenceBatch.of(job.dataset_key, images, which, clean.shape)
    columns = job.suite.submit(recon, reference, labels=labels, source=source)
    baseline = None
    if job.baseline is not None:
        baseline = job.baseline.submit(model_input, reference, labels=labels, source=source)
    wanted = job.reconstructions is not None or any(image_id in job.sample_ids for image_id in ids)
    pixels = HostCopy(to_uint8(recon, "round")) if wanted else None
    return _Submitted(
        records, height, width, reconstruction, columns, baseline, pixels, clean, given if degraded else None
    )


def _finish_batch(batch: _Submitted, job: _Job) -> int:
    """Read a submitted batch's values (the only wait for the GPU per batch): its rows go to
    per_image.csv, chosen images to ``job.samples``; a non-finite reconstruction stops the job
    before anything of the batch is written."""
    batch.reconstruction.checked()
    columns = batch.columns.get()
    if batch.baseline is not None:
        for key, values in batch.baseline.get().items():
            columns[results.BASELINE_PREFIX + key] = values
    pixels = batch.pixels.get() if batch.pixels is not None else None
    rows = []
    for i, record in enumerate(batch.records):
        row = _row(record, batch.height, batch.width)
        row.update({key: float(values[i]) for key, values in columns.items()})
        rows.append(row)
        if job.reconstructions is not None:
            job.reconstructions.write(record, pixels[i])
        if record.image_id in job.sample_ids:
            shown = (batch.clean[i], pixels[i]) + (() if batch.given is None else (batch.given[i],))
            job.samples[record.image_id] = tuple(image.clone() for image in shown)  # not a view of the batch
    job.writer.write(rows)
    return len(batch.records)


def _reconstructions_card(cfg: RunConfig, suite: MetricSuite) -> dict[str, Any]:
    return {
        "model": cfg.model.name,
        "model_source": cfg.model.path or f"{cfg.model.repo}/{cfg.model.subfolder or ''}",
        "dataset": cfg.dataset.name,
        "latent": str(cfg.metric.latent),
        "seed": cfg.metric.seed,
        "protocol": suite.cfg.protocol,
        "degradation": describe(cfg.dataset.degrade) if cfg.dataset.degrade.active else None,
    }


def _latent_protocol(ready: ReadyJob) -> dict[str, Any]:
    """A latent dataset's own latent policy replaces metric.latent (its latents were drawn at export)."""
    if ready.latents is None:
        return {}
    meta = ready.latents.meta
    return {"latent": meta["latent"]["policy"], "noise": f"drawn at export (seed {meta['latent']['seed']})"}


def _input_record(cfg: RunConfig, ready: ReadyJob, baseline_metrics: dict[str, float] | None) -> dict:
    """What the VAE was given besides plain images: degradations (with the baseline's scores), latents."""
    record: dict[str, Any] = {}
    if cfg.dataset.degrade.active:
        record["degradation"] = {**describe(cfg.dataset.degrade), "reference": str(cfg.metric.reference)}
    if baseline_metrics is not None:
        record["baseline"] = {"label": "degraded input", "metrics": baseline_metrics}
    if ready.latents is not None:
        meta = ready.latents.meta
        record["latents"] = {
            "root": str(ready.latents.root),
            "storage": meta["storage"],
            "bpp": meta["bpp"],
            "bytes_per_image": meta["bytes_per_image"],
        }
    return record


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
    if ready.latents is not None:
        ready.latents.check_model(module)
    compiled = "inductor" if cfg.run.compile else None  # the backend of the VAE's and the metric networks'
    if compiled is not None:
        compile_vae(module, channels_last=True, backend=compiled)
    adapter = adapter_for(module, cfg.model, cfg.metric)
    cache_mib = cfg.run.feature_cache_mb
    shared = SHARED_NETWORKS.for_job(SHARED_NETWORKS.job_key(cfg.metric, device, compiled))
    if shared:
        log.info("metric networks of the previous job reused: %s", ", ".join(shared))
    suite = MetricSuite(
        cfg.metric, device, dtype, feature_cache_mib=cache_mib, compile_backend=compiled, shared=shared
    )
    scores_baseline = cfg.dataset.degrade.active and cfg.metric.reference == "clean"
    baseline = None
    if scores_baseline:  # the degraded input scored as is: its own suite, the same networks
        baseline = MetricSuite(
            cfg.metric, device, dtype, suite.networks, feature_cache_mib=cache_mib, compile_backend=compiled
        )
    by_band = cfg.dataset.band_mode == "each"
    columns = [*results.ID_COLUMNS, *(["band"] if by_band else []), *suite.columns]
    if baseline is not None:
        columns += [results.BASELINE_PREFIX + column for column in baseline.columns]
    checkpoint_file = out_dir / files.CHECKPOINT_FILE
    progress = checkpoint.Progress(columns=columns)
    if resume:
        progress = checkpoint.load(checkpoint_file, columns)
        suite.load_state_dict(progress.suite_state)
        if baseline is not None:
            baseline.load_state_dict(progress.baseline_state)
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
    samples = dict(progress.samples)  # image_id -> (original, recon[, degraded input]), uint8 CHW
    saved = None
    if cfg.run.save_reconstructions:
        card = _reconstructions_card(cfg, suite)
        saved = ReconstructionWriter(out_dir / files.RECONSTRUCTIONS_DIR, card, threads=usable_cpus())
    job = _Job(
        adapter,
        suite,
        baseline,
        writer,
        sample_ids,
        samples,
        device,
        reference=str(cfg.metric.reference),
        reconstructions=saved,
        dataset_key=repr(cfg.dataset) if suite.reuses_reference_features() else None,
    )
    dataset.batches.skip(progress.batches_done)
    numbers = list(dataset.batches.numbers)  # each coming batch's position in the whole set
    scored: list[int] = []  # numbers of the batches this process scored (KID keeps their features)
    schedule = checkpoint.Schedule(cfg.run.checkpoint_every) if ranks.world == 1 else None
    n_images = len(progress.rows)
    start = time.perf_counter() - progress.seconds
    hits_before = REFERENCE_FEATURES.hits
    bar = tqdm(
        total=len(dataset.records),
        initial=n_images,
        desc=f"{cfg.model.name}/{cfg.dataset.name}",
        unit="img",
        disable=not cfg.run.progress or not ranks.main,
    )
    # One batch in flight: batch k's values are read after batch k+1 is queued, so the GPU is
    # never idle while the host writes rows and fetches the next batch. A crash loses at most
    # the batch in flight, which a resume redoes from the last checkpoint like any other.
    in_flight: _Submitted | None = None
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
            submitted = None
            if batch["images"] is not None:
                submitted = _submit_batch(batch, job)
                scored.append(number)
            if in_flight is not None:
                n_images += _finish_batch(in_flight, job)
            in_flight = submitted
            bar.update(len(batch["records"]) + len(batch["skipped"]))
            bar.set_postfix(img_s=f"{n_images / (time.perf_counter() - start):.2f}")
            if schedule is not None and schedule.due(progress.batches_done):
                if in_flight is not None:  # a checkpoint holds every batch it counts, finished
                    n_images += _finish_batch(in_flight, job)
                    in_flight = None
                if saved is not None:  # and their reconstructions on disk
                    saved.flush()
                progress.rows, progress.samples = list(writer.rows), dict(samples)
                progress.suite_state, progress.latent_shapes = suite.state_dict(), dict(adapter.latent_shapes)
                progress.baseline_state = baseline.state_dict() if baseline is not None else {}
                progress.seconds = time.perf_counter() - start
                checkpoint.save(checkpoint_file, progress)
        if in_flight is not None:
            n_images += _finish_batch(in_flight, job)
    finally:
        bar.close()
        writer.close()
    if ranks.world > 1:
        share = {
            "rows": writer.rows,
            "skipped": progress.skipped,
            "samples": samples,
            "suite": suite.state_dict(),
            "baseline": baseline.state_dict() if baseline is not None else {},
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
        scored_by_rank = [part["scored"] for part in parts]
        suite.merge_state_dicts([part["suite"] for part in parts], scored_by_rank)
        if baseline is not None:
            baseline.merge_state_dicts([part["baseline"] for part in parts], scored_by_rank)
        n_images = len(writer.rows)
    seconds = time.perf_counter() - start
    if REFERENCE_FEATURES.hits > hits_before:
        log.info(
            "FID: reference images' Inception features of %d batch(es) reused, not recomputed "
            "(kept by an earlier job of this process or by this job's other suite; run.feature_cache_mb)",
            REFERENCE_FEATURES.hits - hits_before,
        )
    if n_images == 0:
        raise CorruptImageError(f"dataset '{cfg.dataset.name}': every image was skipped")
    writer.rewrite_in_dataset_order()
    checkpoint_file.unlink(missing_ok=True)  # the results are complete: nothing left to resume
    table = writer.table()
    metrics = suite.finalize(table)
    # set-level metrics (probe, CMMD) compute their per-class values in finalize: before per_class.csv
    baseline_metrics = baseline.finalize(results.baseline_table(table, baseline)) if baseline else None
    results.write_per_class(out_dir / files.PER_CLASS_FILE, table, suite, baseline)
    if saved is not None:
        saved.close()
    if samples:
        ordered = [samples[image_id] for image_id in sample_ids if image_id in samples]
        results.save_samples(samples, out_dir / files.SAMPLES_DIR)
        labels = ["original", f"{cfg.model.name}"]
        if cfg.dataset.degrade.active:
            labels.insert(1, "input")
            ordered = [(original, given, recon) for original, recon, given in ordered]
        results.save_sample_grid(list(zip(*ordered)), out_dir / files.SAMPLES_FILE, labels)
    payload: dict[str, Any] = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "protocol": {
            **suite.protocol(),
            "noise": "none (deterministic)" if adapter.deterministic else NOISE_RULE,
            **_latent_protocol(ready),
        },
        "n_images": n_images,
        **_input_record(cfg, ready, baseline_metrics),
        "radiometry": dataset.scan.radiometry,
        **({"per_band": _per_band(table, suite)} if by_band else {}),
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
