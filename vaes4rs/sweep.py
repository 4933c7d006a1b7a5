"""Hydra callback that ends a sweep with a summary of its jobs: done, failed, refused.

Jobs that ran in this process (the default launcher) are counted as they end; jobs a
launcher ran elsewhere (submitit) are found by the files they wrote during this sweep.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vaes4rs import files, rundir

log = logging.getLogger("vaes4rs")


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.started = time.time()
        self.outcomes: dict[Path, str] = {}  # job directory -> done | failed | refused

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        job_dir = Path(config.hydra.runtime.output_dir)
        refused = job_dir in rundir.refused_dirs
        job_dir = job_dir.resolve()  # the sweep's own listing below is resolved too: one key per job
        if refused:
            self.outcomes[job_dir] = "refused"
        elif job_return.status == JobStatus.COMPLETED and job_return.return_value is not None:
            self.outcomes[job_dir] = "done"  # run.main returns the metrics, or None when the job failed
        else:
            self.outcomes[job_dir] = "failed"

    def _outcome(self, job_dir: Path) -> str:
        """A job this process did not run: judged by the files it wrote during this sweep."""
        if (job_dir / files.ERROR_FILE).is_file():
            return "failed"
        return "done" if (job_dir / files.RESULT_FILE).is_file() else "failed"

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        written = [
            path.parent.resolve()
            for path in sweep_dir.glob(f"*/{files.RUN_CONFIG_FILE}")
            if path.stat().st_mtime >= self.started - 1 and path.parent not in self.outcomes
        ]
        outcomes = {**{job_dir: self._outcome(job_dir) for job_dir in written}, **self.outcomes}
        jobs = sorted(outcomes)
        done = [d.name for d in jobs if outcomes[d] == "done"]
        failed = [
            (d.name, json.loads((d / files.ERROR_FILE).read_text())["error"])
            for d in jobs
            if outcomes[d] == "failed" and (d / files.ERROR_FILE).is_file()
        ]
        refused = [d.name for d in jobs if outcomes[d] == "refused"]
        log.info(
            "sweep %s: %d job(s) launched, %d done: %s",
            sweep_dir,
            len(jobs),
            len(done),
            ", ".join(done) or "-",
        )
        for name, error in failed:
            log.error("FAILED %s: %s", name, error)
        for name in refused:
            log.error(
                "REFUSED %s: its directory is in use or holds another config's results (see the log)", name
            )
        if failed or refused:
            print(
                f"{len(failed) + len(refused)} job(s) of the sweep failed; see error.json in {sweep_dir}",
                file=sys.stderr,
            )
            sys.exit(1)
