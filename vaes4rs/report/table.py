"""The paper table's model: every cell, its best/second mark, its interval and the footnote, computed once.

``build_table`` reads a Selection (and optionally the published numbers) into a PaperTable;
``render`` and ``table_files`` only print it, so markdown, LaTeX, HTML and CSV cannot disagree
about a number, a mark, an interval or a missing cell. The layout follows the study (metric
groups with one column per dataset, best bold, second underlined).

Marks compare values as printed (at the column's decimals), so a reader never sees two equal
numbers marked differently: every value equal to the best is bold, and the second mark goes
to every value equal to the next distinct one. A column with fewer than two values has no
mark, one whose values all tie has no second, and NaN or inf prints N/A and is never ranked.
Every N/A of a finished job is explained in the footnote by the reason the job recorded.

The study's metrics are always columns; CMMD and the probe's (``EXTRA_COLUMNS``) are columns
when a job has them. Jobs run on degraded inputs that scored the degraded input itself (the
do-nothing baseline, ``baseline`` in metrics.json) add a last row, "Do nothing (degraded
input)", which is never ranked: the number a model has to beat to have helped at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from vaes4rs.files import RESULT_FILE
from vaes4rs.report.collect import JobResult, Selection, finite, number
from vaes4rs.report.columns import EXTRA_COLUMNS, GFLOPS_SIZE, METRIC_COLUMNS, STAT_COLUMNS, MetricColumn
from vaes4rs.report.labels import (
    canonical_dataset,
    canonical_model,
    dataset_label,
    model_label,
    order_datasets,
    order_models,
)
from vaes4rs.report.published import Published

Interval = tuple[float, float]  # bootstrap 95 % (low, high)
Cells = list[tuple[str, str]]  # (model, dataset)
BASELINE_ROW = "do_nothing"  # the baseline row's name in the CSV's model column


def model_stat(stats: dict[str, Any], key: str) -> float | None:
    """One of the table's stats from metrics.json's model_stats; GFLOPs at the study's input size.

    GFLOPs are a mapping from input size to count; a bare number does not say at which size it
    was counted, so it is N/A rather than a number in the wrong column.
    """
    if key == "gflops":
        gflops = stats.get("gflops")
        return finite(number(gflops.get(GFLOPS_SIZE))) if isinstance(gflops, dict) else None
    return finite(number(stats.get(key)))


@dataclass(frozen=True)
class Cell:
    """One printed number; ``mark`` is "best", "second" or ""."""

    value: float | None
    decimals: int
    mark: str = ""
    signed: bool = False
    interval: Interval | None = None
    missing: str = "N/A"  # printed without a value ("" where a value makes no sense)

    @property
    def text(self) -> str:
        if self.value is None:
            return self.missing
        return f"{self.value:{'+' if self.signed else ''}.{self.decimals}f}"

    @property
    def interval_text(self) -> tuple[str, str] | None:
        """The interval's ends at the cell's decimals; None when there is no value or no interval."""
        if self.value is None or self.interval is None:
            return None
        low, high = self.interval
        return f"{low:.{self.decimals}f}", f"{high:.{self.decimals}f}"


class Row(NamedTuple):
    """One printed row: its label (a model's, or the baseline's), its cells, and whether it is the
    unranked reference row that grids set apart."""

    label: str
    cells: list[Cell]
    reference: bool = False


def _minus(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else ours - theirs


@dataclass
class PaperTable:
    """Everything the renderers print, computed once from a Selection."""

    protocol: str
    models: list[str]
    datasets: list[str]
    stats: dict[str, dict[str, float | None]]
    values: dict[tuple[str, str, str], float | None]  # (model, dataset, metric); NaN and inf are None
    intervals: dict[tuple[str, str, str], Interval]
    marks: dict[tuple[str, str, str], str]
    n_images: dict[tuple[str, str], int]
    dataset_labels: dict[str, str]  # Selection.dataset_label of each dataset
    footnote: list[str]
    failures: list[str]  # "label on dataset: error (path)", for the markdown only
    published: Published | None = None
    diff_notes: list[str] = field(default_factory=list)  # under the difference table: why cells are N/A
    metric_columns: list[MetricColumn] = field(default_factory=lambda: list(METRIC_COLUMNS))
    # The do-nothing row: (dataset, metric) -> the degraded input's score; "" label: no such row.
    baseline: dict[tuple[str, str], float | None] = field(default_factory=dict)
    baseline_intervals: dict[tuple[str, str], Interval] = field(default_factory=dict)
    baseline_label: str = ""

    def dataset_label(self, dataset: str) -> str:
        return self.dataset_labels[dataset]

    @property
    def interval_keys(self) -> list[str]:
        """Metric keys with an interval in at least one cell, in column order (the CSV's interval columns)."""
        keys = {key for _, _, key in self.intervals} | {key for _, key in self.baseline_intervals}
        return [c.key for c in self.metric_columns if c.key in keys]

    @property
    def columns(self) -> list[tuple[MetricColumn, str]]:
        """Metric-major, as in the study: PSNR for every dataset, then SSIM, ..."""
        return [(column, dataset) for column in self.metric_columns for dataset in self.datasets]

    def rows(self) -> list[Row]:
        """A row per model, then the do-nothing row when the jobs scored a degraded input."""
        rows = [
            Row(
                model_label(model),
                [Cell(self.stats[model][s.key], s.decimals) for s in STAT_COLUMNS]
                + [
                    Cell(
                        self.values[model, d, c.key],
                        c.decimals,
                        self.marks.get((model, d, c.key), ""),
                        interval=self.intervals.get((model, d, c.key)),
                    )
                    for c, d in self.columns
                ],
            )
            for model in self.models
        ]
        if self.baseline_label:
            cells = [Cell(None, s.decimals, missing="") for s in STAT_COLUMNS] + [
                Cell(
                    self.baseline.get((d, c.key)),
                    c.decimals,
                    interval=self.baseline_intervals.get((d, c.key)),
                )
                for c, d in self.columns
            ]
            rows.append(Row(self.baseline_label, cells, reference=True))
        return rows

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

    def diff_rows(self) -> list[Row]:
        """This table minus the published one, cell by cell (N/A where either is missing)."""
        return [
            Row(
                model_label(model),
                [Cell(self.stat_diff(model, s.key), s.decimals, signed=True) for s in STAT_COLUMNS]
                + [Cell(self.metric_diff(model, d, c.key), c.decimals, signed=True) for c, d in self.columns],
            )
            for model in self.models
        ]


def _marks(values: dict[str, float | None], column: MetricColumn) -> dict[str, str]:
    """Best and second best of a column by the printed value (the tie rule of the module docstring)."""
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
    """Images per dataset (once: a folder's or subset's label has its count); another count is named."""
    parts = []
    for dataset in datasets:
        label = selection.dataset_label(dataset)
        jobs = [(m, job) for m in models if (job := selection.get(m, dataset))]
        if not jobs:
            parts.append(f"{label} no result")
            continue
        common = selection.scored_images(dataset)
        others = [f"{model_label(m)} {job.n_images:,}" for m, job in jobs if job.n_images != common]
        skipped = sum(job.n_skipped for _, job in jobs)
        text = label if selection.dataset_kind(dataset) else f"{label} {common:,} images"
        if others:
            text += f" ({', '.join(others)})"
        if skipped:
            text += f", {skipped:,} corrupt image(s) skipped over all models"
        parts.append(text)
    return "Images scored: " + "; ".join(parts) + "."


def _interval(metrics: dict[str, float], key: str) -> Interval | None:
    """The bootstrap interval of ``key`` in a job's metrics when both ends are finite numbers."""
    low, high = (finite(metrics.get(f"{key}_ci95_{end}")) for end in ("lo", "hi"))
    return None if low is None or high is None else (low, high)


def _why_na(job: JobResult, column: MetricColumn) -> str:
    """Why a finished job's cell is N/A, read from its metrics.json; the footnote prints it after the metric.

    A recorded reason is cut to its first clause ("network weights missing (...)"): the rest names
    files and commands, which the job's log and warning already gave. A column's own key is
    looked up first, then the metric behind it (``probe`` for the probe's columns).
    """
    value = job.metrics.get(column.key)
    if value is not None:
        return f"written as {value} in {RESULT_FILE}"
    for key in dict.fromkeys((column.key, column.switch)):
        if key in job.not_computed:
            return "not computed: " + job.not_computed[key].split(": ", 1)[0]
    switch = job.protocol_params.get(column.switch, True)
    if switch is False or switch is None:
        return f"switched off (metric.{column.switch}={'false' if switch is False else 'null'})"
    return f"not computed, no reason recorded in {RESULT_FILE}"


def _grouped(
    found: dict[str, dict[str, Cells]], n_results: int, where: Callable[[str, str], str]
) -> dict[str, str]:
    """Reason -> the metrics it covers, each followed by its cells unless it covers every job."""
    grouped = {}
    for reason, by_metric in found.items():
        parts = [
            label if len(cells) == n_results else f"{label} ({', '.join(where(m, d) for m, d in cells)})"
            for label, cells in by_metric.items()
        ]
        partial = any(len(cells) != n_results for cells in by_metric.values())
        grouped[reason] = ("; " if partial and len(parts) > 1 else ", ").join(parts)
    return grouped


def _na_notes(
    selection: Selection,
    models: list[str],
    columns: list[tuple[MetricColumn, str]],
    values: dict[tuple[str, str, str], float | None],
    intervals: dict[tuple[str, str, str], Interval],
) -> list[str]:
    """One line per reason a finished job's value or interval is missing, naming the cells unless all."""
    missing: dict[str, dict[str, Cells]] = {}
    no_interval: dict[str, dict[str, Cells]] = {}
    for column, dataset in columns:
        for model in models:
            job = selection.get(model, dataset)
            cell = (model, dataset, column.key)
            if job is None:
                continue
            if values[cell] is None:
                reason = _why_na(job, column)
                missing.setdefault(reason, {}).setdefault(column.label, []).append((model, dataset))
            elif cell not in intervals and (why := job.not_computed.get(f"{column.key}_ci95")):
                reason = why.split(": ", 1)[0]
                no_interval.setdefault(reason, {}).setdefault(column.label, []).append((model, dataset))

    def where(model: str, dataset: str) -> str:
        return f"{model_label(model)} on {selection.dataset_label(dataset)}"

    n = len(selection.results)
    return [f"N/A: {parts} {why}." for why, parts in _grouped(missing, n, where).items()] + [
        f"No interval for {parts}: {why}." for why, parts in _grouped(no_interval, n, where).items()
    ]


def _diff_notes(
    selection: Selection,
    models: list[str],
    datasets: list[str],
    columns: list[MetricColumn],
    published: Published,
) -> list[str]:
    """Why difference cells are N/A (a model or dataset the published table lacks) and when they mislead."""
    name = published.path.name
    notes = []
    unknown = [model_label(m) for m in models if canonical_model(m) not in published.stats]
    if unknown:
        known = ", ".join(model_label(m) for m in published.stats)
        notes.append(f"N/A: {', '.join(unknown)} not in {name}, which has {known}.")
    covered = {dataset for _, dataset in published.metrics}
    unknown = [selection.dataset_label(d) for d in datasets if canonical_dataset(d) not in covered]
    if unknown:
        known = ", ".join(dataset_label(d) for d in dict.fromkeys(d for _, d in published.metrics))
        notes.append(f"N/A: {', '.join(unknown)} not in {name}, which has {known}.")
    extra = [c.label for c in columns if c not in METRIC_COLUMNS]
    if extra:
        notes.append(f"N/A: {', '.join(extra)} not in {name} (the study did not report them).")
    partial = [
        selection.dataset_label(d)
        for d in datasets
        if selection.dataset_kind(d) and canonical_dataset(d) in covered
    ]
    if partial:
        notes.append(
            f"{', '.join(partial)}: not the study's full dataset, so the differences also reflect "
            "which images were scored."
        )
    return notes


def _shown_columns(selection: Selection) -> list[MetricColumn]:
    """The study's columns, and each extra one a job has a value for or recorded a reason about."""
    jobs = list(selection.results.values())
    extra = [
        c
        for c in EXTRA_COLUMNS
        if any(
            c.key in job.metrics or c.key in job.not_computed or c.switch in job.not_computed for job in jobs
        )
    ]
    return [*METRIC_COLUMNS, *extra]


def _scalars(settings: dict[str, Any]) -> str:
    """``key=value`` of a settings object's scalar entries (a degradation's)."""
    return ", ".join(f"{k}={v}" for k, v in settings.items() if isinstance(v, (str, int, float)) or v is None)


def _compiled_note(selection: Selection, models: list[str], labels: dict[str, str]) -> list[str]:
    """Which results ran through torch.compile (``run.compile``), in table order: they differ
    from eager ones at bf16 rounding level, so a table says so."""
    results = selection.results
    compiled = [(m, d) for m in models for d in labels if (m, d) in results and results[m, d].compiled]
    if not compiled:
        return []
    what = "compiled with torch.compile (run.compile: VAE encoder and decoder, metric networks)"
    if len(compiled) == len(selection.results):
        return [f"All results {what}."]
    names = ", ".join(f"{model_label(model)} on {labels[dataset]}" for model, dataset in compiled)
    return [f"Results {what}: {names}; the others eager."]


def _extra_notes(selection: Selection, columns: list[MetricColumn], labels: dict[str, str]) -> list[str]:
    """What the CMMD and probe columns mean, with the probe's accuracy on originals per dataset."""
    keys = {c.key for c in columns}
    notes = []
    if "cmmd" in keys:
        notes.append(
            "CMMD: MMD^2 x 1000 between CLIP ViT-L/14-336 embeddings of originals and reconstructions "
            "(Gaussian kernel, sigma 10; unbiased estimator, the reference code's biased one is cmmd_biased "
            f"in {RESULT_FILE})."
        )
    if keys & {c.key for c in EXTRA_COLUMNS if c.switch == "probe"}:
        accuracy = []
        for dataset, label in labels.items():
            jobs = [job for (_, d), job in selection.results.items() if d == dataset]
            found = sorted(
                {f"{v:.3f}" for job in jobs if (v := finite(job.metrics.get("probe_acc"))) is not None}
            )
            if found:
                accuracy.append(f"{label} {'-'.join(dict.fromkeys([found[0], found[-1]]))}")
        notes.append(
            "Probe: a classifier on frozen features (metric.probe) fit on a seeded split of each class's "
            "originals; acc. recon: its accuracy on the held-out images' reconstructions; drop: its accuracy "
            "on the held-out originals minus that; acc. fit on recon: fit on the reconstructions, scored on "
            "the held-out originals."
            + (f" Accuracy on the held-out originals: {'; '.join(accuracy)}." if accuracy else "")
        )
    return notes


def _baseline(
    selection: Selection, datasets: list[str], columns: list[MetricColumn], labels: dict[str, str]
) -> tuple[dict[tuple[str, str], float | None], dict[tuple[str, str], Interval], str, list[str]]:
    """The do-nothing row from the newest job per dataset that scored its degraded input, its label,
    and the footnote lines saying what was degraded (also for jobs that scored no baseline)."""
    values: dict[tuple[str, str], float | None] = {}
    intervals: dict[tuple[str, str], Interval] = {}
    label, notes = "", []
    settings: dict[str, list[str]] = {}
    for dataset in datasets:
        jobs = sorted(
            (job for (_, d), job in selection.results.items() if d == dataset), key=lambda job: job.finished
        )
        for job in jobs:
            if job.degradation:
                settings.setdefault(_scalars(job.degradation), []).append(
                    f"{model_label(job.model)} on {labels[dataset]}"
                )
        scored = [job for job in jobs if job.baseline_label]
        if not scored:
            continue
        newest = scored[-1]
        label = label or f"Do nothing ({newest.baseline_label})"
        for column in columns:
            values[dataset, column.key] = finite(newest.baseline.get(column.key))
            if values[dataset, column.key] is not None and (
                interval := _interval(newest.baseline, column.key)
            ):
                intervals[dataset, column.key] = interval
    for text, where in settings.items():
        scope = "every job" if len(where) == len(selection.results) else ", ".join(where)
        notes.append(f"Inputs degraded before the VAE ({scope}): {text}.")
    if label:
        notes.append(
            f"{label}: the degraded input itself scored against the clean image, no model: the score a "
            "model has to beat to have helped; not ranked."
        )
    return values, intervals, label, notes


def build_table(selection: Selection, published: Published | None = None) -> PaperTable:
    """Read every cell from the selection; N/A (None) wherever a job is missing, failed or wrote NaN/inf."""
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
    intervals: dict[tuple[str, str, str], Interval] = {}
    marks: dict[tuple[str, str, str], str] = {}
    metric_columns = _shown_columns(selection)
    for column in metric_columns:
        for dataset in datasets:
            column_values = {}
            for model in models:
                job = selection.get(model, dataset)
                value = finite(job.metrics.get(column.key)) if job else None
                column_values[model] = values[model, dataset, column.key] = value
                if job and value is not None and (interval := _interval(job.metrics, column.key)):
                    intervals[model, dataset, column.key] = interval
            for model, mark in _marks(column_values, column).items():
                marks[model, dataset, column.key] = mark
    n_images = {cell: job.n_images for cell, job in selection.results.items()}

    better = [c.label for c in metric_columns if c.higher_is_better]
    worse = [c.label for c in metric_columns if not c.higher_is_better]
    footnote = [
        _protocol_text(selection) + ".",
        _counts_text(selection, models, datasets),
        f"GFLOPs: one encode+decode of a 1x3x{GFLOPS_SIZE} input (2 FLOPs per multiply-add). "
        "Ratio: input side / latent side. Channels: latent channels.",
        f"Best in bold, second underlined (higher is better for {', '.join(better)}; "
        f"lower for {', '.join(worse)}); values that print the same share a mark.",
    ]
    if intervals:
        footnote.append(
            "In brackets: the bootstrap 95 % confidence interval over images; marks compare the values."
        )
    labels = {d: selection.dataset_label(d) for d in datasets}
    columns = [(column, dataset) for column in metric_columns for dataset in datasets]
    footnote += _extra_notes(selection, metric_columns, labels)
    footnote += _compiled_note(selection, models, labels)
    baseline, baseline_intervals, baseline_label, baseline_notes = _baseline(
        selection, datasets, metric_columns, labels
    )
    footnote += baseline_notes
    footnote += _na_notes(selection, models, columns, values, intervals)
    failed = [selection.failures[cell] for cell in sorted(selection.failures)]
    if failed:
        names = ", ".join(f"{model_label(f.model)} on {labels[f.dataset]}" for f in failed)
        footnote.append(f"N/A: job failed ({names}).")
    missing = [
        f"{model_label(m)} on {labels[d]}"
        for m in models
        for d in datasets
        if (m, d) not in selection.results and (m, d) not in selection.failures
    ]
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
        intervals=intervals,
        marks=marks,
        n_images=n_images,
        dataset_labels=labels,
        footnote=footnote,
        failures=[f"{model_label(f.model)} on {labels[f.dataset]}: {f.error} ({f.path})" for f in failed],
        published=published,
        diff_notes=_diff_notes(selection, models, datasets, metric_columns, published) if published else [],
        metric_columns=metric_columns,
        baseline=baseline,
        baseline_intervals=baseline_intervals,
        baseline_label=baseline_label,
    )
