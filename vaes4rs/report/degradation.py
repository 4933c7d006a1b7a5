"""Degradation study: each metric against the strength of a degradation, per model, with the
do-nothing baseline.

Reads every metrics.json under a results folder written by ``vaes4rs.run`` with
``dataset.degrade`` set: ``degradation`` (``vaes4rs.degrade.describe``: kind, strength, label),
``metrics`` (the VAE's reconstruction of the degraded image scored against the clean one under
``metric.reference=clean``) and ``baseline`` (the degraded input itself scored against the clean
one). A model helps where its curve lies above the dashed baseline (below for LPIPS and FID):
it then removed some of the degradation, which is the study's "implicit denoising" claim.

Writes ``degradation.png`` / ``.pdf`` (a row per dataset and kind, a panel per metric) and
``degradation.csv`` (one tidy row per file, curve and metric, values as the files hold them).
A file that cannot be read is skipped with a warning naming it, so one broken job does not
hide the rest; the warnings say which points are missing.

    python -m vaes4rs.report.degradation RESULTS_DIR [--out DIR] [--protocol NAME]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vaes4rs.files import RESULT_FILE
from vaes4rs.report.labels import dataset_label, model_label, order_datasets, order_models

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "lpips", "fid")
METRIC_TITLES = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "fid": "FID ↓"}
KIND_ORDER = ("noise", "blur", "haze", "downsample", "jpeg")
DESCENDING_KINDS = ("jpeg",)  # a lower quality is a stronger degradation: the x axis runs backwards
FIGURE_FILES = ("degradation.png", "degradation.pdf")
CSV_FILE = "degradation.csv"
CSV_COLUMNS = (
    "dataset",
    "protocol",
    "kind",
    "strength",
    "degradation",
    "series",
    "model",
    "metric",
    "value",
    "ci95_lo",
    "ci95_hi",
    "file",
)
BASELINE_STYLE = {"color": "black", "linestyle": "--", "marker": "x"}
BASELINE_AGREEMENT = 1e-6  # relative spread of one baseline point across models' files that is warned about
PANEL_INCHES = (3.0, 2.4)


class DegradationReportError(Exception):
    """Nothing to plot, or an ambiguous choice; the CLI prints it and exits with status 2."""


class MalformedResult(ValueError):
    """A metrics.json that is not what a degradation run writes."""


@dataclass(frozen=True)
class Point:
    """One metric of one curve at one strength, with its bootstrap interval when the file has one."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class DegradedRun:
    """What the report needs from one degradation job's metrics.json."""

    path: Path
    model: str
    dataset: str
    protocol: str
    kind: str
    strength: float
    label: str
    axis: str
    finished: str
    metrics: dict[str, Point]
    baseline_label: str
    baseline: dict[str, Point]

    @property
    def key(self) -> tuple[str, str, str, float, str]:
        return self.dataset, self.protocol, self.kind, self.strength, self.model


def _number(value: Any) -> float | None:
    """A JSON number as float (NaN and infinities kept); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _points(metrics: Any, where: str) -> dict[str, Point]:
    if not isinstance(metrics, dict):
        raise MalformedResult(f"{where} is not an object")
    points = {}
    for name in METRICS:
        if name not in metrics:
            continue
        value = _number(metrics[name])
        if value is None:
            raise MalformedResult(f"{where}.{name} is not a number: {metrics[name]!r}")
        if math.isfinite(value):
            points[name] = Point(
                value, _number(metrics.get(f"{name}_ci95_lo")), _number(metrics.get(f"{name}_ci95_hi"))
            )
    return points


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedResult(f'"{key}" is missing or not a string')
    return value


def read_run(path: Path) -> DegradedRun | None:
    """One job's degradation results; None for a job without a single-kind degradation (logged).

    Raises MalformedResult (with the reason) for a file that cannot be read as a result.
    """
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedResult(f"cannot read it: {exc}") from exc
    if not isinstance(payload, dict):
        raise MalformedResult("not a JSON object")
    degradation = payload.get("degradation")
    if degradation is None or (isinstance(degradation, dict) and degradation.get("active") is False):
        log.info("%s: no dataset.degrade, not part of the degradation study", path)
        return None
    if not isinstance(degradation, dict):
        raise MalformedResult('"degradation" is not an object')
    kind = _text(degradation, "kind")
    strength = _number(degradation.get("strength"))
    protocol = payload.get("protocol")
    protocol = protocol if isinstance(protocol, dict) else {}
    if strength is None or "+" in kind:
        log.warning("%s: %s combines degradations or has no strength; not plotted", path, kind)
        return None
    if protocol.get("reference") == "input":
        log.warning(
            "%s: scored against the degraded input (metric.reference=input), not the clean image; "
            "left out (rerun with metric.reference=clean)",
            path,
        )
        return None
    baseline = payload.get("baseline")
    if baseline is not None and not isinstance(baseline, dict):
        raise MalformedResult('"baseline" is not an object')
    baseline = baseline or {}
    return DegradedRun(
        path=path,
        model=_text(payload, "model"),
        dataset=_text(payload, "dataset"),
        protocol=str(protocol.get("name", "unknown")),
        kind=kind,
        strength=strength,
        label=str(degradation.get("label", f"{kind} {strength:g}")),
        axis=str(degradation.get("strength_axis") or kind),
        finished=str(payload.get("finished_at", "")),
        metrics=_points(payload.get("metrics"), '"metrics"'),
        baseline_label=str(baseline.get("label", "degraded input")),
        baseline=_points(baseline.get("metrics", {}), '"baseline.metrics"'),
    )


def collect(root: Path, protocol: str | None = None) -> list[DegradedRun]:
    """Every degradation run under ``root`` of one protocol; the newest of each point (dataset, kind,
    strength, model)."""
    if not root.is_dir():
        raise DegradationReportError(f"{root} is not a directory")
    runs: dict[tuple[str, str, str, float, str], DegradedRun] = {}
    for path in sorted(root.rglob(RESULT_FILE)):
        try:
            run = read_run(path)
        except MalformedResult as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if run is None:
            continue
        previous = runs.get(run.key)
        if previous is not None:
            newer, older = sorted((previous, run), key=lambda r: (r.finished, str(r.path)), reverse=True)
            log.warning(
                "%s and %s hold the same point; using the newer, %s", older.path, newer.path, newer.path
            )
            run = newer
        runs[run.key] = run
    protocols = sorted({run.protocol for run in runs.values()})
    if protocol is None and len(protocols) > 1:
        raise DegradationReportError(
            f"{root} holds degradation runs of several protocols ({', '.join(protocols)}); "
            "choose one with --protocol"
        )
    chosen = [run for run in runs.values() if protocol is None or run.protocol == protocol]
    if not chosen:
        raise DegradationReportError(
            "no degradation results (metrics.json with a single-kind dataset.degrade"
            + (f', protocol "{protocol}"' if protocol else "")
            + f") under {root}"
        )
    return chosen


def _kind_rank(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def _ordered(runs: list[DegradedRun]) -> list[DegradedRun]:
    dataset_rank = {name: i for i, name in enumerate(order_datasets({r.dataset for r in runs}))}
    model_rank = {name: i for i, name in enumerate(order_models({r.model for r in runs}))}
    return sorted(
        runs, key=lambda r: (dataset_rank[r.dataset], _kind_rank(r.kind), r.strength, model_rank[r.model])
    )


def _optional(value: float | None) -> str:
    return "" if value is None else repr(value)


def write_csv(runs: list[DegradedRun], path: Path) -> Path:
    """Tidy rows: one per file, series (the model, or the baseline from that model's file) and metric."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for run in _ordered(runs):
            for series, points in ((run.model, run.metrics), (run.baseline_label, run.baseline)):
                for name in METRICS:
                    if name in points:
                        point = points[name]
                        writer.writerow(
                            [
                                run.dataset,
                                run.protocol,
                                run.kind,
                                repr(run.strength),
                                run.label,
                                series,
                                run.model,
                                name,
                                repr(point.value),
                                _optional(point.low),
                                _optional(point.high),
                                str(run.path),
                            ]
                        )
    return path


def baseline_curve(runs: list[DegradedRun], metric: str) -> list[tuple[float, float]]:
    """(strength, value) of the degraded input; each model's file holds it, so they should agree.

    Files that disagree (a different subset of images, say) are warned about and averaged.
    """
    by_strength: dict[float, list[tuple[float, Path]]] = defaultdict(list)
    for run in runs:
        if metric in run.baseline:
            by_strength[run.strength].append((run.baseline[metric].value, run.path))
    curve = []
    for strength in sorted(by_strength):
        values = [value for value, _ in by_strength[strength]]
        mean = sum(values) / len(values)
        if max(values) - min(values) > BASELINE_AGREEMENT * max(1.0, abs(mean)):
            files = ", ".join(str(path) for _, path in by_strength[strength])
            log.warning(
                "baseline %s at %s %g differs between files (%g to %g): %s; plotting the mean",
                metric,
                runs[0].kind,
                strength,
                min(values),
                max(values),
                files,
            )
        curve.append((strength, mean))
    return curve


def build_figure(runs: list[DegradedRun]) -> Figure:
    """A row per (dataset, kind), a panel per metric present; a curve per model, the baseline dashed."""
    ordered = _ordered(runs)
    rows = list(dict.fromkeys((r.dataset, r.kind) for r in ordered))
    metrics = [m for m in METRICS if any(m in r.metrics or m in r.baseline for r in runs)]
    models = order_models({r.model for r in runs})
    colours = {model: f"C{i % 10}" for i, model in enumerate(models)}
    width, height = PANEL_INCHES
    fig = Figure(figsize=(width * len(metrics) + 1.5, height * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(metrics), squeeze=False)
    for (dataset, kind), row_axes in zip(rows, axes):
        group = [r for r in ordered if (r.dataset, r.kind) == (dataset, kind)]
        for metric, ax in zip(metrics, row_axes):
            for model in models:
                points = sorted(
                    (
                        (r.strength, r.metrics[metric])
                        for r in group
                        if r.model == model and metric in r.metrics
                    ),
                    key=lambda pair: pair[0],
                )
                if not points:
                    continue
                xs = [x for x, _ in points]
                ax.plot(xs, [p.value for _, p in points], marker="o", color=colours[model])
                if all(p.low is not None and p.high is not None for _, p in points):
                    ax.fill_between(
                        xs,
                        [p.low for _, p in points],
                        [p.high for _, p in points],
                        color=colours[model],
                        alpha=0.15,
                        lw=0,
                    )
            baseline = baseline_curve(group, metric)
            if baseline:
                ax.plot([x for x, _ in baseline], [y for _, y in baseline], **BASELINE_STYLE)
            ax.set_xlabel(group[0].axis, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if kind in DESCENDING_KINDS:
                ax.invert_xaxis()
        row_axes[0].set_ylabel(f"{dataset_label(dataset)}\n{kind}", fontsize=9)
    for metric, ax in zip(metrics, axes[0]):
        ax.set_title(METRIC_TITLES[metric], fontsize=9)
    handles = [Line2D([], [], marker="o", color=colours[m], label=model_label(m)) for m in models]
    baseline_label = next((r.baseline_label for r in runs if r.baseline), None)
    if baseline_label:
        handles.append(Line2D([], [], label=baseline_label, **BASELINE_STYLE))
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    protocols = ", ".join(sorted({r.protocol for r in runs}))
    fig.suptitle(
        f"Scored against the clean image ({protocols} protocol); shaded: 95 % bootstrap interval, "
        "where the runs have one",
        fontsize=9,
    )
    return fig


def write_report(runs: list[DegradedRun], out: Path) -> list[Path]:
    """degradation.png (150 dpi), degradation.pdf and degradation.csv in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    fig = build_figure(runs)
    paths = [out / name for name in FIGURE_FILES]
    for path in paths:
        fig.savefig(path, dpi=150)
    return [*paths, write_csv(runs, out / CSV_FILE)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vaes4rs.report.degradation",
        description="Metric against degradation strength, per model, with the degraded input as baseline.",
    )
    parser.add_argument("results", type=Path, help="folder searched recursively for metrics.json")
    parser.add_argument(
        "--out", type=Path, help="where to write degradation.{png,pdf,csv} (default: RESULTS)"
    )
    parser.add_argument("--protocol", help="protocol to report when the folder holds several (e.g. standard)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        runs = collect(args.results, args.protocol)
    except DegradationReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in write_report(runs, args.out or args.results):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
