"""``python -m vaes4rs.storage.report --results <root>`` (``make rd``): the rate-distortion report.

Reads the ``rd.csv`` of every ``python -m vaes4rs.rd`` job under ``<root>`` (or of the job
``<root>`` is), keeps codec rows once per image set, and writes into ``<root>``:

- ``rd.csv``: the merged rows (a job directory keeps its own);
- ``bd_rate.csv``: for every VAE storage option, metric and codec, the codec's rate at the
  option's quality and the BD-rate (``vaes4rs.storage.bdrate``);
- ``rd_table.md``: the VAE rows, the BD-rates against JPEG, WebP and AVIF, and the codec rows;
- ``rd.png`` / ``rd.pdf``: a row per image set, a panel per metric; codecs as curves, storage
  options as points, the VAE's direct reconstruction as a dashed ceiling, the source files'
  own rate as a dotted line.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vaes4rs.storage.bdrate import point_bd_rate
from vaes4rs.storage.codecs import CODECS

log = logging.getLogger(__name__)

RD_FILE = "rd.csv"
BD_FILE = "bd_rate.csv"
TABLE_FILE = "rd_table.md"
FIGURE_NAME = "rd"
JOB_FILE = "rd.json"  # marks a job directory
DIRECT = "direct"
KEY_COLUMNS = (
    "dataset",
    "image_set",
    "n_images",
    "pixels",
    "method",
    "model",
    "storage",
    "param_name",
    "param",
    "bytes",
    "bpp",
)
TEXT_COLUMNS = ("dataset", "image_set", "method", "model", "storage", "param_name")
# Quality columns in the order they are shown; lower is better for the distances.
METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "lpips_vgg", "dists")
LOWER_IS_BETTER = ("lpips", "lpips_vgg", "dists")
METRIC_LABELS = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "ms_ssim": "MS-SSIM",
    "lpips": "LPIPS (lower is better)",
    "lpips_vgg": "LPIPS-VGG (lower is better)",
    "dists": "DISTS (lower is better)",
}
DIRECT_COLUMNS = ("psnr_vs_direct", "max_abs_vs_direct")
ANCHORS = ("jpeg", "webp", "avif")  # the codecs rd_table.md compares against


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {key for row in rows for key in row}
    metrics = [m for m in METRICS if m in present]
    others = sorted(present - set(KEY_COLUMNS) - set(METRICS) - set(DIRECT_COLUMNS))
    return [*KEY_COLUMNS, *metrics, *others, *[c for c in DIRECT_COLUMNS if c in present]]


def write_rows(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV (replaced atomically), rd.csv's columns unless given; absent values are empty cells."""
    columns = list(columns or _columns(rows))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _value(column: str, text: str) -> Any:
    if column in TEXT_COLUMNS or text == "":
        return text
    return float(text)


def read_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Rows of rd.csv files, numbers as floats, empty cells as ""."""
    rows = []
    for path in paths:
        with path.open(newline="") as handle:
            rows.extend({k: _value(k, v) for k, v in row.items()} for row in csv.DictReader(handle))
    return rows


def merge(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per image set and codec setting, source, or model and storage option (the first seen)."""
    kept: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (
            row["image_set"],
            row["method"],
            row.get("model", ""),
            row.get("storage", ""),
            row.get("param", ""),
        )
        if key in kept and row["method"] == "vae":
            log.warning(
                "%s %s on %s appears in more than one job; the first is kept", *key[2:4], row["dataset"]
            )
        kept.setdefault(key, row)
    return list(kept.values())


def _finite(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def bd_rates(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every stored VAE point against every codec measured on its image set, per metric."""
    out = []
    for point in rows:
        if point["method"] != "vae" or point["storage"] == DIRECT or not _finite(point.get("bpp")):
            continue
        same_set = [r for r in rows if r["image_set"] == point["image_set"]]
        for metric in METRICS:
            if not _finite(point.get(metric)):
                continue
            for codec in CODECS:
                curve = [r for r in same_set if r["method"] == codec and _finite(r.get(metric))]
                if not curve:
                    continue
                higher = metric not in LOWER_IS_BETTER
                values = [r[metric] for r in curve]
                rate, bd = point_bd_rate(
                    point["bpp"], point[metric], [r["bpp"] for r in curve], values, higher
                )
                note = ""
                if rate is None:
                    better = (point[metric] > max(values)) if higher else (point[metric] < min(values))
                    note = (
                        "better than every measured setting"
                        if better
                        else "worse than every measured setting"
                    )
                out.append(
                    {
                        "dataset": point["dataset"],
                        "image_set": point["image_set"],
                        "model": point["model"],
                        "storage": point["storage"],
                        "bpp": point["bpp"],
                        "metric": metric,
                        "value": point[metric],
                        "codec": codec,
                        "codec_bpp": "" if rate is None else rate,
                        "bd_rate_pct": "" if bd is None else bd,
                        "note": note,
                    }
                )
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    if value == "" or value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _md(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def table(rows: Sequence[dict[str, Any]], bd: Sequence[dict[str, Any]]) -> str:
    """rd_table.md: per image set, the VAE rows, their BD-rates, and the codec rows."""
    lines = ["# Rate-distortion", ""]
    for image_set in dict.fromkeys(r["image_set"] for r in rows):
        group = [r for r in rows if r["image_set"] == image_set]
        metrics = [m for m in METRICS if any(_finite(r.get(m)) for r in group)]
        first = group[0]
        lines += [f"## {first['dataset']} ({int(first['n_images'])} images, set {image_set})", ""]
        lines += [f"Source files: {_fmt(r['bpp'], 3)} bpp." for r in group if r["method"] == "source"] + [""]
        vae = [r for r in group if r["method"] == "vae"]
        header = ["model", "storage", "bpp", *metrics, "PSNR vs direct (dB)", "max abs vs direct"]
        lines += _md(
            header,
            (
                [r["model"], r["storage"], _fmt(r.get("bpp"), 3)]
                + [_fmt(r.get(m)) for m in metrics]
                + [_fmt(r.get("psnr_vs_direct"), 2), _fmt(r.get("max_abs_vs_direct"), 5)]
                for r in vae
            ),
        )
        anchors = [c for c in ANCHORS if any(r["method"] == c for r in group)]
        points = [b for b in bd if b["image_set"] == image_set and b["codec"] in anchors]
        if points:
            lines += ["", "BD-rate at equal quality, % (negative: the stored latents need fewer bits):", ""]
            keys = list(dict.fromkeys((b["model"], b["storage"], b["metric"]) for b in points))
            lookup = {(b["model"], b["storage"], b["metric"], b["codec"]): b for b in points}
            lines += _md(
                ["model", "storage", "metric", *[f"vs {CODECS[c].label}" for c in anchors]],
                ([*key] + [_bd_cell(lookup.get((*key, c))) for c in anchors] for key in keys),
            )
        codec_rows = [r for r in group if r["method"] in CODECS]
        lines += ["", "Codecs:", ""]
        lines += _md(
            ["codec", "parameter", "bpp", *metrics],
            (
                [CODECS[r["method"]].label, f"{r['param_name']} {_fmt(r['param'], 0)}", _fmt(r["bpp"], 3)]
                + [_fmt(r.get(m)) for m in metrics]
                for r in codec_rows
            ),
        )
        lines.append("")
    return "\n".join(lines)


def _bd_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    if entry["bd_rate_pct"] == "":
        return f"n/a ({entry['note']})"
    return f"{entry['bd_rate_pct']:+.1f} ({entry['codec_bpp']:.2f} bpp)"


def figure(rows: Sequence[dict[str, Any]], out_base: Path) -> None:
    """rd.png and rd.pdf: a row per image set, a panel per metric with any value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    sets = list(dict.fromkeys(r["image_set"] for r in rows))
    metrics = [m for m in METRICS if any(_finite(r.get(m)) for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows if r["method"] == "vae"))
    storages = list(
        dict.fromkeys(r["storage"] for r in rows if r["method"] == "vae" and r["storage"] != DIRECT)
    )
    markers = "osD^vP*X<>"
    codec_colours = dict(zip(CODECS, plt.get_cmap("tab10").colors))
    model_colours = {m: plt.get_cmap("Dark2").colors[i % 8] for i, m in enumerate(models)}
    fig, axes = plt.subplots(
        len(sets), max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.6 * len(sets)), squeeze=False
    )
    for row_axes, image_set in zip(axes, sets):
        group = [r for r in rows if r["image_set"] == image_set]
        for ax, metric in zip(row_axes, metrics):
            if not any(_finite(r.get(metric)) for r in group):
                ax.set_axis_off()
                ax.text(
                    0.5, 0.5, f"{METRIC_LABELS[metric]}: not measured", ha="center", transform=ax.transAxes
                )
                continue
            for codec in CODECS:
                curve = sorted(
                    (r for r in group if r["method"] == codec and _finite(r.get(metric))),
                    key=lambda r: r["bpp"],
                )
                if curve:
                    ax.plot(
                        [r["bpp"] for r in curve],
                        [r[metric] for r in curve],
                        "-",
                        marker=".",
                        color=codec_colours[codec],
                        label=CODECS[codec].label,
                    )
            for r in group:
                if r["method"] == "source":
                    ax.axvline(r["bpp"], color="grey", linestyle=":", label="source files")
                elif r["method"] == "vae" and _finite(r.get(metric)):
                    colour = model_colours[r["model"]]
                    if r["storage"] == DIRECT:
                        ax.axhline(
                            r[metric],
                            color=colour,
                            linestyle="--",
                            linewidth=1,
                            label=f"{r['model']} direct (ceiling)",
                        )
                    elif _finite(r.get("bpp")):
                        ax.plot(
                            r["bpp"],
                            r[metric],
                            linestyle="none",
                            color=colour,
                            marker=markers[storages.index(r["storage"]) % len(markers)],
                            label=f"{r['model']} {r['storage']}",
                        )
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("bits per pixel")
            ax.set_ylabel(METRIC_LABELS[metric])
            ax.set_title(f"{group[0]['dataset']} ({int(group[0]['n_images'])} images)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(len(handles), 5),
        fontsize=8,
        bbox_to_anchor=(0.5, 0.0),
    )
    legend_inches = 0.3 + 0.22 * math.ceil(len(handles) / 5)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    for suffix in (".png", ".pdf"):
        fig.savefig(out_base.with_suffix(suffix), dpi=150)
    plt.close(fig)


def write_report(out_dir: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """bd_rate.csv, rd_table.md, rd.png and rd.pdf for ``rows``, into ``out_dir``; returns the BD-rates."""
    bd = bd_rates(rows)
    if bd:
        write_rows(out_dir / BD_FILE, bd, list(bd[0]))
    (out_dir / TABLE_FILE).write_text(table(rows, bd))
    figure(rows, out_dir / FIGURE_NAME)
    return bd


def collect(root: Path) -> list[Path]:
    """The rd.csv files a report over ``root`` reads: the job's own, or every job's below it."""
    if (root / JOB_FILE).is_file():
        return [root / RD_FILE]
    return sorted(p for p in root.rglob(RD_FILE) if p.parent != root and (p.parent / JOB_FILE).is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vaes4rs.storage.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--results", type=Path, required=True, help="a rd job directory or a folder of them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = collect(args.results)
    if not found:
        parser.error(f"no rd job (rd.csv beside rd.json) in or under {args.results}")
    rows = merge(read_rows(found))
    if not (args.results / JOB_FILE).is_file():
        write_rows(args.results / RD_FILE, rows)
    write_report(args.results, rows)
    log.info(
        "%d rd job(s) -> %s",
        len(found),
        ", ".join(str(args.results / n) for n in (TABLE_FILE, BD_FILE, "rd.png")),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
