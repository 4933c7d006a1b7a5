"""Whole scenes (``dataset=scene dataset.path=<GeoTIFF>``): tiles in, one seamless mosaic out.

A scene is read in windows, never whole: tiles of ``dataset.tile`` pixels overlapping by at
least ``dataset.overlap`` (evenly spaced, the last one flush with the scene's edge) go through
the VAE ``run.batch_size`` at a time, and each reconstruction is added into two on-disk
accumulators (``numpy.memmap``, 28 bytes per scene pixel, deleted at the end):

- blended: every tile weighted by a separable raised-cosine window that rises over its overlap
  with the previous tile and falls over its overlap with the next (``sin^2`` against ``cos^2``:
  two tiles' weights sum to one), divided by the sum of weights;
- hard: each pixel from one tile, the cut in the middle of every overlap.

A last pass in strips of rows scores both mosaics against the 8-bit input, writes the chosen
one (``dataset.blend``) as ``reconstruction.tif`` and its ``abs_error.tif``, with the source's
CRS and transform (a source without them gives plain TIFFs, said in metrics.json and the log).
Process memory is a tile batch plus a strip of about ``STRIP_PIXELS`` pixels, whatever the scene.

Nodata (the source's nodata value, mask or alpha band, non-finite values) is out of every
number: stretch limits, MSE, MAE, source-unit RMSE, seams; SSIM is averaged over valid pixels
whose whole 11x11 window is valid. LPIPS and FID cannot leave pixels out and are not computed.

The seam effect: absolute error in a band of ``2 * SEAM_HALF_WIDTH`` pixels along the hard
cut lines against the rest, and the jump across cut lines (|difference of neighbours| in the
reconstruction minus in the input) against the same jump between any other neighbours, for
both mosaics; and each tile's own error near its edge against its interior.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vaes4rs import raster, results
from vaes4rs.config import RunConfig
from vaes4rs.data import RasterReading, band_image_id
from vaes4rs.device import resolve_dtype
from vaes4rs.errors import InputError
from vaes4rs.metrics import pixel
from vaes4rs.models.adapter import NOISE_RULE, VAEAdapter
from vaes4rs.models.cost import model_stats
from vaes4rs.models.zoo import adapter_for, load_vae
from vaes4rs.preflight import PreflightError, device_and_model_problems, min_image_side

log = logging.getLogger(__name__)

SEAM_HALF_WIDTH = 4  # pixels each side of a cut line counted as "along the seam"
TILE_EDGE = 8  # pixels from a tile's edge counted as its edge (one latent cell of an f8 VAE)
STRIP_PIXELS = 1 << 20  # pixels per strip of the stretch and scoring passes (at least 16 rows)
TMP_DIR = ".scene_accumulators"
PER_TILE_FILE = "per_tile.csv"
TILE_COLUMNS = (
    "index",
    "tile_id",
    "bands",
    "row",
    "col",
    "y",
    "x",
    "height",
    "width",
    "valid_fraction",
    "psnr",
    "ssim",
    "mae",
    "edge_mae",
    "interior_mae",
)


class SceneError(InputError):
    """A scene that cannot be evaluated as configured (size, bands, an empty footprint)."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts covering ``length``, neighbours overlapping by at least ``overlap``."""
    if length == tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(v) for v in np.linspace(0, length - tile, count)]


def axis_weights(starts: Sequence[int], tile: int, length: int, blend: bool) -> list[np.ndarray]:
    """One 1-D weight per tile along an axis: smooth ramps over its overlaps, or its own cut (0/1)."""
    out = []
    for k, start in enumerate(starts):
        weight = np.ones(tile, dtype=np.float64)
        t = np.arange(tile) + 0.5
        if k > 0:
            before = starts[k - 1] + tile - start  # overlap with the previous tile
            if blend:
                inside = t < before
                weight[inside] *= np.sin(np.pi / 2 * t[inside] / before) ** 2
            else:
                weight[: cut_between(starts[k - 1], start, tile) - start] = 0
        if k + 1 < len(starts):
            after = start + tile - starts[k + 1]  # overlap with the next tile
            if blend:
                inside = t > tile - after
                weight[inside] *= np.sin(np.pi / 2 * (tile - t[inside]) / after) ** 2
            else:
                weight[cut_between(start, starts[k + 1], tile) - start :] = 0
        out.append(weight)
    return out


