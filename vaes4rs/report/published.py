"""The study's published numbers (experiments/paper/published.csv), for the difference table.

A hand-written input, not a job's result, so a cell that is not a number is an error for the
user to fix rather than N/A, and every error names the file and the line to fix. An empty
cell is N/A; NaN or inf is an error (it would print as a difference no one can read).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from vaes4rs.report.collect import ReportError, number
from vaes4rs.report.columns import GFLOPS_SIDE, METRIC_COLUMNS

REQUIRED = ("model", "dataset", "gflops", "latent_shape")


@dataclass
class Published:
    """The study's numbers keyed like our results (study names: ``sd21``, ``resisc45``)."""

    path: Path
    metrics: dict[tuple[str, str], dict[str, float | None]]
    stats: dict[str, dict[str, float | None]]
    notes: dict[tuple[str, str], str]


def _cell(row: dict[str, str], key: str) -> float | None:
    """A number of the row, None when empty; ValueError naming the column otherwise."""
    text = row.get(key)
    try:
        value = number(text, text=True, strict=True)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{key}={text!r} is not a finite number (leave the cell empty for N/A)")
    return value


def _latent(text: str) -> tuple[int, int]:
    """(channels, height) of a ``CxHxW`` latent shape at the GFLOPs input size."""
    sides = text.split("x")
    if len(sides) != 3 or not all(side.isdigit() and int(side) > 0 for side in sides):
        raise ValueError(f"latent_shape={text!r} is not CxHxW (positive integers, e.g. 4x32x32)")
    return int(sides[0]), int(sides[1])


def read_published(path: Path) -> Published:
    """Long format: one row per (model, dataset); latent_shape is ``CxHxW`` at the GFLOPs input size."""
    if not path.is_file():
        raise ReportError(f"published table {path} does not exist")
    metrics: dict[tuple[str, str], dict[str, float | None]] = {}
    stats: dict[str, dict[str, float | None]] = {}
    notes: dict[tuple[str, str], str] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            missing = [key for key in REQUIRED if key not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"no {', '.join(missing)} column (the header needs {', '.join(REQUIRED)})")
            for row in reader:
                if None in row:
                    raise ValueError(f"more fields than the header's {len(row) - 1}")
                if None in row.values():
                    raise ValueError(f"fewer fields than the header's {len(row)}")
                cell = (row["model"], row["dataset"])
                metrics[cell] = {column.key: _cell(row, column.key) for column in METRIC_COLUMNS}
                channels, height = _latent(row["latent_shape"])
                stats[row["model"]] = {
                    "gflops": _cell(row, "gflops"),
                    "spatial_ratio": GFLOPS_SIDE // height,
                    "latent_channels": channels,
                }
                if row.get("note"):
                    notes[cell] = row["note"]
        except (ValueError, csv.Error) as exc:
            raise ReportError(f"{path}, line {max(reader.line_num, 1)}: {exc}") from exc
    return Published(path=path, metrics=metrics, stats=stats, notes=notes)
