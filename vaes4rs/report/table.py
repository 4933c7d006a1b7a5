"""The paper table's model: every cell, its best/second mark and the footnote, computed once.

``build_table`` reads a Selection (and optionally the published numbers) into a PaperTable;
``render`` and ``table_files`` only print it, so markdown, LaTeX, HTML and CSV cannot disagree
about a number, a mark or a missing cell. The layout follows the study (metric groups with one
column per dataset, best bold, second underlined).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from vaes4rs.report.collect import Selection, number
from vaes4rs.report.columns import GFLOPS_SIZE, METRIC_COLUMNS, STAT_COLUMNS, MetricColumn
from vaes4rs.report.labels import (
    canonical_dataset,
    canonical_model,
    dataset_label,
    model_label,
    order_datasets,
    order_models,
)
from vaes4rs.report.published import Published


def model_stat(stats: dict[str, Any], key: str) -> float | None:
    """One of the table's stats from metrics.json's model_stats; GFLOPs at the study's input size."""
    if key == "gflops":
        return number((stats.get("gflops") or {}).get(GFLOPS_SIZE))
    return number(stats.get(key))


@dataclass(frozen=True)
class Cell:
    """One printed number; ``mark`` is "best", "second" or ""."""

    value: float | None
    decimals: int
    mark: str = ""
    signed: bool = False

    @property
    def text(self) -> str:
        if self.value is None:
            return "N/A"
        return f"{self.value:{'+' if self.signed else ''}.{self.decimals}f}"


