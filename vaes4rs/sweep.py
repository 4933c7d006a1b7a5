"""Hydra callback that ends a sweep with a one-line-per-job summary of what failed."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("vaes4rs")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = []
        for error_file in sorted(sweep_dir.glob("*/error.json")):
            failed.append((error_file.parent.name, json.loads(error_file.read_text())["error"]))
        done = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
        log.info("sweep %s: %d job(s) done: %s", sweep_dir, len(done), ", ".join(done) or "-")
        if failed:
            for name, error in failed:
                log.error("FAILED %s: %s", name, error)
            print(f"{len(failed)} job(s) of the sweep failed; see error.json in {sweep_dir}", file=sys.stderr)
            sys.exit(1)
