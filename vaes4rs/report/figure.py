"""The study's qualitative figure from a sweep's saved samples.

For each chosen image three rows: the full image (ground truth, then every model in table
order, the zoom window outlined), a nearest-neighbour zoom of that window, and the absolute
error of each reconstruction on one colour scale shared by the whole figure, so tiles can
be compared across models and images. Images are chosen by id from the keys every model of
a dataset saved (deterministic, spread over the sorted ids so several classes show up), and
the zoom window is the ground truth's most detailed region, which does not depend on any
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from vaes4rs.files import SAMPLE_ORIGINALS_DIR, SAMPLE_RECONSTRUCTIONS_DIR, SAMPLES_DIR
from vaes4rs.report.collect import ReportError, Selection
from vaes4rs.report.labels import model_label, order_datasets, order_models

FIGURE_FILES = ("figure.png", "figure.pdf")
ORIGINALS = SAMPLE_ORIGINALS_DIR
RECONSTRUCTIONS = SAMPLE_RECONSTRUCTIONS_DIR
ZOOM_FRACTION = 4  # the zoom window is 1/4 of the image side
TILE_INCHES = 1.6
ERROR_CMAP = "inferno"


@dataclass
class FigureImage:
    """One row group: a sample's ground truth and each model's reconstruction (None: not saved)."""

    dataset: str
    label: str  # Selection.dataset_label, as the table prints the dataset
    key: str
    original: np.ndarray
    reconstructions: dict[str, np.ndarray | None]


def saved_keys(job_dir: Path) -> set[str]:
    """Keys with both an original and a reconstruction saved."""
    originals = {p.stem for p in (job_dir / SAMPLES_DIR / ORIGINALS).glob("*.png")}
    return {k for k in originals if (job_dir / SAMPLES_DIR / RECONSTRUCTIONS / f"{k}.png").is_file()}


def choose_keys(keys: set[str], n: int) -> list[str]:
    """``n`` keys spread evenly over the sorted ids (centred strata), the same on every run."""
    ordered = sorted(keys)
    if n >= len(ordered):
        return ordered
    return [ordered[(2 * i + 1) * len(ordered) // (2 * n)] for i in range(n)]


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def gather(selection: Selection, images_per_dataset: int, keys: list[str] | None = None) -> list[FigureImage]:
    """The figure's images, grouped by dataset in table order; ``keys`` overrides the choice."""
    models = order_models(selection.models)
    chosen: list[FigureImage] = []
    for dataset in order_datasets(selection.datasets):
        jobs = {m: selection.get(m, dataset) for m in models}
        saved = {m: saved_keys(job.path) for m, job in jobs.items() if job is not None}
        saved = {m: k for m, k in saved.items() if k}
        if not saved:
            continue
        common = set.intersection(*saved.values())
        picked = [k for k in keys if k in common] if keys else choose_keys(common, images_per_dataset)
        for key in picked:
            first = next(iter(saved))
            original = _load(jobs[first].path / SAMPLES_DIR / ORIGINALS / f"{key}.png")
            recons = {
                m: _load(jobs[m].path / SAMPLES_DIR / RECONSTRUCTIONS / f"{key}.png") if m in saved else None
                for m in models
            }
            chosen.append(FigureImage(dataset, selection.dataset_label(dataset), key, original, recons))
    if not chosen:
        raise ReportError(
            f"no saved samples ({SAMPLES_DIR}/{ORIGINALS} and {SAMPLES_DIR}/{RECONSTRUCTIONS}) "
            f'under {selection.root} for protocol "{selection.protocol}"'
            + (f" with keys {', '.join(keys)}" if keys else "")
        )
    return chosen


def zoom_window(image: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side) of the square with the most gradient energy; first one on ties."""
    gray = image.astype(np.float64).mean(axis=2)
    energy = np.zeros_like(gray)
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    height, width = gray.shape
    side = max(min(height, width) // ZOOM_FRACTION, 1)
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(side // 4, 1)
    tops = np.arange(0, height - side + 1, step)
    lefts = np.arange(0, width - side + 1, step)
    t, left = np.meshgrid(tops, lefts, indexing="ij")
    sums = (
        integral[t + side, left + side]
        - integral[t, left + side]
        - integral[t + side, left]
        + integral[t, left]
    )
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(tops[i]), int(lefts[j]), side


def abs_error(recon: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Mean over channels of |reconstruction - ground truth| in 8-bit levels."""
    return np.abs(recon.astype(np.float64) - original.astype(np.float64)).mean(axis=2)


def _blank(ax, text: str = "") -> None:
    ax.set_axis_off()
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)


def _show(ax, image: np.ndarray, **kwargs) -> None:
    ax.imshow(image, interpolation="none", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def build_figure(images: list[FigureImage], models: list[str]) -> Figure:
    """Rows = images (full, zoom, |error|), columns = ground truth then each model."""
    errors = [
        abs_error(r, img.original) for img in images for r in img.reconstructions.values() if r is not None
    ]
    vmax = max(float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99.5)), 1.0)
    n_cols, n_rows = 1 + len(models), 3 * len(images)
    fig = Figure(figsize=(TILE_INCHES * n_cols + 0.8, TILE_INCHES * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    mappable = None
    for i, img in enumerate(images):
        top, left, side = zoom_window(img.original)
        full, zoom, error = axes[3 * i], axes[3 * i + 1], axes[3 * i + 2]
        tiles = [("Ground truth", img.original)] + [(model_label(m), img.reconstructions[m]) for m in models]
        for col, (title, tile) in enumerate(tiles):
            if i == 0:
                full[col].set_title(title, fontsize=9)
            if tile is None:
                for ax in (full[col], zoom[col], error[col]):
                    _blank(ax, "N/A")
                continue
            _show(full[col], tile)
            full[col].add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="yellow", lw=1))
            _show(zoom[col], tile[top : top + side, left : left + side])
            if col == 0:
                _blank(error[col], f"|error|\n0 to {vmax:.0f}\n8-bit levels")
            else:
                mappable = error[col].imshow(
                    abs_error(tile, img.original),
                    cmap=ERROR_CMAP,
                    vmin=0.0,
                    vmax=vmax,
                    interpolation="none",
                )
                error[col].set_xticks([])
                error[col].set_yticks([])
        full[0].set_ylabel(f"{img.label}\n{img.key.rsplit('__', 1)[-1]}", fontsize=8)
        zoom[0].set_ylabel(f"zoom x{ZOOM_FRACTION}", fontsize=8)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes[:, -1], shrink=0.3, label="|error| (8-bit levels)")
    return fig


def figure_for(selection: Selection, images_per_dataset: int = 2, keys: list[str] | None = None) -> Figure:
    return build_figure(gather(selection, images_per_dataset, keys), order_models(selection.models))


def write_figure(fig: Figure, root: Path) -> list[Path]:
    """figure.png (150 dpi) and figure.pdf in ``root``."""
    paths = [root / name for name in FIGURE_FILES]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths
