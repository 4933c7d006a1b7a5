"""The paper table: one row per model (cost and latent geometry), then each metric per dataset.

``METRIC_COLUMNS`` is the one place that names the table's metrics: their keys are the keys
of metrics.json, the table's CSV columns and the W&B summary keys, so a number can be
followed from a job to the paper without a rename. The layout follows the study (metric
groups with one column per dataset, best bold, second underlined).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaes4rs.report.collect import ReportError, Selection


@dataclass(frozen=True)
class MetricColumn:
    """A metric of the table: ``key`` in metrics.json, header label, direction, printed decimals."""

    key: str
    label: str
    higher_is_better: bool
    decimals: int


METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("psnr", "PSNR", higher_is_better=True, decimals=2),
    MetricColumn("ssim", "SSIM", higher_is_better=True, decimals=3),
    MetricColumn("lpips", "LPIPS", higher_is_better=False, decimals=3),
    MetricColumn("fid", "FID", higher_is_better=False, decimals=2),
)


@dataclass(frozen=True)
class StatColumn:
    """A per-model column read from metrics.json's model_stats (the same for every dataset)."""

    key: str
    label: str
    decimals: int


STAT_COLUMNS: tuple[StatColumn, ...] = (
    StatColumn("gflops", "GFLOPs", 2),
    StatColumn("spatial_ratio", "Ratio", 0),
    StatColumn("latent_channels", "Channels", 0),
)
GFLOPS_SIZE = "256x256"  # the study counts one encode+decode of a 1x3x256x256 input

MODEL_LABELS = {
    "sd21": "SD21-VAE",
    "sdxl": "SDXL-VAE",
    "sd35": "SD35-VAE",
    "flux1": "FLUX1-VAE",
    "flux2": "FLUX2-VAE",
    "sana": "SANA-VAE",
    "qwen": "Qwen-VAE",
}
DATASET_LABELS = {"resisc45": "RESISC45", "aid": "AID", "ucmerced": "UC Merced"}
TABLE_FILES = ("paper_table.md", "paper_table.tex", "paper_table.csv")


def _canonical(name: str, labels: dict[str, str]) -> str:
    """A study name for a label-style name too: a local run of BiliSakura/VAEs' SD21-VAE is sd21."""
    aliases = {label.lower(): key for key, label in labels.items()}
    return name if name in labels else aliases.get(name.lower(), name)


def canonical_model(name: str) -> str:
    return _canonical(name, MODEL_LABELS)


def canonical_dataset(name: str) -> str:
    return _canonical(name, DATASET_LABELS)


def _ordered(names: set[str], labels: dict[str, str]) -> list[str]:
    """Names in the study's order, unknown ones after them alphabetically."""
    rank = {key: i for i, key in enumerate(labels)}
    return sorted(names, key=lambda name: (rank.get(_canonical(name, labels), len(rank)), name))


def order_models(names: set[str]) -> list[str]:
    return _ordered(names, MODEL_LABELS)


def order_datasets(names: set[str]) -> list[str]:
    return _ordered(names, DATASET_LABELS)


def model_label(name: str) -> str:
    return MODEL_LABELS.get(canonical_model(name), name)


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(canonical_dataset(name), name)


