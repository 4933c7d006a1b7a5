"""``python -m vaes4rs.report``: paper table, figure and HTML report of a results root.

A report is not a Hydra job (it runs no model and has no config to compose), so plain
argparse; errors the user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vaes4rs.report import collect


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vaes4rs.report",
        description="Paper table (md/tex/csv), qualitative figure (png/pdf) and report.html "
        "of every result under a results folder, written into that folder.",
    )
    parser.add_argument(
        "command",
        choices=("table", "figure", "html", "all"),
        help="what to write: paper_table.{md,tex,csv} | figure.{png,pdf} | report.html | all of them",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("outputs"),
        help="folder searched recursively for metrics.json; outputs are written here (default: outputs)",
    )
    parser.add_argument(
        "--protocol", help="protocol to report when the folder holds several (e.g. paper, standard)"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="published table to subtract, e.g. experiments/paper/published.csv (table, html, all)",
    )
    parser.add_argument(
        "--images-per-dataset",
        type=int,
        default=2,
        help="images per dataset in the figure, chosen by id (default: 2)",
    )
    parser.add_argument(
        "--keys",
        help="comma-separated sample keys to show in the figure instead (e.g. airplane__airplane_001)",
    )
    args = parser.parse_args(argv)
    if args.images_per_dataset < 1:
        parser.error("--images-per-dataset must be at least 1")
    return args


def run(args: argparse.Namespace) -> list[Path]:
    """Write what ``args.command`` asks for; returns the written paths."""
    from vaes4rs.report import figure, html_report, published, table, table_files

    selection = collect.select(args.results, args.protocol)
    published_numbers = published.read_published(args.compare) if args.compare else None
    paper_table = table.build_table(selection, published_numbers)
    keys = [key.strip() for key in args.keys.split(",") if key.strip()] if args.keys else None
    written: list[Path] = []
    if args.command in ("table", "all"):
        written += table_files.write_table(paper_table, args.results)
    if args.command in ("figure", "all"):
        try:
            written += figure.write_figure(
                figure.figure_for(selection, args.images_per_dataset, keys), args.results
            )
        except collect.ReportError as exc:
            if args.command == "figure":
                raise
            print(f"figure skipped: {exc}", file=sys.stderr)
    if args.command in ("html", "all"):
        written.append(
            html_report.write_report(selection, paper_table, args.results, args.images_per_dataset)
        )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = run(args)
    except collect.ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