def _minus(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else ours - theirs


@dataclass
class PaperTable:
    """Everything the renderers print, computed once from a Selection."""

    protocol: str
    models: list[str]
    datasets: list[str]
    stats: dict[str, dict[str, float | None]]
    values: dict[tuple[str, str, str], float | None]  # (model, dataset, metric)
    marks: dict[tuple[str, str, str], str]
    n_images: dict[tuple[str, str], int]
    footnote: list[str]
    failures: list[str]  # "label on dataset: error (path)", for the markdown only
    published: Published | None = None

    @property
    def columns(self) -> list[tuple[MetricColumn, str]]:
        """Metric-major, as in the study: PSNR for every dataset, then SSIM, ..."""
        return [(column, dataset) for column in METRIC_COLUMNS for dataset in self.datasets]

    def rows(self) -> list[tuple[str, list[Cell]]]:
        return [
            (
                model,
                [Cell(self.stats[model][s.key], s.decimals) for s in STAT_COLUMNS]
                + [
                    Cell(self.values[model, d, c.key], c.decimals, self.marks.get((model, d, c.key), ""))
                    for c, d in self.columns
                ],
            )
            for model in self.models
        ]

    def published_stat(self, model: str, key: str) -> float | None:
        if self.published is None:
            return None
        return self.published.stats.get(canonical_model(model), {}).get(key)

    def published_metric(self, model: str, dataset: str, key: str) -> float | None:
        if self.published is None:
            return None
        return self.published.metrics.get((canonical_model(model), canonical_dataset(dataset)), {}).get(key)

    def stat_diff(self, model: str, key: str) -> float | None:
        return _minus(self.stats[model][key], self.published_stat(model, key))

    def metric_diff(self, model: str, dataset: str, key: str) -> float | None:
        return _minus(self.values[model, dataset, key], self.published_metric(model, dataset, key))

    def diff_rows(self) -> list[tuple[str, list[Cell]]]:
        """This table minus the published one, cell by cell (N/A where either is missing)."""
        return [
            (
                model,
                [Cell(self.stat_diff(model, s.key), s.decimals, signed=True) for s in STAT_COLUMNS]
                + [Cell(self.metric_diff(model, d, c.key), c.decimals, signed=True) for c, d in self.columns],
            )
            for model in self.models
        ]


def _marks(values: dict[str, float | None], column: MetricColumn) -> dict[str, str]:
    """Best and second best of a column by the printed value, so ties print tied marks."""
    shown = {
        model: float(f"{value:.{column.decimals}f}")
        for model, value in values.items()
        if value is not None and math.isfinite(value)
    }
    if len(shown) < 2:
        return {}
    ranked = sorted(set(shown.values()), reverse=column.higher_is_better)
    marks = {model: "best" for model, value in shown.items() if value == ranked[0]}
    if len(ranked) > 1:
        marks.update({model: "second" for model, value in shown.items() if value == ranked[1]})
    return marks


def _protocol_text(selection: Selection) -> str:
    """The protocol's scalar parameters; metric switches, weight paths and other nested values are
    left out (the table's columns show which metrics ran); differing values are all listed."""
    seen: dict[str, set[str]] = {}
    for result in selection.results.values():
        for key, value in result.protocol_params.items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                seen.setdefault(key, set()).add(str(value))
    params = ", ".join(f"{key}={'/'.join(sorted(values))}" for key, values in seen.items())
    return f'Protocol "{selection.protocol}"' + (f" ({params})" if params else "")


def _counts_text(selection: Selection, models: list[str], datasets: list[str]) -> str:
    """Images per dataset; a job that scored another count is named with its own."""
    parts = []
    for dataset in datasets:
        jobs = [(m, selection.get(m, dataset)) for m in models if selection.get(m, dataset)]
        if not jobs:
            parts.append(f"{dataset_label(dataset)} no result")
            continue
        common = Counter(job.n_images for _, job in jobs).most_common(1)[0][0]
        others = [f"{model_label(m)} {job.n_images:,}" for m, job in jobs if job.n_images != common]
        skipped = sum(job.n_skipped for _, job in jobs)
        text = f"{dataset_label(dataset)} {common:,} images"
        if others:
            text += f" ({', '.join(others)})"
        if skipped:
            text += f", {skipped:,} corrupt image(s) skipped over all models"
        parts.append(text)
    return "Images scored: " + "; ".join(parts) + "."


def build_table(selection: Selection, published: Published | None = None) -> PaperTable:
    """Read every cell from the selection; N/A (None) wherever a job is missing or failed."""
    models = order_models(selection.models)
    datasets = order_datasets(selection.datasets)
    stats: dict[str, dict[str, float | None]] = {}
    for model in models:
        jobs = sorted(
            (job for (m, _), job in selection.results.items() if m == model), key=lambda job: job.finished
        )
        newest = jobs[-1].model_stats if jobs else {}
        stats[model] = {s.key: model_stat(newest, s.key) for s in STAT_COLUMNS}
    values: dict[tuple[str, str, str], float | None] = {}
    marks: dict[tuple[str, str, str], str] = {}
    for column in METRIC_COLUMNS:
        for dataset in datasets:
            column_values = {}
            for model in models:
                job = selection.get(model, dataset)
                column_values[model] = job.metrics.get(column.key) if job else None
                values[model, dataset, column.key] = column_values[model]
            for model, mark in _marks(column_values, column).items():
                marks[model, dataset, column.key] = mark
    n_images = {cell: job.n_images for cell, job in selection.results.items()}

    better = [c.label for c in METRIC_COLUMNS if c.higher_is_better]
    worse = [c.label for c in METRIC_COLUMNS if not c.higher_is_better]
    footnote = [
        _protocol_text(selection) + ".",
        _counts_text(selection, models, datasets),
        f"GFLOPs: one encode+decode of a 1x3x{GFLOPS_SIZE} input (2 FLOPs per multiply-add). "
        "Ratio: input side / latent side. Channels: latent channels.",
        f"Best in bold, second underlined (higher is better for {', '.join(better)}; "
        f"lower for {', '.join(worse)}).",
    ]
    failed = [selection.failures[cell] for cell in sorted(selection.failures)]
    missing = [
        f"{model_label(m)} on {dataset_label(d)}"
        for m in models
        for d in datasets
        if (m, d) not in selection.results and (m, d) not in selection.failures
    ]
    absent = [
        c.label for c in METRIC_COLUMNS if all(values[m, d, c.key] is None for m in models for d in datasets)
    ]
    if absent:
        footnote.append(f"N/A: {', '.join(absent)} not computed by this protocol's jobs.")
    if failed:
        names = ", ".join(f"{model_label(f.model)} on {dataset_label(f.dataset)}" for f in failed)
        footnote.append(f"N/A: job failed ({names}).")
    if missing:
        footnote.append(f"N/A: no job ({', '.join(missing)}).")
    if published is not None:
        footnote.append(
            f"Difference table: this table minus the study's published numbers ({published.path.name}, "
            'protocol "paper").'
        )
        if selection.protocol != "paper":
            footnote.append(
                f'This table uses protocol "{selection.protocol}", so differences include protocol effects.'
            )
        shown = {(canonical_model(m), canonical_dataset(d)) for m, d in selection.results}
        for (model, dataset), note in sorted(published.notes.items()):
            if (model, dataset) in shown:
                footnote.append(f"Published {model_label(model)} on {dataset_label(dataset)}: {note}.")
    return PaperTable(
        protocol=selection.protocol,
        models=models,
        datasets=datasets,
        stats=stats,
        values=values,
        marks=marks,
        n_images=n_images,
        footnote=footnote,
        failures=[
            f"{model_label(f.model)} on {dataset_label(f.dataset)}: {f.error} ({f.path})" for f in failed
        ],
        published=published,
    )
