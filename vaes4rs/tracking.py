"""Experiment tracking: Weights & Biases (offline by default) or nothing.

The run directory is the source of truth; W&B mirrors it so sweeps can be compared in its UI.
Summary keys are metrics.json's keys; a nested object (the degraded input's ``baseline``
metrics, say) is logged key by key as ``<object>/<key>``, so every value stays a number W&B can
chart and sort. An empty per_class.csv field (a class without a value) is logged as missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from vaes4rs.config import LoggerConfig

log = logging.getLogger(__name__)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as ``parent/child`` keys, the leaves as they are."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def table_cell(text: str) -> float | str | None:
    """A per_class.csv field for a W&B table: a number, None when empty, else the text itself."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


class Tracker:
    """No-op tracker (``logger=none``); the W&B one overrides every method."""

    def start(self, *, name: str, group: str, config: dict[str, Any], tags: list[str], out_dir: Path) -> None:
        pass

    def log_summary(self, values: dict[str, Any]) -> None:
        pass

    def log_image(self, key: str, path: Path, caption: str) -> None:
        pass

    def log_csv_table(self, key: str, path: Path) -> None:
        pass

    def finish(self, failed: bool) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, cfg: LoggerConfig) -> None:
        self.cfg = cfg
        self.run = None

    def start(self, *, name, group, config, tags, out_dir):
        import wandb

        mode = os.environ.get("WANDB_MODE") or self.cfg.mode
        self.run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=name,
            group=group,
            config=config,
            tags=[*tags, *self.cfg.tags],
            mode=mode,
            dir=os.environ.get("WANDB_DIR") or str(out_dir),
            reinit="finish_previous",
        )

    def log_summary(self, values):
        if self.run is not None:
            for key, value in flatten(values).items():
                self.run.summary[key] = value

    def log_image(self, key, path, caption):
        if self.run is not None and path.is_file():
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})

    def log_csv_table(self, key, path):
        """A CSV result file (per-class means) as a wandb.Table, sortable in the UI."""
        if self.run is not None and path.is_file():
            import csv

            import wandb

            with path.open(newline="") as handle:
                header, *rows = list(csv.reader(handle))
            typed = [[row[0], *(table_cell(value) for value in row[1:])] for row in rows]
            self.run.log({key: wandb.Table(columns=header, data=typed)})

    def finish(self, failed):
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


def make_tracker(cfg: LoggerConfig) -> Tracker:
    return WandbTracker(cfg) if cfg.backend == "wandb" else Tracker()
