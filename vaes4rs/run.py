"""``python -m vaes4rs.run``: evaluate one VAE on one image set, or a Hydra sweep of them.

    python -m vaes4rs.run model=flux2 dataset=aid
    python -m vaes4rs.run -m model=sd21,sdxl,flux2 dataset=aid,resisc45

Every job first claims its directory (``vaes4rs.rundir``: a lock, and never another config's
results), then the pre-flight check (``vaes4rs.preflight``) finds everything that would stop
it, all at once, before any model loads. In a sweep a failing job writes ``error.json`` into
its directory and the sweep goes on; ``vaes4rs.sweep.SweepSummary`` lists the failures at the
end and exits non-zero. A single run that fails on bad input prints the message (no
traceback) and exits with status 2.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vaes4rs import files, preflight, results, rundir
from vaes4rs.config import register_configs, validate
from vaes4rs.distributed import SINGLE_PROCESS, Ranks, rank_zero_decides, ranks_from_environment
from vaes4rs.errors import InputError
from vaes4rs.evaluate import evaluate
from vaes4rs.scene import evaluate_scene
from vaes4rs.tracking import make_tracker

log = logging.getLogger("vaes4rs")

register_configs()
OmegaConf.register_new_resolver("vaes4rs.job_dir", rundir.job_dirname, replace=True)


def run_job(
    cfg: DictConfig, out_dir: Path, resume: bool = False, ranks: Ranks = SINGLE_PROCESS
) -> dict[str, Any]:
    """Validate, check everything before the work, evaluate, write metrics.json, mirror it to the tracker."""
    run_cfg = validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    scene_job = run_cfg.dataset.source == "scene"  # one raster in tiles: its own checks and loop
    ready = None if scene_job else preflight.check(run_cfg)
    if ranks.world > 1 and resume:
        log.warning("checkpoints are a single process's: a job run by %d processes starts over", ranks.world)
        resume = False
    tracker = make_tracker(run_cfg.logger)
    hydra_cfg = HydraConfig.get()
    group = run_cfg.run.experiment
    if hydra_cfg.mode == RunMode.MULTIRUN:
        group = f"{group}-{Path(hydra_cfg.sweep.dir).name}"
    failed = True
    try:
        tracker.start(
            name=f"{run_cfg.model.name}-{run_cfg.dataset.name}",
            group=group,
            config=resolved,  # type: ignore[arg-type]
            tags=[run_cfg.model.name, run_cfg.dataset.name, run_cfg.metric.protocol],
            out_dir=out_dir,
        )
        if scene_job:
            payload = evaluate_scene(run_cfg, out_dir)
        else:
            assert ready is not None
            payload = evaluate(run_cfg, out_dir, ready, resume, ranks)
        assert payload is not None  # rank 0 (or the only process) gets the merged results
        payload["config"] = resolved
        results.write_json(out_dir / files.RESULT_FILE, payload)
        summary = {**payload["metrics"], "n_images": payload["n_images"]}
        if "baseline" in payload:  # the degraded input scored as is: logged as baseline/<metric>
            summary["baseline"] = payload["baseline"]["metrics"]
        tracker.log_summary(summary)
        tracker.log_image("samples", out_dir / files.SAMPLES_FILE, "originals (top), reconstructions")
        tracker.log_csv_table("per_class", out_dir / files.PER_CLASS_FILE)
        failed = False
    finally:
        tracker.finish(failed)
    log.info(
        "%s on %s (%s, %d images): %s -> %s",
        run_cfg.model.name,
        run_cfg.dataset.name,
        run_cfg.metric.protocol,
        payload["n_images"],
        ", ".join(f"{k}={v:.4f}" for k, v in payload["metrics"].items()),
        out_dir / files.RESULT_FILE,
    )
    return payload


def job_labels(cfg: DictConfig) -> dict[str, str | None]:
    """Model, dataset and protocol names of a job, as far as its config resolves (for error.json)."""
    labels: dict[str, str | None] = {}
    for label, key in (("model", "model.name"), ("dataset", "dataset.name"), ("protocol", "metric.protocol")):
        try:
            labels[label] = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception:  # an unresolvable label must not hide the job's real error
            labels[label] = None
    return labels


def write_error(out_dir: Path, cfg: DictConfig, exc: Exception) -> Path:
    hydra_cfg = HydraConfig.get()
    error_file = out_dir / files.ERROR_FILE
    record = {
        "job": hydra_cfg.job.override_dirname or hydra_cfg.job.name,
        **job_labels(cfg),
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
    }
    results.write_json(error_file, record)
    return error_file


def release_memory() -> None:
    """After a failed job (CUDA out of memory above all) the next job of the sweep starts clean."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    ranks = ranks_from_environment()
    if not ranks.main:  # torchrun: score this rank's share; rank 0 claims the directory and writes
        if rank_zero_decides(False, ranks):
            run_cfg = validate(cfg)
            evaluate(run_cfg, out_dir, preflight.check(run_cfg), ranks=ranks)
        return None
    decided = False  # other ranks wait for rank 0's go/no-go: exactly one on every path
    try:
        claimed = rundir.claim(
            out_dir,
            rundir.result_config(cfg),
            skip_finished=bool(OmegaConf.select(cfg, "run.skip_finished", default=False)),
            resume=str(OmegaConf.select(cfg, "run.resume", default="auto")),
        )
        with claimed as held:
            shared = not held.finished and OmegaConf.select(cfg, "dataset.source") != "scene"
            rank_zero_decides(shared, ranks)
            decided = True
            if held.finished:
                log.info(
                    "job %s skipped: its results for this config are complete (run.skip_finished)", out_dir
                )
                return json.loads((out_dir / files.RESULT_FILE).read_text())["metrics"]
            try:
                return run_job(cfg, out_dir, held.resume, ranks)["metrics"]
            except Exception as exc:
                error_file = write_error(out_dir, cfg, exc)
                if not multirun and not isinstance(exc, InputError):
                    raise
                log.error("job %s failed: %s: %s (see %s)", out_dir.name, type(exc).__name__, exc, error_file)
    except rundir.RunDirectoryError as exc:  # the directory is not ours: nothing is written into it
        rundir.refused_dirs.add(out_dir)
        log.error("job %s refused: %s", out_dir.name, exc)
    finally:
        if not decided:
            rank_zero_decides(False, ranks)
        release_memory()
    if not multirun:
        sys.exit(2)
    return None


def cli() -> None:
    """The command: note which overrides sweep (they name the jobs' directories), then run Hydra."""
    rundir.remember_swept_keys(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
