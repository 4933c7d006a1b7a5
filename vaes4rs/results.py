"""Result files of one job: metrics.json, per_image.csv (written batch by batch), samples.png.

Reports read only these files (names in ``vaes4rs.files``), so their shape is the contract
between runs and tables.
"""

from __future__ import annotations

import csv
import hashlib
import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaes4rs import files
from vaes4rs.metrics.suite import MetricSuite

ID_COLUMNS = ("index", "image_id", "class", "height", "width")


class PerImageWriter:
    """Appends rows after every batch and flushes, so a crash loses at most one batch.

    ``rows`` already scored (a resumed job's, from its checkpoint) start the file; rows an
    interrupted run wrote after its last checkpoint are dropped and scored again.
    """

    def __init__(self, path: Path, columns: Sequence[str], rows: Sequence[list[Any]] = ()) -> None:
        self.path = path
        self.columns = list(columns)
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        self._rows: list[list[Any]] = [list(values) for values in rows]
        self._writer.writerows(self._rows)
        self._file.flush()

    @property
    def rows(self) -> list[list[Any]]:
        """Every row written so far, in the order written."""
        return self._rows

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            values = [row[column] for column in self.columns]
            self._writer.writerow(values)
            self._rows.append(values)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def rewrite_in_dataset_order(self) -> None:
        """Rows were appended as batches finished (batches group equal sizes); the final file is in
        dataset order, replaced atomically so a crash leaves one complete version or the other."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows(sorted(self._rows, key=lambda values: values[0]))
        tmp.replace(self.path)

    def table(self) -> dict[str, np.ndarray]:
        """All rows so far as columns, sorted into dataset order."""
        rows = sorted(self._rows, key=lambda values: values[0])
        columns = list(zip(*rows)) if rows else [[] for _ in self.columns]
        return {name: np.asarray(values) for name, values in zip(self.columns, columns)}


def software_versions() -> dict[str, str]:
    import diffusers
    import torchmetrics

    import vaes4rs

    versions = {
        "vaes4rs": vaes4rs.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torchmetrics": torchmetrics.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions["git_commit"] = commit or "unknown"
    return versions


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a metrics.json."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# zlib level of the sample PNGs (lossless at any level): 1 instead of Pillow's 6 wrote 8 samples
# and their grid 3.2-3.6x faster (3.03 -> 0.85 s at 600 px on our dev CPU), files 2-12 % larger.
SAMPLE_PNG_LEVEL = 1


def save_sample_grid(rows: Sequence[Sequence[torch.Tensor]], path: Path, row_labels: Sequence[str]) -> None:
    """Rows of images (originals on top, then e.g. degraded inputs, reconstructions), each labelled.

    Tiles are uint8 CHW; tiles of another size than the first are resized for display only.
    """
    from PIL import Image, ImageDraw
    from torchvision.transforms.v2.functional import resize
    from torchvision.utils import make_grid

    size = list(rows[0][0].shape[-2:])
    tiles = [t if list(t.shape[-2:]) == size else resize(t, size, antialias=True) for r in rows for t in r]
    grid = make_grid(torch.stack(tiles), nrow=len(rows[0]), padding=2, pad_value=255)
    body = Image.fromarray(grid.permute(1, 2, 0).numpy())
    margin = 8 + 7 * max(len(label) for label in row_labels)  # the default bitmap font: ~6 px a letter
    canvas = Image.new("RGB", (body.width + margin, body.height), "white")
    canvas.paste(body, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = size[0] + 2
    for row, label in enumerate(row_labels):
        draw.text((4, 2 + row * row_height + row_height // 2 - 6), label, fill="black")
    canvas.save(path, compress_level=SAMPLE_PNG_LEVEL)


def choose_sample_ids(image_ids: Sequence[str], n: int) -> list[str]:
    """``n`` ids spread over the set, chosen by a hash of the id alone.

    The choice depends only on the ids, so every model of a dataset shows the same images
    and a figure can put them side by side.
    """
    return sorted(image_ids, key=lambda image_id: hashlib.sha1(image_id.encode()).hexdigest())[:n]


def sample_key(image_id: str) -> str:
    """File name stem of a sample: ``airplane/airplane_001.jpg`` -> ``airplane__airplane_001.jpg``.

    The source suffix stays, so ``a.jpg`` and ``a.png`` of one class keep separate samples.
    """
    return Path(image_id).as_posix().replace("/", "__")


SAMPLE_KINDS = (files.SAMPLE_ORIGINALS_DIR, files.SAMPLE_RECONSTRUCTIONS_DIR, files.SAMPLE_INPUTS_DIR)


def save_samples(samples: dict[str, tuple[torch.Tensor, ...]], folder: Path) -> None:
    """Lossless PNGs of originals, reconstructions (and degraded inputs), uint8 CHW, one file each."""
    from PIL import Image

    for image_id, images in samples.items():
        for kind, image in zip(SAMPLE_KINDS, images):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            pixels = image.permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(
                folder / kind / f"{sample_key(image_id)}.png", compress_level=SAMPLE_PNG_LEVEL
            )


BASELINE_PREFIX = "input_"  # per-image and per-class columns of the degraded input scored as is


def baseline_table(table: dict[str, np.ndarray], baseline: MetricSuite) -> dict[str, np.ndarray]:
    """The per-image table with the degraded input's columns under the metrics' own names."""
    return {**table, **{column: table[BASELINE_PREFIX + column] for column in baseline.columns}}


def write_per_class(
    path: Path, table: dict[str, np.ndarray], suite: MetricSuite, baseline: MetricSuite | None = None
) -> None:
    """Each class scored as the protocol scores the whole set, with the image count.

    The same aggregation as metrics.json (pooled MSE per group of ``pool_size`` images for the
    paper protocol's PSNR, per-image means and bootstrap intervals for the standard one),
    applied to the class's rows in dataset order, so per-class and overall numbers agree in kind.
    With a ``baseline`` (the degraded input scored as is), its values follow as ``input_*`` columns.
    """
    labels = table["class"]
    summaries = []
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        rows = {k: v[mask] for k, v in table.items()}
        values = suite.summarise(rows)
        if baseline is not None:
            summary = baseline.summarise(baseline_table(rows, baseline))
            values.update({BASELINE_PREFIX + key: value for key, value in summary.items()})
        summaries.append((label, int(mask.sum()), values))
    columns = list(dict.fromkeys(key for _, _, values in summaries for key in values))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "n_images", *columns])
        for label, n_images, values in summaries:
            writer.writerow([label, n_images, *(values.get(column, "") for column in columns)])
