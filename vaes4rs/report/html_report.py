"""One self-contained HTML page of a results root, for readers without a W&B account.

No script, no server, no network: the table is HTML, the charts and the figure are PNGs
embedded as base64, so the single file can be mailed or opened from disk in any browser.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vaes4rs.files import PER_CLASS_FILE
from vaes4rs.report.collect import BASELINE_PREFIX, ReportError, Selection, read_per_class
from vaes4rs.report.columns import EXTRA_COLUMNS, METRIC_COLUMNS
from vaes4rs.report.figure import figure_for
from vaes4rs.report.labels import model_label, order_datasets, order_models
from vaes4rs.report.render import html_grid
from vaes4rs.report.table import PaperTable

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; color: #222; }
main { margin: 2rem auto; max-width: 1400px; padding: 0 1rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 1rem 0; }
th, td { padding: 0.25rem 0.6rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead tr:first-child th { border-top: 2px solid #222; }
thead tr:last-child th { border-bottom: 1px solid #222; }
tbody tr:last-child td { border-bottom: 2px solid #222; }
th.group { border-bottom: 1px solid #888; text-align: center; }
tr.reference td { border-top: 1px solid #888; font-style: italic; }  /* the unranked do-nothing row */
.note { font-size: 0.85rem; color: #444; max-width: 60rem; }
.wide { overflow-x: auto; }  /* a table with intervals may be wider than the page: it scrolls alone */
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0 1.5rem; }
"""


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _by_class(rows: list[dict[str, Any]], classes: list[str], key: str) -> np.ndarray:
    """One column of per_class.csv in ``classes`` order; NaN where empty, absent or not finite."""
    by_class = {str(row["class"]): row.get(key) for row in rows}
    values = np.array([np.nan if by_class.get(c) is None else by_class[c] for c in classes], dtype=float)
    values[~np.isfinite(values)] = np.nan
    return values


def _series(selection: Selection, dataset: str) -> list[tuple[str, list[dict[str, Any]], str]]:
    """(label, per_class.csv rows, column prefix) of each bar series: every model, then the
    degraded input scored as is (``input_<metric>`` columns) from the first job that wrote them."""
    found = [
        (job, rows)
        for m in order_models(selection.models)
        if (job := selection.get(m, dataset)) and (rows := read_per_class(job.path))
    ]
    series = [(model_label(job.model), rows, "") for job, rows in found]
    for job, rows in found:
        if any(key.startswith(BASELINE_PREFIX) for row in rows for key in row):
            series.append((f"Do nothing ({job.baseline_label or 'degraded input'})", rows, BASELINE_PREFIX))
            break
    return series


def per_class_chart(selection: Selection, dataset: str) -> Figure | None:
    """Horizontal grouped bars, one panel per metric in per_class.csv, classes down the page.

    Classes run down (not across) because 45 classes x 7 models only stay readable when
    the chart grows in the direction a web page scrolls. A class's bootstrap 95 % interval
    (``<metric>_ci95_lo``/``_hi`` in per_class.csv, when the protocol wrote them) is a black
    line across its bar's end, drawn from end to end so an interval need not hold its mean.
    The degraded input's own scores (the do-nothing baseline) are a last, hatched grey bar.
    """
    series = _series(selection, dataset)
    if not series:
        return None
    classes = list(dict.fromkeys(str(row["class"]) for _, rows, _ in series for row in rows))
    columns = [
        c
        for c in (*METRIC_COLUMNS, *EXTRA_COLUMNS)
        if any(c.key in row for _, rows, _ in series for row in rows)
    ]
    if not columns:
        return None
    height = 0.8 / len(series)
    y = np.arange(len(classes))
    fig = Figure(
        figsize=(4.5 * len(columns) + 1.5, max(3.0, 0.1 * len(classes) * len(series) + 1.5)),
        layout="constrained",
    )
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    for ax, column in zip(axes, columns):
        lowest, with_intervals = np.inf, False
        for i, (label, rows, prefix) in enumerate(series):
            key = prefix + column.key
            values = _by_class(rows, classes, key)
            low, high = (_by_class(rows, classes, f"{key}_ci95_{end}") for end in ("lo", "hi"))
            offset = (i - (len(series) - 1) / 2) * height
            style = {"color": "0.75", "hatch": "//"} if prefix else {}
            ax.barh(y + offset, values, height, label=label, **style)
            drawn = np.isfinite(values) & np.isfinite(low) & np.isfinite(high)
            if drawn.any():
                ax.hlines((y + offset)[drawn], low[drawn], high[drawn], colors="black", linewidth=0.8)
                with_intervals = True
            shown = np.concatenate([values, low[drawn]])
            if np.isfinite(shown).any():
                lowest = min(lowest, float(np.nanmin(shown)))
        if column.higher_is_better and np.isfinite(lowest) and lowest > 0:
            ax.set_xlim(left=0.95 * lowest)  # bars from 0 would hide differences of a few percent
        direction = "higher" if column.higher_is_better else "lower"
        ax.set_xlabel(
            f"{column.label} ({direction} is better{'; lines: 95 % interval' if with_intervals else ''})"
        )
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, classes, fontsize=8)
    axes[0].set_ylim(len(classes) - 0.5, -0.5)  # first class on top
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside upper center",
        ncols=min(len(series), 7),
        fontsize=8,
    )
    return fig


def render(selection: Selection, table: PaperTable, images_per_dataset: int = 2) -> str:
    """The whole page as a string; sections without data say so instead of failing."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>vaes4rs report: {escape(str(selection.root))}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<h1>VAE reconstruction report</h1>",
        f'<p class="note">Results: {escape(str(selection.root))} &middot; protocol '
        f"<code>{escape(selection.protocol)}</code> &middot; written {datetime.now():%Y-%m-%d %H:%M}</p>",
        "<h2>Paper table</h2>",
        f'<div class="wide">{html_grid(table, table.rows())}</div>',
        *(f'<p class="note">{escape(line)}</p>' for line in table.footnote),
    ]
    if table.failures:
        parts.append("<h3>Failed jobs</h3><ul>")
        parts += [f"<li><code>{escape(text)}</code></li>" for text in table.failures]
        parts.append("</ul>")
    if table.published is not None:
        parts.append(f"<h3>This table minus the published numbers ({escape(table.published.path.name)})</h3>")
        parts.append(f'<div class="wide">{html_grid(table, table.diff_rows())}</div>')
        parts += [f'<p class="note">{escape(line)}</p>' for line in table.diff_notes]
    parts.append("<h2>Per-class results</h2>")
    for dataset in order_datasets(selection.datasets):
        parts.append(f"<h3>{escape(table.dataset_label(dataset))}</h3>")
        chart = per_class_chart(selection, dataset)
        parts.append(
            _img(chart, f"per-class means on {table.dataset_label(dataset)}")
            if chart is not None
            else f'<p class="note">No {PER_CLASS_FILE} for this dataset.</p>'
        )
    parts.append("<h2>Qualitative figure</h2>")
    try:
        parts.append(_img(figure_for(selection, images_per_dataset), "ground truth and reconstructions"))
    except ReportError as exc:
        parts.append(f'<p class="note">{escape(str(exc))}</p>')
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_report(selection: Selection, table: PaperTable, root: Path, images_per_dataset: int = 2) -> Path:
    path = root / REPORT_FILE
    path.write_text(render(selection, table, images_per_dataset), encoding="utf-8")
    return path
