"""paper_table.md, .tex and .csv: the paper table's documents around ``render``'s grids.

Markdown and LaTeX carry the rounded, marked grid with its footnote (and the difference table
when published numbers are given, with why its cells are N/A); the CSV carries the unrounded
numbers for further analysis, and the interval ends of every metric that has one.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from vaes4rs.report.columns import STAT_COLUMNS
from vaes4rs.report.labels import model_label
from vaes4rs.report.render import latex_grid, markdown_grid, tex_escape
from vaes4rs.report.table import BASELINE_ROW, PaperTable

TABLE_FILES = ("paper_table.md", "paper_table.tex", "paper_table.csv")


def to_markdown(table: PaperTable) -> str:
    lines = [f'## VAE reconstruction, protocol "{table.protocol}"', ""]
    lines += markdown_grid(table, table.rows())
    lines += ["", *table.footnote]
    if table.failures:
        lines += ["", "Failed jobs:", "", *(f"- {text}" for text in table.failures)]
    if table.published is not None:
        lines += ["", f"### This table minus the published numbers ({table.published.path.name})", ""]
        lines += markdown_grid(table, table.diff_rows())
        lines += ["", *table.diff_notes] if table.diff_notes else []
    return "\n".join(lines) + "\n"


def _latex_float(grid: list[str], caption: str, label: str) -> list[str]:
    """A ``table*`` float around a tabular."""
    return [
        r"\begin{table*}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        *grid,
        r"\caption{" + tex_escape(caption) + "}",
        rf"\label{{{label}}}",
        r"\end{table*}",
    ]


def to_latex(table: PaperTable) -> str:
    """A complete ``table*`` (booktabs) with the footnote as caption: ``\\input`` it as it is."""
    lines = [
        f"% VAE reconstruction, protocol {table.protocol}; written by python -m vaes4rs.report table.",
        r"% Needs \usepackage{booktabs} in the preamble.",
        *_latex_float(latex_grid(table, table.rows()), " ".join(table.footnote), "tab:vae-reconstruction"),
    ]
    if table.published is not None:
        lines += [
            "",
            *_latex_float(
                latex_grid(table, table.diff_rows()),
                " ".join(
                    [
                        f"This table minus the published numbers ({table.published.path.name}).",
                        *table.diff_notes,
                    ]
                ),
                "tab:vae-reconstruction-vs-published",
            ),
        ]
    return "\n".join(lines) + "\n"


def to_csv(table: PaperTable) -> str:
    """Unrounded numbers, one row per model; an empty field is N/A. Columns ``<dataset>_<metric>``, each
    followed by ``_ci95_lo`` and ``_ci95_hi`` for a metric that has an interval in any cell. The
    do-nothing baseline, when there is one, is a last row named ``do_nothing``."""
    rows = []
    with_interval = set(table.interval_keys)
    for model in table.models:
        row: dict[str, Any] = {"model": model, "label": model_label(model), "protocol": table.protocol}
        row.update({s.key: table.stats[model][s.key] for s in STAT_COLUMNS})
        row.update({f"{d}_n_images": table.n_images.get((model, d)) for d in table.datasets})
        for c, d in table.columns:
            row[f"{d}_{c.key}"] = table.values[model, d, c.key]
            if c.key in with_interval:
                low, high = table.intervals.get((model, d, c.key), (None, None))
                row[f"{d}_{c.key}_ci95_lo"], row[f"{d}_{c.key}_ci95_hi"] = low, high
        if table.published is not None:
            for s in STAT_COLUMNS:
                row[f"{s.key}_published"] = table.published_stat(model, s.key)
                row[f"{s.key}_diff"] = table.stat_diff(model, s.key)
            for c, d in table.columns:
                row[f"{d}_{c.key}_published"] = table.published_metric(model, d, c.key)
                row[f"{d}_{c.key}_diff"] = table.metric_diff(model, d, c.key)
        rows.append(row)
    if table.baseline_label:
        row = {"model": BASELINE_ROW, "label": table.baseline_label, "protocol": table.protocol}
        for c, d in table.columns:
            row[f"{d}_{c.key}"] = table.baseline.get((d, c.key))
            if c.key in with_interval:
                low, high = table.baseline_intervals.get((d, c.key), (None, None))
                row[f"{d}_{c.key}_ci95_lo"], row[f"{d}_{c.key}_ci95_hi"] = low, high
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def write_table(table: PaperTable, root: Path) -> list[Path]:
    """paper_table.md, .tex and .csv in ``root``."""
    paths = [root / name for name in TABLE_FILES]
    for path, text in zip(paths, (to_markdown(table), to_latex(table), to_csv(table))):
        path.write_text(text)
    return paths
