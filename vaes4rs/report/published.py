"""The study's published numbers (experiments/paper/published.csv), for the difference table.

A hand-written input, not a job's result, so a cell that is not a number is an error for the
user to fix rather than N/A.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vaes4rs.report.collect import ReportError, number
from vaes4rs.report.columns import METRIC_COLUMNS


@dataclass
class Published:
    """The study's numbers keyed like our results (study names: ``sd21``, ``resisc45``)."""

    path: Path
    metrics: dict[tuple[str, str], dict[str, float | None]]
    stats: dict[str, dict[str, float | None]]
    notes: dict[tuple[str, str], str]


def read_published(path: Path) -> Published:
    """Long format: one row per (model, dataset); latent_shape is ``CxHxW`` at 256x256 input."""
    if not path.is_file():
        raise ReportError(f"published table {path} does not exist")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics: dict[tuple[str, str], dict[str, float | None]] = {}
    stats: dict[str, dict[str, float | None]] = {}
    notes: dict[tuple[str, str], str] = {}
    try:
        for row in rows:
            cell = (row["model"], row["dataset"])
            metrics[cell] = {
                column.key: number(row.get(column.key), text=True, strict=True) for column in METRIC_COLUMNS
            }
            channels, height, _ = (int(side) for side in row["latent_shape"].split("x"))
            stats[row["model"]] = {
                "gflops": number(row["gflops"], text=True, strict=True),
                "spatial_ratio": 256 // height,
                "latent_channels": channels,
            }
            if row.get("note"):
                notes[cell] = row["note"]
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{path} is not a published table: {type(exc).__name__}: {exc}") from exc
    return Published(path=path, metrics=metrics, stats=stats, notes=notes)