def _number(value: Any) -> float | None:
    """A JSON/CSV value as a cell: numbers only, absent or non-numeric is N/A (never zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def model_stat(stats: dict[str, Any], key: str) -> float | None:
    if key == "gflops":
        return _number((stats.get("gflops") or {}).get(GFLOPS_SIZE))
    return _number(stats.get(key))


@dataclass
class Published:
    """The study's numbers (experiments/paper/published.csv) keyed like our results."""

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

    def number(text: str | None) -> float | None:
        return float(text) if text not in (None, "") else None

    metrics: dict[tuple[str, str], dict[str, float | None]] = {}
    stats: dict[str, dict[str, float | None]] = {}
    notes: dict[tuple[str, str], str] = {}
    try:
        for row in rows:
            cell = (row["model"], row["dataset"])
            metrics[cell] = {column.key: number(row.get(column.key)) for column in METRIC_COLUMNS}
            channels, height, _ = (int(side) for side in row["latent_shape"].split("x"))
            stats[row["model"]] = {
                "gflops": number(row["gflops"]),
                "spatial_ratio": 256 // height,
                "latent_channels": channels,
            }
            if row.get("note"):
                notes[cell] = row["note"]
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{path} is not a published table: {type(exc).__name__}: {exc}") from exc
    return Published(path=path, metrics=metrics, stats=stats, notes=notes)


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

    def diff_rows(self) -> list[tuple[str, list[Cell]]]:
        """This table minus the published one, cell by cell (N/A where either is missing)."""
        return [
            (
                model,
                [
                    Cell(
                        _minus(self.stats[model][s.key], self.published_stat(model, s.key)),
                        s.decimals,
                        "",
                        True,
                    )
                    for s in STAT_COLUMNS
                ]
                + [
                    Cell(
                        _minus(self.values[model, d, c.key], self.published_metric(model, d, c.key)),
                        c.decimals,
                        "",
                        True,
                    )
                    for c, d in self.columns
                ],
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


def _arrow(column: MetricColumn, tex: bool) -> str:
    if tex:
        return r"$\uparrow$" if column.higher_is_better else r"$\downarrow$"
    return "↑" if column.higher_is_better else "↓"


def _markdown_grid(table: PaperTable, rows: list[tuple[str, list[Cell]]]) -> list[str]:
    header = ["Model", *(s.label for s in STAT_COLUMNS)] + [
        f"{c.label}{_arrow(c, tex=False)} {dataset_label(d)}" for c, d in table.columns
    ]
    wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for model, cells in rows:
        texts = [wrap[cell.mark].format(cell.text) for cell in cells]
        lines.append("| " + " | ".join([model_label(model), *texts]) + " |")
    return lines


def to_markdown(table: PaperTable) -> str:
    lines = [f'## VAE reconstruction, protocol "{table.protocol}"', ""]
    lines += _markdown_grid(table, table.rows())
    lines += ["", *table.footnote]
    if table.failures:
        lines += ["", "Failed jobs:", "", *(f"- {text}" for text in table.failures)]
    if table.published is not None:
        lines += ["", f"### This table minus the published numbers ({table.published.path.name})", ""]
        lines += _markdown_grid(table, table.diff_rows())
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """Text for LaTeX: special characters escaped, "quoted" as ``quoted'' (straight quotes print as ”)."""
    escaped = "".join(_TEX_SPECIAL.get(char, char) for char in text)
    return re.sub(r'"([^"]*)"', r"``\1''", escaped)


def _latex_tabular(table: PaperTable, rows: list[tuple[str, list[Cell]]]) -> list[str]:
    n_stats = len(STAT_COLUMNS)
    n_sets = len(table.datasets)
    spec = "l" + "r" * n_stats + "".join(" " + "r" * n_sets for _ in METRIC_COLUMNS)
    groups = [rf"\multicolumn{{{n_sets}}}{{c}}{{{c.label}{_arrow(c, tex=True)}}}" for c in METRIC_COLUMNS]
    first = 2 + n_stats
    rules = [
        rf"\cmidrule(lr){{{first + i * n_sets}-{first + (i + 1) * n_sets - 1}}}"
        for i in range(len(METRIC_COLUMNS))
    ]
    wrap = {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}", "": "{}"}
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & " * (n_stats + 1) + " & ".join(groups) + r" \\",
        " ".join(rules),
        " & ".join(["Model", *(s.label for s in STAT_COLUMNS)] + [dataset_label(d) for _, d in table.columns])
        + r" \\",
        r"\midrule",
    ]
    for model, cells in rows:
        # a signed difference gets math-mode signs: a text hyphen is not a minus
        texts = [
            wrap[cell.mark].format(
                f"${cell.text[0]}${cell.text[1:]}" if cell.signed and cell.value is not None else cell.text
            )
            for cell in cells
        ]
        lines.append(" & ".join([tex_escape(model_label(model)), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def to_latex(table: PaperTable) -> str:
    """A complete ``table*`` (booktabs) with the footnote as caption: ``\\input`` it as it is."""
    lines = [
        f"% VAE reconstruction, protocol {table.protocol}; written by python -m vaes4rs.report table.",
        r"% Needs \usepackage{booktabs} in the preamble.",
        r"\begin{table*}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        *_latex_tabular(table, table.rows()),
        r"\caption{" + tex_escape(" ".join(table.footnote)) + "}",
        r"\label{tab:vae-reconstruction}",
        r"\end{table*}",
    ]
    if table.published is not None:
        lines += [
            "",
            r"\begin{table*}[t]",
            r"\centering",
            r"\small",
            r"\setlength{\tabcolsep}{4pt}",
            *_latex_tabular(table, table.diff_rows()),
            r"\caption{"
            + tex_escape(f"This table minus the published numbers ({table.published.path.name}).")
            + "}",
            r"\label{tab:vae-reconstruction-vs-published}",
            r"\end{table*}",
        ]
    return "\n".join(lines) + "\n"


def to_csv(table: PaperTable) -> str:
    """Unrounded numbers, one row per model; an empty field is N/A. Columns ``<dataset>_<metric>``."""
    rows = []
    for model in table.models:
        row: dict[str, Any] = {"model": model, "label": model_label(model), "protocol": table.protocol}
        row.update({s.key: table.stats[model][s.key] for s in STAT_COLUMNS})
        row.update({f"{d}_n_images": table.n_images.get((model, d)) for d in table.datasets})
        row.update({f"{d}_{c.key}": table.values[model, d, c.key] for c, d in table.columns})
        if table.published is not None:
            for s in STAT_COLUMNS:
                theirs = table.published_stat(model, s.key)
                row[f"{s.key}_published"] = theirs
                row[f"{s.key}_diff"] = _minus(table.stats[model][s.key], theirs)
            for c, d in table.columns:
                theirs = table.published_metric(model, d, c.key)
                row[f"{d}_{c.key}_published"] = theirs
                row[f"{d}_{c.key}_diff"] = _minus(table.values[model, d, c.key], theirs)
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def write_table(table: PaperTable, root: Path) -> list[Path]:
    """paper_table.md, .tex and .csv in ``root``."""
    paths = [root / name for name in TABLE_FILES]
    for path, text in zip(paths, (to_markdown(table), to_latex(table), to_csv(table))):
        path.write_text(text)
    return paths