def cut_between(first: int, second: int, tile: int) -> int:
    """The hard mosaic's cut between two neighbouring tiles: the middle of their overlap."""
    return (second + first + tile) // 2


@dataclass(frozen=True)
class Tile:
    index: int
    row: int
    col: int
    y: int
    x: int


@dataclass
class Grid:
    """The tiles of a scene and each tile's weights in the blended and the hard mosaic."""

    height: int
    width: int
    tile: int
    overlap: int
    ys: list[int] = field(init=False)
    xs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.ys = tile_starts(self.height, self.tile, self.overlap)
        self.xs = tile_starts(self.width, self.tile, self.overlap)
        self._weights = {
            blend: (
                axis_weights(self.ys, self.tile, self.height, blend),
                axis_weights(self.xs, self.tile, self.width, blend),
            )
            for blend in (True, False)
        }

    @property
    def tiles(self) -> list[Tile]:
        """Row by row, as the accumulators are filled."""
        return [
            Tile(r * len(self.xs) + c, r, c, y, x)
            for r, y in enumerate(self.ys)
            for c, x in enumerate(self.xs)
        ]

    def weight(self, tile: Tile, blend: bool) -> np.ndarray:
        wy, wx = self._weights[blend]
        return np.outer(wy[tile.row], wx[tile.col]).astype(np.float32)

    def cuts(self, starts: Sequence[int]) -> list[int]:
        return [cut_between(a, b, self.tile) for a, b in zip(starts, starts[1:])]

    def near_cuts(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns within SEAM_HALF_WIDTH of a hard cut line (the seam band)."""
        bands = []
        for starts, length in ((self.ys, self.height), (self.xs, self.width)):
            near = np.zeros(length, dtype=bool)
            for cut in self.cuts(starts):
                near[max(0, cut - SEAM_HALF_WIDTH) : cut + SEAM_HALF_WIDTH] = True
            bands.append(near)
        return bands[0], bands[1]


@dataclass
class Sums:
    """Running sums of masked errors over a mosaic (per channel), its seams and jumps."""

    channels: int
    sse: np.ndarray = field(init=False)  # squared error on the [0, 1] scale
    abs: np.ndarray = field(init=False)  # absolute error in 8-bit units
    ssim: np.ndarray = field(init=False)
    n: int = 0
    n_ssim: int = 0
    sse_source: np.ndarray = field(init=False)  # squared error in source units
    seam: list[float] = field(default_factory=lambda: [0.0, 0.0])  # (abs sum, pixels) along cuts
    interior: list[float] = field(default_factory=lambda: [0.0, 0.0])
    cut_jump: list[float] = field(default_factory=lambda: [0.0, 0.0])  # (excess sum, pairs) across cuts
    other_jump: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def __post_init__(self) -> None:
        self.sse, self.abs, self.ssim, self.sse_source = (np.zeros(self.channels) for _ in range(4))

    def scores(self, bands: Sequence[int]) -> dict[str, Any]:
        """Overall and per-band PSNR (pooled MSE), SSIM, MAE, source-unit RMSE."""
        mse = self.sse / max(self.n, 1)
        per_band = {
            f"b{band}": {
                "psnr": float(pixel.psnr_from_mse(mse[i], 1.0)),
                "ssim": float(self.ssim[i] / max(self.n_ssim, 1)),
                "mae": float(self.abs[i] / max(self.n, 1)),
                "rmse_source": float(math.sqrt(self.sse_source[i] / max(self.n, 1))),
            }
            for i, band in enumerate(bands)
        }
        overall = {
            "psnr": float(pixel.psnr_from_mse(mse.mean(), 1.0)),
            "ssim": float(self.ssim.mean() / max(self.n_ssim, 1)),
            "mae": float(self.abs.mean() / max(self.n, 1)),
        }
        return {"overall": overall, "per_band": per_band}

    def seams(self) -> dict[str, float]:
        seam_mae = self.seam[0] / max(self.seam[1], 1)
        interior_mae = self.interior[0] / max(self.interior[1], 1)
        cut_jump = self.cut_jump[0] / max(self.cut_jump[1], 1)
        other_jump = self.other_jump[0] / max(self.other_jump[1], 1)
        return {
            "seam_mae": seam_mae,
            "interior_mae": interior_mae,
            "seam_to_interior": seam_mae / interior_mae if interior_mae else float("nan"),
            "cut_jump": cut_jump,
            "other_jump": other_jump,
            "jump_excess": cut_jump - other_jump,
        }


def _erode(valid: torch.Tensor, radius: int) -> torch.Tensor:
    """Valid pixels whose (2 radius + 1)^2 window is all valid (outside the array counts as valid)."""
    invalid = (~valid).float()[None, None]
    return F.max_pool2d(invalid, 2 * radius + 1, stride=1, padding=radius)[0, 0] == 0


def _protocol_pair(
    cfg: RunConfig, recon: torch.Tensor, original: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The protocol's casts (as MetricSuite.prepare): quantised reconstruction, truth in the model dtype."""
    pred = pixel.quantize(recon.float(), cfg.metric.quantize)
    target = original.float()
    if cfg.metric.gt_dtype == "model":
        target = target.to(dtype).float()
    return pred, target


def _masked(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, value_range: str, core: slice = slice(None)
) -> dict[str, Any]:
    """Masked per-channel sums of (C, H, W) [-1, 1] images over the rows ``core`` (the rest: SSIM's halo)."""
    data_range = pixel.DATA_RANGE[value_range]
    smap = pixel.ssim_map(
        pixel.to_value_range(pred[None], value_range),
        pixel.to_value_range(target[None], value_range),
        data_range,
    )[0][:, core]
    inner = _erode(valid, pixel.SSIM_RADIUS)[core]
    valid, pred, target = valid[core], pred[:, core].double(), target[:, core].double()
    diff = (pred - target) / 2  # on the [0, 1] scale
    mask = valid[None].double()
    return {
        "sse": (diff.pow(2) * mask).sum((1, 2)).numpy(),
        "abs": (diff.abs() * 255 * mask).sum((1, 2)).numpy(),
        "n": int(valid.sum()),
        "ssim": (smap * inner[None]).sum((1, 2)).numpy(),
        "n_ssim": int(inner.sum()),
        "abs_map": (diff.abs() * 255).mean(0),  # (h, w), 8-bit units
    }


def _jumps(
    recon: np.ndarray, original: np.ndarray, valid: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """|neighbour difference| of reconstruction minus of input (8-bit units) along ``axis``; pair validity."""
    d_recon = np.abs(np.diff(recon, axis=axis + 1)).mean(0)
    d_orig = np.abs(np.diff(original, axis=axis + 1)).mean(0)
    pair = valid[:-1] & valid[1:] if axis == 0 else valid[:, :-1] & valid[:, 1:]
    return (d_recon - d_orig) * 255, pair


@dataclass
class SceneSource:
    """The opened scene: size, bands, georeferencing (what the pre-flight establishes)."""

    path: Path
    height: int
    width: int
    count: int
    dtype: str
    groups: list[list[int]]  # one pass per group: the RGB triplet / gray band, or each band alone
    georeferenced: bool
    crs: str | None
    transform: list[float] | None
    nodata: float | None


def _open_scene(cfg: RunConfig, reading: RasterReading, min_side: int) -> SceneSource:
    path = Path(str(cfg.dataset.path)).expanduser()
    if not path.is_file():
        raise SceneError(f"dataset.path={path} is not a file")
    tile = cfg.dataset.tile
    with raster.open_raster(path) as src:
        bands = reading.file_bands(src.count, str(path))
        if src.height < tile or src.width < tile:
            raise SceneError(
                f"scene {path} is {src.height}x{src.width} pixels, smaller than dataset.tile={tile}: set "
                f"dataset.tile to at most {min(src.height, src.width)} (dataset.overlap below half of it), "
                "or evaluate it whole with dataset=folder"
            )
        if tile < min_side:
            raise SceneError(
                f"dataset.tile={tile} is below the smallest side the model and metrics take ({min_side})"
            )
        if reading.stretch == "none":
            raster.fixed_stretch(str(src.dtypes[0]), bands, str(path))  # a type with a fixed 8-bit range
        geo = raster.georeferenced(src)
        return SceneSource(
            path=path,
            height=src.height,
            width=src.width,
            count=src.count,
            dtype=str(src.dtypes[0]),
            groups=[[band] for band in bands] if reading.band_mode == "each" else [bands],
            georeferenced=geo,
            crs=src.crs.to_string() if src.crs else None,
            transform=list(src.transform)[:6] if geo else None,
            nodata=src.nodata,
        )


def check_scene(cfg: RunConfig) -> tuple[torch.device, SceneSource]:
    """The scene job's pre-flight: device, model files, raster (bands, size), all reported at once."""
    device, problems = device_and_model_problems(cfg)
    reading = RasterReading.from_config(cfg.dataset, force=True)
    assert reading is not None
    scene = None
    try:
        scene = _open_scene(cfg, reading, min_image_side(cfg))
    except InputError as exc:
        problems.append(str(exc))
    if problems or scene is None:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise PreflightError(f"job {cfg.model.name} on scene {cfg.dataset.name} cannot start:\n{listed}")
    return device, scene


def _strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    rows = max(16, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _stretch(
    cfg: RunConfig, src: Any, bands: list[int], scene: SceneSource, reading: RasterReading
) -> raster.Stretch:
    """The group's stretch: the pixel type's range, or limits from every valid pixel of the scene.

    Float data under ``stretch=none`` is read once too, to refuse values outside [0, 1].
    """
    source = str(scene.path)
    if reading.stretch == "none" and not scene.dtype.startswith("float"):
        return raster.fixed_stretch(scene.dtype, bands, source)
    stats = raster.BandStats(len(bands), scene.dtype)
    strips = list(_strips(scene.height, scene.width))
    for top, bottom in tqdm(strips, desc="stretch limits", unit="strip", disable=not cfg.run.progress):
        stats.update(*raster.read_window(src, bands, _window(top, bottom, scene.width)))
    if reading.stretch != "none":
        return stats.stretch(
            reading.stretch, reading.percentiles, bands, str(cfg.dataset.stretch_scope), source
        )
    if stats.count and (stats.minimum.min() < 0 or stats.maximum.max() > 1):
        raise SceneError(
            f"{source}: float values in [{stats.minimum.min():g}, {stats.maximum.max():g}] under "
            "dataset.stretch=none, which takes [0, 1]; set dataset.stretch=minmax or percentile"
        )
    return raster.fixed_stretch(scene.dtype, bands, source)


def _window(top: int, bottom: int, width: int, left: int = 0) -> Any:
    from rasterio.windows import Window

    return Window(left, top, width, bottom - top)


class _Accumulators:
    """The two mosaics under construction, on disk: blended (weighted sum, weight) and hard."""

    def __init__(self, folder: Path, channels: int, height: int, width: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shape = (channels, height, width)
        self.blend_sum = np.lib.format.open_memmap(folder / "blend_sum.npy", "w+", np.float32, shape)
        self.blend_weight = np.lib.format.open_memmap(
            folder / "blend_weight.npy", "w+", np.float32, shape[1:]
        )
        self.hard = np.lib.format.open_memmap(folder / "hard.npy", "w+", np.float32, shape)

    def add(self, grid: Grid, tile: Tile, recon: np.ndarray) -> None:
        """One tile's reconstruction (C, T, T) on the [0, 1] scale."""
        rows, cols = slice(tile.y, tile.y + grid.tile), slice(tile.x, tile.x + grid.tile)
        smooth = grid.weight(tile, blend=True)
        self.blend_sum[:, rows, cols] += recon * smooth
        self.blend_weight[rows, cols] += smooth
        own = grid.weight(tile, blend=False) > 0
        hard = self.hard[:, rows, cols]
        hard[:, own] = recon[:, own]
        self.hard[:, rows, cols] = hard

    def mosaic(self, blend: bool, top: int, bottom: int) -> np.ndarray:
        if blend:
            return self.blend_sum[:, top:bottom] / self.blend_weight[None, top:bottom]
        return np.array(self.hard[:, top:bottom])


def _model_input(pixels: np.ndarray) -> torch.Tensor:
    """(C, T, T) uint8 -> (3, T, T) in [-1, 1]; a single band is replicated to three channels."""
    image = torch.from_numpy(pixels).float() / 127.5 - 1
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _to_bands(recon: torch.Tensor, channels: int) -> torch.Tensor:
    """The model's RGB output as the group's channels: itself, or the mean of the three for one band."""
    return recon.mean(dim=-3, keepdim=True) if channels == 1 else recon


def _tile_row(
    cfg: RunConfig,
    tile: Tile,
    tile_id: str,
    bands: list[int],
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
) -> dict[str, Any]:
    size = valid.shape[-1]
    row: dict[str, Any] = {
        "index": tile.index,
        "tile_id": tile_id,
        "bands": "+".join(f"b{b}" for b in bands),
        "row": tile.row,
        "col": tile.col,
        "y": tile.y,
        "x": tile.x,
        "height": size,
        "width": size,
        "valid_fraction": float(valid.float().mean()),
    }
    if not valid.any():
        return {**row, **dict.fromkeys(TILE_COLUMNS[10:], "")}  # all nodata: nothing to score
    scores = _masked(pred, target, valid, str(cfg.metric.value_range))
    edge = torch.ones(size, size, dtype=torch.bool)
    edge[TILE_EDGE:-TILE_EDGE, TILE_EDGE:-TILE_EDGE] = False
    abs_map = scores["abs_map"]
    parts = {name: abs_map[valid & where] for name, where in (("edge", edge), ("interior", ~edge))}
    row.update(
        psnr=float(pixel.psnr_from_mse(scores["sse"].sum() / (scores["n"] * len(bands)), 1.0)),
        ssim=float(scores["ssim"].sum() / max(scores["n_ssim"], 1) / len(bands)) if scores["n_ssim"] else "",
        mae=float(abs_map[valid].mean()),
        edge_mae=float(parts["edge"].mean()) if parts["edge"].numel() else "",
        interior_mae=float(parts["interior"].mean()) if parts["interior"].numel() else "",
    )
    return row


def _reconstruct_tiles(
    cfg: RunConfig,
    src: Any,
    grid: Grid,
    bands: list[int],
    stretch: raster.Stretch,
    adapter: VAEAdapter,
    accumulators: _Accumulators,
    writer: results.PerImageWriter,
    dtype: torch.dtype,
    first_index: int,
) -> int:
    """Every tile through the model, a batch at a time, into the accumulators; rows to per_tile.csv."""
    tiles = grid.tiles
    suffix = f"@b{bands[0]}" if cfg.dataset.band_mode == "each" else ""
    bar = tqdm(
        total=len(tiles),
        desc=f"{cfg.model.name}/{cfg.dataset.name}{suffix}",
        unit="tile",
        disable=not cfg.run.progress,
    )
    try:
        for start in range(0, len(tiles), cfg.run.batch_size):
            batch = tiles[start : start + cfg.run.batch_size]
            inputs, masks, ids = [], [], []
            for tile in batch:
                values, valid = raster.read_window(
                    src, bands, _window(tile.y, tile.y + grid.tile, grid.tile, tile.x)
                )
                pixels = stretch.to_uint8(values)
                pixels[:, ~valid] = 0
                inputs.append(_model_input(pixels))
                masks.append(torch.from_numpy(valid))
                tile_id = f"{cfg.dataset.name}/r{tile.row}c{tile.col}"
                ids.append(band_image_id(tile_id, bands[0]) if suffix else tile_id)
            original = torch.stack(inputs)
            recon = _to_bands(adapter.reconstruct(original, ids).cpu(), len(bands))
            pred, target = _protocol_pair(cfg, recon, _to_bands(original, len(bands)), dtype)
            rows = []
            for i, tile in enumerate(batch):
                accumulators.add(grid, tile, ((recon[i] + 1) / 2).numpy())
                row = _tile_row(cfg, tile, ids[i], bands, pred[i], target[i], masks[i])
                rows.append({**row, "index": first_index + tile.index})
            writer.write(rows)
            bar.update(len(batch))
    finally:
        bar.close()
    return len(tiles)


def _score_and_write(
    cfg: RunConfig,
    src: Any,
    grid: Grid,
    bands: list[int],
    stretch: raster.Stretch,
    accumulators: _Accumulators,
    outputs: dict[str, Any],
    dtype: torch.dtype,
) -> dict[bool, Sums]:
    """Both mosaics scored strip by strip; the chosen one (and its error map) written as it goes."""
    sums = {blend: Sums(len(bands)) for blend in (True, False)}
    near_y, near_x = grid.near_cuts()
    cut_x = np.zeros(grid.width - 1, dtype=bool)
    cut_x[[c - 1 for c in grid.cuts(grid.xs)]] = True
    cut_y = np.zeros(grid.height - 1, dtype=bool)
    cut_y[[c - 1 for c in grid.cuts(grid.ys)]] = True
    halo = pixel.SSIM_RADIUS
    strips = list(_strips(grid.height, grid.width))
    for top, bottom in tqdm(strips, desc="mosaic", unit="strip", disable=not cfg.run.progress):
        upper, lower = max(0, top - halo), min(grid.height, bottom + halo)
        core = slice(top - upper, top - upper + bottom - top)
        values, valid_np = raster.read_window(src, bands, _window(upper, lower, grid.width))
        original = stretch.to_uint8(values)
        original[:, ~valid_np] = 0
        original_unit = original.astype(np.float32) / 255
        valid = torch.from_numpy(valid_np)
        seam_band = (near_y[upper:lower, None] | near_x[None, :])[core]
        for blend, total in sums.items():
            mosaic = accumulators.mosaic(blend, upper, lower)
            pred, target = _protocol_pair(
                cfg, torch.from_numpy(mosaic) * 2 - 1, torch.from_numpy(original_unit) * 2 - 1, dtype
            )
            scores = _masked(pred, target, valid, str(cfg.metric.value_range), core)
            total.sse += scores["sse"]
            total.abs += scores["abs"]
            total.ssim += scores["ssim"]
            total.n += scores["n"]
            total.n_ssim += scores["n_ssim"]
            abs_map = scores["abs_map"].numpy()
            inside = valid_np[core]
            total.seam[0] += float(abs_map[inside & seam_band].sum())
            total.seam[1] += int((inside & seam_band).sum())
            total.interior[0] += float(abs_map[inside & ~seam_band].sum())
            total.interior[1] += int((inside & ~seam_band).sum())
            unit = (pred.numpy()[:, core] + 1) / 2
            source_error = stretch.to_source(unit) - values[:, core].astype(np.float64)
            total.sse_source += (source_error**2 * inside[None]).sum((1, 2))
            _add_jumps(total, unit, original_unit[:, core], inside, cut_x, None)
            rows = np.arange(upper, lower - 1)  # vertical pairs (r, r + 1) whose second row is in the core
            in_core = (rows + 1 >= max(top, 1)) & (rows + 1 < bottom)
            _add_jumps(
                total,
                (pred.numpy() + 1) / 2,
                original_unit,
                valid_np,
                cut_y[rows[in_core]],
                in_core,
            )
            if blend == cfg.dataset.blend:
                _write_strip(outputs, top, bottom, unit, abs_map, inside)
    return sums


def _add_jumps(
    total: Sums,
    recon: np.ndarray,
    original: np.ndarray,
    valid: np.ndarray,
    cut: np.ndarray,
    rows: np.ndarray | None,
) -> None:
    """Horizontal pairs (``rows`` None: across columns) or vertical pairs (the ``rows`` that count)."""
    excess, pair = _jumps(recon, original, valid, axis=1 if rows is None else 0)
    if rows is None:
        on_cut = np.broadcast_to(cut[None, :], pair.shape)
    else:
        excess, pair = excess[rows], pair[rows]
        on_cut = np.broadcast_to(cut[:, None], pair.shape)
    total.cut_jump[0] += float(excess[pair & on_cut].sum())
    total.cut_jump[1] += int((pair & on_cut).sum())
    total.other_jump[0] += float(excess[pair & ~on_cut].sum())
    total.other_jump[1] += int((pair & ~on_cut).sum())


def _write_strip(
    outputs: dict[str, Any], top: int, bottom: int, unit: np.ndarray, abs_map: np.ndarray, valid: np.ndarray
) -> None:
    window = _window(top, bottom, unit.shape[-1])
    outputs["reconstruction"].write(np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8), window=window)
    outputs["reconstruction"].write_mask(valid.astype(np.uint8) * 255, window=window)
    outputs["abs_error"].write(np.where(valid, abs_map, np.nan).astype(np.float32)[None], window=window)


def _open_outputs(out_dir: Path, scene: SceneSource, src: Any, channels: int, suffix: str) -> dict[str, Any]:
    """reconstruction<suffix>.tif (uint8, masked) and abs_error<suffix>.tif (float32, NaN nodata)."""
    import rasterio

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": scene.height,
        "width": scene.width,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    if scene.georeferenced:
        profile.update(crs=src.crs, transform=src.transform)
    return {
        "reconstruction": rasterio.open(
            out_dir / f"reconstruction{suffix}.tif", "w", count=channels, dtype="uint8", **profile
        ),
        "abs_error": rasterio.open(
            out_dir / f"abs_error{suffix}.tif", "w", count=1, dtype="float32", nodata=float("nan"), **profile
        ),
    }


def evaluate_scene(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate one model on one scene in tiles; returns the metrics.json payload (files beside it)."""
    import rasterio

    device, scene = check_scene(cfg)
    reading = RasterReading.from_config(cfg.dataset, force=True)
    assert reading is not None
    dtype = resolve_dtype(cfg.model.dtype, device)
    module = load_vae(cfg.model, device, dtype)
    adapter = adapter_for(module, cfg.model, cfg.metric)
    grid = Grid(scene.height, scene.width, cfg.dataset.tile, cfg.dataset.overlap)
    if not scene.georeferenced:
        log.warning("%s has no CRS or transform: the outputs are plain TIFFs (not georeferenced)", scene.path)
    writer = results.PerImageWriter(out_dir / PER_TILE_FILE, TILE_COLUMNS)
    start = time.perf_counter()
    groups: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    per_band: dict[str, Any] = {}
    seams: dict[str, Any] = {}
    n_tiles = 0
    scratch = out_dir / TMP_DIR
    try:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), raster.open_raster(scene.path) as src:
            for bands in scene.groups:
                suffix = f"_b{bands[0]}" if reading.band_mode == "each" else ""
                stretch = _stretch(cfg, src, bands, scene, reading)
                accumulators = _Accumulators(scratch, len(bands), scene.height, scene.width)
                n_tiles += _reconstruct_tiles(
                    cfg, src, grid, bands, stretch, adapter, accumulators, writer, dtype, n_tiles
                )
                outputs = _open_outputs(out_dir, scene, src, len(bands), suffix)
                try:
                    sums = _score_and_write(cfg, src, grid, bands, stretch, accumulators, outputs, dtype)
                finally:
                    for handle in outputs.values():
                        handle.close()
                del accumulators
                chosen = sums[cfg.dataset.blend].scores(bands)
                per_band.update(chosen["per_band"])
                label = "+".join(f"b{b}" for b in bands)
                groups[label] = {
                    "stretch": stretch.record(),
                    "metrics": chosen["overall"],
                    "outputs": [f"reconstruction{suffix}.tif", f"abs_error{suffix}.tif"],
                }
                seams[label] = {
                    "blended": {**sums[True].seams(), **sums[True].scores(bands)["overall"]},
                    "hard": {**sums[False].seams(), **sums[False].scores(bands)["overall"]},
                    "n_valid_pixels": sums[True].n,
                }
                valid_fraction = sums[True].n / (scene.height * scene.width)
    finally:
        writer.close()
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - start
    if len(groups) == 1:
        metrics.update(next(iter(groups.values()))["metrics"])
    else:  # band_mode=each: the bands' mean
        for key in ("psnr", "ssim", "mae"):
            metrics[key] = float(np.mean([group["metrics"][key] for group in groups.values()]))
    for band, values in per_band.items():
        metrics.update({f"{key}_{band}": value for key, value in values.items()})
    table = writer.table()
    tile_psnr = np.array([v for v in table["psnr"] if v != ""], dtype=np.float64)
    edge = np.array([v for v in table["edge_mae"] if v != ""], dtype=np.float64)
    interior = np.array([v for v in table["interior_mae"] if v != ""], dtype=np.float64)
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "protocol": {
            "name": cfg.metric.protocol,
            "value_range": str(cfg.metric.value_range),
            "quantize": str(cfg.metric.quantize),
            "gt_dtype": str(cfg.metric.gt_dtype),
            "latent": str(cfg.metric.latent),
            "seed": cfg.metric.seed,
            "definitions": {
                "psnr": "10 log10(1 / MSE) on [0, 1] (same in any value range), MSE pooled over valid pixels",
                "ssim": "Gaussian 11 / 1.5 on metric.value_range, mean over valid pixels, window all valid",
                "mae": "mean |reconstruction - input| in 8-bit units over valid pixels",
                "rmse_source": "RMSE of the inverse-stretched reconstruction against the source values",
                "band_mode=each": "a band's reconstruction is the mean of the model's three output channels",
            },
            "not_computed": {
                key: "scenes are scored with nodata masked out; this metric cannot leave pixels out"
                for key in ("lpips", "lpips_vgg", "ms_ssim", "dists", "fid", "kid")
                if getattr(cfg.metric, key)
            },
            "noise": "none (deterministic)" if adapter.deterministic else NOISE_RULE,
        },
        "n_images": n_tiles,
        "n_skipped": 0,
        "skipped_by_reason": {},
        "skipped": [],
        "metrics": metrics,
        "model_stats": model_stats(module, adapter),
        "timing": {
            "seconds": seconds,
            "tiles_per_second": n_tiles / seconds,
            "megapixels_per_second": len(scene.groups) * scene.height * scene.width / seconds / 1e6,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "batch_size": cfg.run.batch_size,
        },
        "scene": {
            "path": str(scene.path),
            "height": scene.height,
            "width": scene.width,
            "band_count": scene.count,
            "dtype": scene.dtype,
            "nodata": scene.nodata,
            "valid_fraction": valid_fraction,
            "georeferenced": scene.georeferenced,
            "outputs_note": None
            if scene.georeferenced
            else "source has no CRS or transform: plain TIFF outputs",
            "crs": scene.crs,
            "transform": scene.transform,
            "tile": grid.tile,
            "overlap": grid.overlap,
            "blend": cfg.dataset.blend,
            "grid": [len(grid.ys), len(grid.xs)],
            "tile_rows_y": grid.ys,
            "tile_cols_x": grid.xs,
        },
        "radiometry": {
            **reading.record(),
            "groups": {label: group["stretch"] for label, group in groups.items()},
        },
        "groups": groups,
        "per_band": per_band,
        "seams": {
            "definition": (
                f"seam band: pixels within {SEAM_HALF_WIDTH} px of a hard cut line (middle of each overlap); "
                "jump: |neighbour difference| of the reconstruction minus of the input, 8-bit units, across "
                "cut lines (cut_jump) and between all other neighbours (other_jump)"
            ),
            **seams,
            "tile_edges": {
                "definition": f"each tile's reconstruction: MAE within {TILE_EDGE} px of its edge, inside",
                "edge_mae": float(edge.mean()) if edge.size else None,
                "interior_mae": float(interior.mean()) if interior.size else None,
            },
        },
        "per_tile": {
            "file": PER_TILE_FILE,
            "n_tiles": n_tiles,
            "psnr_min": float(tile_psnr.min()) if tile_psnr.size else None,
            "psnr_median": float(np.median(tile_psnr)) if tile_psnr.size else None,
            "psnr_max": float(tile_psnr.max()) if tile_psnr.size else None,
        },
        "versions": results.software_versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
