"""The paper table's grid in markdown, LaTeX and HTML, each format a small ``GridFormat``.

The three grids print the same cells: the model's label, its stats, then each metric per
dataset with the best bold and the second underlined, its bootstrap interval after it in
brackets when the job has one, and each metric's direction as an arrow. How a format writes a
mark, an interval, an arrow, a sign or special characters is its ``GridFormat``, so marking and
arrows are written once; only the grid's frame (a markdown rule line, booktabs rules and
``\\multicolumn`` groups, ``<thead>``) differs per format. Every label (model, dataset, metric)
goes through the format's escape, so a name with ``|`` or ``_`` cannot break a grid. The
unranked do-nothing row comes last, below a rule in LaTeX and HTML.
``markdown_table`` is the plain markdown grid underneath, for any table of already formatted cells.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape as html_escape

from vaes4rs.report.columns import STAT_COLUMNS, MetricColumn
from vaes4rs.report.table import Cell, PaperTable, Row

Rows = list[Row]  # PaperTable.rows() or .diff_rows()

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
    "|": r"\textbar{}",  # the default font encoding prints | < > as other glyphs
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def tex_escape(text: str) -> str:
    """Text for LaTeX: special characters escaped, "quoted" as ``quoted'' (straight quotes print as ”)."""
    escaped = "".join(_TEX_SPECIAL.get(char, char) for char in text)
    return re.sub(r'"([^"]*)"', r"``\1''", escaped)


def markdown_escape(text: str) -> str:
    """Text for a markdown table cell: a ``|`` would end the cell."""
    return text.replace("|", r"\|")


@dataclass(frozen=True)
class GridFormat:
    """How one format writes a mark, a metric's direction, a difference's sign and plain text."""

    best: str  # template with one {} for the cell's text
    second: str
    interval: str  # template with two {} for the interval's ends, after the (marked) value
    up: str  # after the label of a metric where higher is better
    down: str
    escape: Callable[[str], str]
    sign: str = "{}"  # template for the sign of a difference (LaTeX: math mode, a hyphen is no minus)

    def metric(self, column: MetricColumn) -> str:
        """A metric's label with its direction arrow."""
        return self.escape(column.label) + (self.up if column.higher_is_better else self.down)

    def cell(self, cell: Cell) -> str:
        text = self.escape(cell.text)
        if cell.signed and cell.value is not None:
            text = self.sign.format(text[0]) + text[1:]
        text = {"best": self.best, "second": self.second}.get(cell.mark, "{}").format(text)
        ends = cell.interval_text
        return text + self.interval.format(*map(self.escape, ends)) if ends else text

    def body(self, rows: Rows) -> list[list[str]]:
        """Each row's printed cells, its label first."""
        return [[self.escape(row.label), *map(self.cell, row.cells)] for row in rows]


MARKDOWN = GridFormat(
    best="**{}**", second="<u>{}</u>", interval=" [{}, {}]", up="↑", down="↓", escape=markdown_escape
)
LATEX = GridFormat(
    best=r"\textbf{{{}}}",
    second=r"\underline{{{}}}",
    interval=r"\,{{\scriptsize[{}, {}]}}",
    up=r"$\uparrow$",
    down=r"$\downarrow$",
    escape=tex_escape,
    sign="${}$",
)
HTML = GridFormat(
    best="<strong>{}</strong>",
    second="<u>{}</u>",
    interval=" <small>[{}, {}]</small>",
    up="↑",
    down="↓",
    escape=html_escape,
)
_LEADING = ("Model", *(s.label for s in STAT_COLUMNS))  # the header of the columns before the metrics


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown grid of cells printed as given: the header line, the rule line, one line per row.

    ``align`` has one letter per column: ``l`` left (markdown's default) or ``r`` right.
    """
    rules = {"l": "---", "r": "---:"}
    if len(align) != len(header) or not set(align) <= set(rules):
        raise ValueError(f"align needs one of {'/'.join(rules)} per column ({len(header)}), got {align!r}")
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(rules[letter] for letter in align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown_grid(table: PaperTable, rows: Rows) -> list[str]:
    """One header line: each metric column names its metric and its dataset."""
    header = [
        *_LEADING,
        *(f"{MARKDOWN.metric(c)} {MARKDOWN.escape(table.dataset_label(d))}" for c, d in table.columns),
    ]
    return markdown_table(header, "l" + "r" * (len(header) - 1), MARKDOWN.body(rows))


def latex_grid(table: PaperTable, rows: Rows) -> list[str]:
    """A booktabs ``tabular``: each metric spans its datasets' columns above the dataset names."""
    n_stats, n_sets = len(STAT_COLUMNS), len(table.datasets)
    metrics = table.metric_columns
    spec = "l" + "r" * n_stats + "".join(" " + "r" * n_sets for _ in metrics)
    groups = [rf"\multicolumn{{{n_sets}}}{{c}}{{{LATEX.metric(c)}}}" for c in metrics]
    first = 2 + n_stats
    rules = [
        rf"\cmidrule(lr){{{first + i * n_sets}-{first + (i + 1) * n_sets - 1}}}" for i in range(len(metrics))
    ]
    header = [LATEX.escape(text) for text in [*_LEADING, *(table.dataset_label(d) for _, d in table.columns)]]
    return [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join([""] * (1 + n_stats) + groups) + r" \\",
        " ".join(rules),
        " & ".join(header) + r" \\",
        r"\midrule",
        *(
            (r"\midrule " if row.reference else "") + " & ".join(cells) + r" \\"
            for row, cells in zip(rows, LATEX.body(rows))
        ),
        r"\bottomrule",
        r"\end{tabular}",
    ]


def html_grid(table: PaperTable, rows: Rows) -> str:
    """A ``<table>``: each metric spans its datasets' columns above the dataset names."""
    n_sets = len(table.datasets)
    groups = "".join(
        f'<th class="group" colspan="{n_sets}">{HTML.metric(c)}</th>' for c in table.metric_columns
    )
    header = "".join(
        f"<th>{html_escape(text)}</th>"
        for text in [*_LEADING, *(table.dataset_label(d) for _, d in table.columns)]
    )
    body = "".join(
        ('<tr class="reference">' if row.reference else "<tr>")
        + "".join(f"<td>{cell}</td>" for cell in cells)
        + "</tr>"
        for row, cells in zip(rows, HTML.body(rows))
    )
    head = f'<tr><th colspan="{len(_LEADING)}"></th>{groups}</tr><tr>{header}</tr>'
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
