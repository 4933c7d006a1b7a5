"""Rasters: band selection (1-based, as GDAL counts), nodata masks and the radiometric stretch.

A VAE trained on photographs takes 8-bit RGB. Earth-observation rasters hold many bands of
16-bit or float radiometry, often using a small part of their type's range (a 12-bit sensor
in uint16), with nodata outside the footprint. This module turns any such raster into the
8-bit picture a model sees, per band and reversibly:

- ``none``: limits from the pixel type (uint8 0..255, uint16 0..65535, float 0..1), so 8-bit
  data is kept and 16-bit is ``v / 257`` (the default pixel rule);
- ``minmax``: each band's smallest and largest valid value;
- ``percentile``: each band's ``dataset.stretch_percentiles`` (default 2 and 98 %) of its
  valid values, numpy's linear interpolation; exact for 8- and 16-bit integers (histograms),
  from an even subsample of at most ``SAMPLE_PER_UPDATE`` values per read for other types.

``x = clip((v - low) / (high - low), 0, 1)`` feeds the model; ``low + x (high - low)`` maps a
reconstruction back to source units (values the stretch clipped stay clipped). Nodata (the
file's nodata value, internal mask or alpha band, or a non-finite value) is left out of the
limits; callers leave it out of every metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaes4rs.errors import InputError

# Integer types small enough for an exact histogram of every value.
HISTOGRAM_DTYPES = ("uint8", "int8", "uint16", "int16")
SAMPLE_PER_UPDATE = 1_000_000  # float bands: values kept per read for percentiles
FIXED_LIMITS = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "bool": (0.0, 1.0)}


class RasterInputError(InputError):
    """A raster that cannot be read as asked; ``reason`` is a short code (as the dataset scan counts them)."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


@contextmanager
def open_raster(path: Path) -> Iterator[Any]:
    """rasterio dataset of ``path``; an unreadable file is a RasterInputError naming it."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterInputError(f"cannot read raster {path}: {exc}") from exc
    try:
        yield src
    finally:
        src.close()


def georeferenced(src: Any) -> bool:
    """Whether the raster carries a CRS or a transform other than the identity (pixel grid)."""
    from affine import Affine

    return src.crs is not None or (src.transform is not None and src.transform != Affine.identity())


def check_bands(count: int, bands: Sequence[int] | None, source: str) -> list[int]:
    """The 1-based bands to read; out-of-range numbers are an error naming the file's band count."""
    if bands is None:
        return list(range(1, count + 1))
    bad = [band for band in bands if not 1 <= band <= count]
    if bad:
        raise RasterInputError(
            f"{source}: dataset.bands={list(bands)} asks for band(s) {bad}, but the file has {count} "
            f"band(s) (valid: 1..{count}, 1-based as GDAL counts)",
            "band_out_of_range",
        )
    return list(bands)


def read_window(src: Any, bands: Sequence[int], window: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(values (C, h, w) in the file's type, valid (h, w)): a pixel is valid when every band is."""
    values = src.read(list(bands), window=window)
    valid = np.all(src.read_masks(list(bands), window=window) > 0, axis=0)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.all(np.isfinite(values), axis=0)
    return values, valid


@dataclass(frozen=True)
class Stretch:
    """Per-band limits mapping source values to [0, 1] (and back); ``record`` goes to metrics.json."""

    kind: str
    bands: tuple[int, ...]
    low: np.ndarray  # (C,) float64
    high: np.ndarray
    dtype: str
    scope: str
    percentiles: tuple[float, float] | None = None
    exact: bool = True

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """(C, H, W) source values -> float32 in [0, 1]; a constant band (high == low) maps to 0."""
        span = np.where(self.high > self.low, self.high - self.low, 1.0)[:, None, None]
        unit = (values.astype(np.float64) - self.low[:, None, None]) / span
        return np.clip(np.nan_to_num(unit, nan=0.0), 0.0, 1.0).astype(np.float32)

    def to_uint8(self, values: np.ndarray) -> np.ndarray:
        """(C, H, W) source values -> the 8-bit picture the model sees (rounded)."""
        return np.round(self.to_unit(values) * 255.0).astype(np.uint8)

    def to_source(self, unit: np.ndarray) -> np.ndarray:
        """(C, H, W) values in [0, 1] (a reconstruction) -> source units, float64."""
        return self.low[:, None, None] + unit.astype(np.float64) * (self.high - self.low)[:, None, None]

    def record(self) -> dict[str, Any]:
        """The limits and rule, as metrics.json records them."""
        return {
            "stretch": self.kind,
            "scope": self.scope,
            "percentiles": list(self.percentiles) if self.percentiles else None,
            "source_dtype": self.dtype,
            "bands": list(self.bands),
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "exact": self.exact,
            "rule": "x = clip((v - low) / (high - low), 0, 1); 8 bit: round(255 x); back: low + x (high-low)",
        }


def fixed_stretch(dtype: str, bands: Sequence[int], source: str) -> Stretch:
    """``stretch=none``: the pixel type's own range (float data must already lie in [0, 1])."""
    if dtype in FIXED_LIMITS:
        low, high = FIXED_LIMITS[dtype]
    elif dtype.startswith("float"):
        low, high = 0.0, 1.0
    else:
        raise RasterInputError(
            f"{source}: pixel type {dtype} has no fixed 8-bit mapping (stretch=none takes uint8, uint16, "
            "float in [0, 1]); set dataset.stretch=minmax or dataset.stretch=percentile",
            "unsupported_pixel_type",
        )
    n = len(bands)
    return Stretch("none", tuple(bands), np.full(n, low), np.full(n, high), dtype, "fixed")


class BandStats:
    """Running per-band statistics of valid pixels, read window by window (memory: one window)."""

    def __init__(self, n_bands: int, dtype: str) -> None:
        self.dtype = dtype
        self.n_bands = n_bands
        self.minimum = np.full(n_bands, np.inf)
        self.maximum = np.full(n_bands, -np.inf)
        self.count = 0
        self.histogram = dtype in HISTOGRAM_DTYPES
        self.offset = int(np.iinfo(dtype).min) if self.histogram else 0
        bins = int(np.iinfo(dtype).max) - self.offset + 1 if self.histogram else 0
        self.counts = np.zeros((n_bands, bins), dtype=np.int64)
        self.samples: list[np.ndarray] = []

    def update(self, values: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of a (C, H, W) window."""
        picked = values[:, valid]  # (C, N)
        if picked.shape[1] == 0:
            return
        self.count += picked.shape[1]
        self.minimum = np.minimum(self.minimum, picked.min(axis=1))
        self.maximum = np.maximum(self.maximum, picked.max(axis=1))
        if self.histogram:
            for band in range(self.n_bands):
                shifted = picked[band].astype(np.int64) - self.offset
                self.counts[band] += np.bincount(shifted, minlength=self.counts.shape[1])
        else:
            step = max(1, picked.shape[1] // SAMPLE_PER_UPDATE)
            self.samples.append(picked[:, ::step].astype(np.float64))

    def percentile(self, q: float) -> np.ndarray:
        """numpy's default (linear) percentile of each band's valid values."""
        if not self.histogram:
            return np.percentile(np.concatenate(self.samples, axis=1), q, axis=1)
        out = np.empty(self.n_bands)
        for band in range(self.n_bands):
            cumulative = np.cumsum(self.counts[band])
            position = q / 100.0 * (cumulative[-1] - 1)
            below, above = int(np.floor(position)), int(np.ceil(position))
            # the value at sorted rank k is the first bin whose cumulative count exceeds k
            v_below = np.searchsorted(cumulative, below, side="right") + self.offset
            v_above = np.searchsorted(cumulative, above, side="right") + self.offset
            out[band] = v_below + (position - below) * (v_above - v_below)
        return out

    def stretch(
        self, kind: str, percentiles: Sequence[float], bands: Sequence[int], scope: str, source: str
    ) -> Stretch:
        """The limits of ``kind`` (minmax or percentile) from what was seen."""
        if self.count == 0:
            raise RasterInputError(f"{source}: no valid pixel (all nodata) to stretch from", "all_nodata")
        if kind == "minmax":
            return Stretch(
                kind,
                tuple(bands),
                self.minimum.astype(np.float64),
                self.maximum.astype(np.float64),
                self.dtype,
                scope,
            )
        low_q, high_q = percentiles
        return Stretch(
            kind,
            tuple(bands),
            self.percentile(low_q),
            self.percentile(high_q),
            self.dtype,
            scope,
            (float(low_q), float(high_q)),
            exact=self.histogram,
        )
