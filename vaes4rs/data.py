"""Image sources: class folders from a hub snapshot or a local directory, read as uint8 RGB.

Pixel rule (applied to every file, documented in the README):
- 8-bit images are kept as they are; 16-bit images are scaled linearly to 8 bit,
  ``round(v / 257)`` (0 -> 0, 65535 -> 255); float images are taken as [0, 1] and become
  ``round(clip(v, 0, 1) * 255)``.
- Grayscale is replicated to three channels; an alpha channel is dropped (not composited);
  palette images are expanded to RGB through their palette. More than four channels
  (multispectral) is an error unless ``dataset.bands`` picks one or three of them.
- Rasters (``dataset.bands``, ``dataset.stretch`` other than ``none`` or ``dataset.band_mode=each``):
  TIFFs are read with rasterio, the bands picked (1-based), and each band mapped to 8 bit by
  the stretch of ``vaes4rs.raster`` (limits per image or, ``stretch_scope=dataset``, from every
  image's valid pixels); nodata is left out of the limits and becomes 0. ``band_mode=each``
  makes every band its own record (``image_id`` ``<class>/<file>@b<n>``), grayscale
  replicated to three channels.
- Float images with values outside [0, 1] are an error (clipping them would score an
  all-white image without a word).
- EXIF orientation is not applied: the study's loaders ignore it, and applying it would
  change the pixels compared with the study's; files that carry a rotation are counted in a
  warning.

Before any work, ``scan`` reads every file's header (size, channels, pixel type, truncation)
and returns every problem with its reason, so a bad file is found in seconds, not hours in.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from vaes4rs import raster
from vaes4rs.config import DatasetConfig, DegradeConfig
from vaes4rs.degrade import degrade
from vaes4rs.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
# uint16 files whose largest value is below this use at most 12 bits (most sensors, Sentinel-2
# L2A): ``round(v / 257)`` maps them to at most 16 of 256 levels, a nearly black image.
LOW_BIT_DEPTH_MAX = 4096
RANGE_SAMPLE = 16  # uint16 / float files whose pixels the scan reads to check their value range


class CorruptImageError(InputError):
    """An image file that cannot be used; names the file and says why (``reason``, a short code)."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageRecord:
    """One image of the set, in dataset order (classes by name, then files by name)."""

    index: int
    image_id: str  # "<class>/<file name>" (band_mode=each: "<class>/<file name>@b<n>"), unique
    label: str
    path: Path
    band: int | None = None  # band_mode=each: the one band (1-based) this record is


def band_image_id(image_id: str, band: int) -> str:
    """The id of one band of a file under ``band_mode=each``."""
    return f"{image_id}@b{band}"


def to_rgb_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Apply the module's pixel rule to an HxW or HxWxC array; returns HxWx3 uint8."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF (C, H, W)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise CorruptImageError(f"{source}: unsupported image shape {array.shape}", "unsupported_shape")
    channels = array.shape[-1]
    if channels > 4:
        raise CorruptImageError(
            f"{source}: {channels} channels; vaes4rs reads RGB, grayscale or RGBA images. "
            "Select three bands first: dataset.bands=[r,g,b] (1-based, as GDAL counts).",
            "too_many_channels",
        )
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            raise CorruptImageError(
                f"{source}: float pixels must lie in [0, 1], found [{low:g}, {high:g}]; "
                "rescale the file to [0, 1] (or to 8/16-bit integers) first",
                "out_of_range",
            )
        pixels = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise CorruptImageError(
            f"{source}: pixel type {array.dtype} is not supported (uint8, uint16, float in [0,1])",
            "unsupported_pixel_type",
        )
    if channels in (2, 4):
        pixels = pixels[..., :-1]  # drop alpha
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.array(pixels, copy=True, order="C")  # writable, contiguous: safe for torch


def read_image(path: Path) -> np.ndarray:
    """Decode one file to HxWx3 uint8, raising CorruptImageError that names the file."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            array = tifffile.imread(path)
        else:
            with Image.open(path) as img:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                array = np.asarray(img)
                if img.mode == "I;16" or array.dtype.byteorder == ">":
                    array = array.astype(np.uint16)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc
    return to_rgb_uint8(array, str(path))


def raster_mode(cfg: DatasetConfig) -> bool:
    """Whether the set is read as rasters (bands, stretch, one record per band) or by the plain pixel rule."""
    return cfg.bands is not None or cfg.stretch != "none" or cfg.band_mode != "rgb"


def _decoded_bands(
    path: Path, choose: Callable[[int], list[int]]
) -> tuple[np.ndarray, np.ndarray, str, list[int]]:
    """(values (C, H, W), valid (H, W), dtype, bands) of the bands ``choose(band count)`` picks.

    TIFFs through rasterio (nodata, masks, alpha bands known to GDAL); other files through
    Pillow, their alpha channel (if any) dropped as in the pixel rule.
    """
    if path.suffix.lower() in TIFF_SUFFIXES:
        with raster.open_raster(path) as src:
            bands = choose(src.count)
            values, valid = raster.read_window(src, bands)
        return values, valid, str(values.dtype), bands
    try:
        with Image.open(path) as img:
            if img.mode == "P" or img.mode in _PIL_AS_RGB:
                img = img.convert("RGB")
            elif img.mode in ("LA", "RGBA", "PA"):
                img = img.convert("L" if img.mode == "LA" else "RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc
    planes = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if planes.dtype.byteorder == ">":
        planes = planes.astype(planes.dtype.newbyteorder("="))
    bands = choose(len(planes))
    return (
        planes[[band - 1 for band in bands]],
        np.ones(planes.shape[1:], dtype=bool),
        str(planes.dtype),
        bands,
    )


@dataclass(frozen=True)
class RasterReading:
    """How rasters become 8-bit RGB: bands, band mode and stretch (``dataset_limits``: scope dataset)."""

    bands: tuple[int, ...] | None
    band_mode: str
    stretch: str
    percentiles: tuple[float, float]
    scope: str
    dataset_limits: dict[int, tuple[float, float]] | None = None  # band -> (low, high)

    @classmethod
    def from_config(cls, cfg: DatasetConfig, force: bool = False) -> RasterReading | None:
        """The reading ``cfg`` asks for; None for the plain pixel rule (unless ``force``: scenes)."""
        if not (force or raster_mode(cfg)):
            return None
        low, high = cfg.stretch_percentiles
        bands = tuple(cfg.bands) if cfg.bands is not None else None
        return cls(bands, str(cfg.band_mode), str(cfg.stretch), (low, high), str(cfg.stretch_scope))

    def file_bands(self, count: int, source: str) -> list[int]:
        """The bands of a file with ``count`` bands that are read (each one alone under band_mode=each)."""
        if self.bands is not None:
            return raster.check_bands(count, self.bands, source)
        if self.band_mode == "each":
            return list(range(1, count + 1))
        if count > 4:
            raise CorruptImageError(
                f"{source}: {count} channels; vaes4rs reads RGB, grayscale or RGBA images. "
                "Select three bands first: dataset.bands=[r,g,b] (1-based, as GDAL counts).",
                "too_many_channels",
            )
        return [1, 2, 3] if count >= 3 else [1]  # RGB(A) or gray (+ alpha): alpha dropped

    def stretch_for(
        self, values: np.ndarray, valid: np.ndarray, bands: list[int], dtype: str, source: str
    ) -> raster.Stretch:
        """The stretch of these bands of one image: fixed, from the image itself, or the dataset's."""
        if self.stretch == "none":
            if dtype.startswith("float") and valid.any():
                low, high = float(values[:, valid].min()), float(values[:, valid].max())
                if not (0.0 <= low and high <= 1.0):
                    raise CorruptImageError(
                        f"{source}: float pixels must lie in [0, 1] under dataset.stretch=none, found "
                        f"[{low:g}, {high:g}]; set dataset.stretch=minmax or percentile",
                        "out_of_range",
                    )
            return raster.fixed_stretch(dtype, bands, source)
        if self.dataset_limits is not None:
            low = np.array([self.dataset_limits[band][0] for band in bands])
            high = np.array([self.dataset_limits[band][1] for band in bands])
            return raster.Stretch(self.stretch, tuple(bands), low, high, dtype, "dataset", self.percentiles)
        stats = raster.BandStats(len(bands), dtype)
        stats.update(values, valid)
        return stats.stretch(self.stretch, self.percentiles, bands, "image", source)

    def chooser(self, source: str) -> Callable[[int], list[int]]:
        """``file_bands`` of one file, for a reader that learns the band count when it opens it."""
        return functools.partial(self.file_bands, source=source)

    def read(self, path: Path, band: int | None = None) -> np.ndarray:
        """One file (or one band of it) as HxWx3 uint8: bands picked, stretched, nodata 0."""
        source = str(path)
        try:
            if band is None:
                values, valid, dtype, bands = _decoded_bands(path, self.chooser(source))
            else:
                values, valid, dtype, bands = _decoded_bands(
                    path, lambda count: raster.check_bands(count, [band], source)
                )
            stretch = self.stretch_for(values, valid, bands, dtype, source)
        except raster.RasterInputError as exc:
            raise CorruptImageError(str(exc), exc.reason) from exc
        pixels = stretch.to_uint8(values)
        pixels[:, ~valid] = 0
        if len(pixels) == 1:
            pixels = np.repeat(pixels, 3, axis=0)
        return np.ascontiguousarray(np.moveaxis(pixels, 0, -1))

    def record(self) -> dict[str, Any]:
        """What metrics.json should say about the radiometry (limits only when fixed for the set)."""
        out: dict[str, Any] = {
            "bands": list(self.bands) if self.bands else None,
            "band_mode": self.band_mode,
            "stretch": self.stretch,
            "scope": self.scope if self.stretch != "none" else "fixed",
            "percentiles": list(self.percentiles) if self.stretch == "percentile" else None,
        }
        if self.dataset_limits is not None:
            out["limits"] = {f"b{b}": list(limits) for b, limits in sorted(self.dataset_limits.items())}
        return out


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding its pixels."""

    height: int
    width: int
    channels: int
    dtype: str  # numpy name of the decoded pixels: uint8, uint16, float32, bool, ...
    rotated: bool  # an EXIF orientation other than "normal" (not applied, see the pixel rule)
    nodata: bool = False  # a GeoTIFF declaring a nodata value (GDAL_NODATA tag)


_PIL_DTYPES = {"1": "bool", "I": "int32", "F": "float32"}
_PIL_AS_RGB = ("CMYK", "YCbCr", "LAB", "HSV")  # converted to RGB when decoded
_SUPPORTED_DTYPES = ("uint8", "uint16", "bool")


def _tiff_header(path: Path) -> ImageHeader:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        shape, dtype = tif.series[0].shape, tif.series[0].dtype
        end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
        nodata = "GDAL_NODATA" in page.tags
    if end > path.stat().st_size:
        raise CorruptImageError(f"{path}: truncated (pixel data ends past the end of the file)", "truncated")
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 2, 3, 4):
        shape = (*shape[1:], shape[0])  # planar (C, H, W)
    channels = shape[2] if len(shape) == 3 else 1
    return ImageHeader(int(shape[0]), int(shape[1]), int(channels), str(dtype), rotated=False, nodata=nodata)


def _has_end_marker(path: Path, marker: bytes) -> bool:
    """Whether ``marker`` appears in the file's last 4 KiB (cheap truncation check)."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        return marker in handle.read()


def _pil_header(path: Path) -> ImageHeader:
    with Image.open(path) as img:
        width, height = img.size
        mode, image_format = img.mode, img.format
        # EXIF sits in the header of JPEG and WebP; for PNG, getexif() would decode the whole image.
        rotated = image_format in ("JPEG", "WEBP") and img.getexif().get(0x0112, 1) not in (0, 1)
    if image_format == "JPEG" and not _has_end_marker(path, b"\xff\xd9"):
        raise CorruptImageError(f"{path}: truncated JPEG (no end-of-image marker)", "truncated")
    if image_format == "PNG" and not _has_end_marker(path, b"IEND"):
        raise CorruptImageError(f"{path}: truncated PNG (no IEND chunk)", "truncated")
    channels = 3 if mode in _PIL_AS_RGB else Image.getmodebands(mode)
    dtype = "uint16" if mode.startswith("I;16") else _PIL_DTYPES.get(mode, "uint8")
    return ImageHeader(height, width, channels, dtype, rotated)


def _raster_header(path: Path, reading: RasterReading) -> ImageHeader:
    """A raster's header: size, band count and pixel type (rasterio for TIFFs, after the truncation check)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        header = _pil_header(path)
        bands = {2: 1, 4: 3}.get(header.channels, header.channels)  # Pillow's alpha is dropped
        return ImageHeader(header.height, header.width, bands, header.dtype, header.rotated)
    _tiff_header(path)  # data past the end of the file
    try:
        with raster.open_raster(path) as src:
            dtype, nodata = str(src.dtypes[0]), src.nodata is not None
            return ImageHeader(src.height, src.width, src.count, dtype, rotated=False, nodata=nodata)
    except raster.RasterInputError as exc:
        raise CorruptImageError(str(exc), exc.reason) from exc


def read_header(path: Path, reading: RasterReading | None = None) -> ImageHeader:
    """Size, channels and pixel type from the header; CorruptImageError (with a reason) when unusable.

    With ``reading`` (raster mode) ``channels`` is the file's band count, the bands asked for
    must exist, and any integer or float type is accepted when a stretch maps it to 8 bit.
    """
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CorruptImageError(
            f"{path}: the file name is not valid UTF-8 ({path.name!a}); rename the file", "bad_file_name"
        ) from exc
    try:
        if reading is not None:
            header = _raster_header(path, reading)
        else:
            header = _tiff_header(path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_header(path)
    except Image.DecompressionBombError as exc:
        raise CorruptImageError(f"{path}: {exc}", "too_large") from exc
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, IndexError, KeyError) as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc
    if reading is not None:
        try:
            reading.file_bands(header.channels, str(path))
        except raster.RasterInputError as exc:
            raise CorruptImageError(str(exc), exc.reason) from exc
    elif header.channels > 4:
        raise CorruptImageError(
            f"{path}: {header.channels} channels; vaes4rs reads RGB, grayscale or RGBA images. "
            "Select three bands first: dataset.bands=[r,g,b] (1-based, as GDAL counts).",
            "too_many_channels",
        )
    stretched = reading is not None and reading.stretch != "none"
    numeric = header.dtype.startswith(("int", "uint", "float"))
    if not (header.dtype in _SUPPORTED_DTYPES or header.dtype.startswith("float") or (stretched and numeric)):
        raise CorruptImageError(
            f"{path}: pixel type {header.dtype} is not supported (uint8, uint16, float in [0,1]; "
            "other integer types with dataset.stretch=minmax or percentile)",
            "unsupported_pixel_type",
        )
    return header


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _has_images_below(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def list_images(root: Path, classes: Sequence[str] | None, limit_per_class: int | None) -> list[ImageRecord]:
    """Class folders sorted by name, files sorted by name: the order every result uses.

    A class folder with no images but with image folders below it means the root is one
    level too high (``rs-samples/`` instead of ``rs-samples/resisc45/``): an error that names
    the folders it could have meant, never a run on whatever loose files happen to be there.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a directory")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not available:
        raise FileNotFoundError(f"dataset root {root} has no class sub-folders")
    if classes:
        unknown = sorted(set(classes) - set(available))
        if unknown:
            raise ValueError(f"dataset.classes: unknown class(es) {unknown} in {root}; valid: {available}")
        chosen = sorted(set(classes))
    else:
        chosen = available
    files = {label: _image_files(root / label) for label in chosen}
    nested = [label for label in chosen if not files[label] and _has_images_below(root / label)]
    if nested:
        raise FileNotFoundError(
            f"dataset root {root}: class folder(s) {nested} hold no images but sub-folders with images; "
            "the root looks one level too high. Did you mean "
            + " or ".join(f"dataset.root={root / label}" for label in nested)
            + "?"
        )
    empty = [label for label in chosen if not files[label]]
    if empty and classes:
        raise FileNotFoundError(f"dataset.classes: class folder(s) {empty} in {root} hold no images")
    if empty:
        log.warning("class folder(s) without images, left out: %s", ", ".join(empty))
    records: list[ImageRecord] = []
    for label in chosen:
        for path in files[label][:limit_per_class]:
            records.append(ImageRecord(len(records), f"{label}/{path.name}", label, path))
    if not records:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}")
    return records


def ignored_files(root: Path, labels: Iterable[str]) -> dict[str, int]:
    """Files in the class folders that are not read (other suffixes), counted by suffix."""
    counts: Counter[str] = Counter()
    for label in labels:
        for path in (root / label).iterdir():
            if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
                counts[path.suffix.lower() or "(no suffix)"] += 1
    return dict(sorted(counts.items()))


def resolve_root(cfg: DatasetConfig) -> Path:
    """The local directory holding class folders: a local root or a cached hub snapshot."""
    if cfg.source == "folder":
        assert cfg.root is not None
        return Path(cfg.root).expanduser().resolve()
    assert cfg.repo is not None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(cfg.repo, repo_type="dataset", revision=cfg.revision))
    except LocalEntryNotFoundError as exc:
        raise InputError(
            f"dataset '{cfg.name}': hub dataset {cfg.repo} (revision {cfg.revision or 'main'}) "
            "is not in the Hugging Face cache and the hub cannot be reached (offline?). "
            f"On a connected machine run `hf download {cfg.repo} --repo-type dataset` "
            "(same HF_HOME), or download it anywhere and use dataset=folder dataset.root=<dir>."
        ) from exc
    base = snapshot
    if cfg.archive:
        base = _extract_once(snapshot / cfg.archive)
    return base / cfg.subdir if cfg.subdir else base


def _extract_once(archive: Path) -> Path:
    """Extract a zip next to its resolved blob once; later runs reuse the folder."""
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} not found in the dataset snapshot")
    target = archive.resolve().parent / f"{archive.resolve().name}.extracted"
    done = target / ".complete"
    if not done.exists():
        log.info("extracting %s to %s", archive, target)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
        done.touch()
    return target


class ImageFolderSource(Dataset):
    """Yields one record's pixels (CHW uint8), or the reason it could not be decoded.

    A decoding error never escapes a worker (where it would arrive as a long traceback): it
    travels back with the batch, and the loop stops on it naming the file, or skips and counts it.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        resize: Sequence[int] | None,
        reading: RasterReading | None = None,
        degradation: DegradeConfig | None = None,
    ) -> None:
        self.records = records
        self.resize = tuple(resize) if resize else None
        self.reading = reading
        # dataset.degrade, applied here so the workers do it beside decoding, not the loop
        self.degradation = degradation if degradation is not None and degradation.active else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            if self.reading is None:
                pixels = read_image(record.path)
            else:
                pixels = self.reading.read(record.path, record.band)
        except CorruptImageError as exc:
            return {"record": record, "image": None, "error": exc}
        except Exception as exc:  # anything else a decoder raises is still this file's problem
            return {"record": record, "image": None, "error": CorruptImageError(f"{record.path}: {exc}")}
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        if self.resize and tuple(image.shape[1:]) != self.resize:
            from torchvision.transforms.v2.functional import resize

            image = resize(image, list(self.resize), antialias=True)
        item = {"record": record, "image": image, "error": None}
        if self.degradation is not None:  # seeded per image: the same bytes in any batch or worker
            item["input"] = degrade(image[None], [record.image_id], self.degradation)[0]
        return item


class SameSizeBatches(Sampler[list[int]]):
    """Batches of equal image size in dataset order, so no padding ever enters a metric."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size, []).append(index)
        self.batches = [
            members[start : start + batch_size]
            for members in groups.values()
            for start in range(0, len(members), batch_size)
        ]
        self.batches.sort(key=lambda batch: batch[0])
        self.numbers = list(range(len(self.batches)))  # each batch's position in the whole set

    def skip(self, n: int) -> None:
        """Leave out the first ``n`` batches (done before a checkpoint), so their files are not read."""
        self.batches, self.numbers = self.batches[n:], self.numbers[n:]

    def shard(self, rank: int, world: int) -> None:
        """Keep every ``world``-th batch from ``rank``: whole batches, none padded, none twice."""
        self.batches, self.numbers = self.batches[rank::world], self.numbers[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate(items: list[dict]) -> dict:
    good = [item for item in items if item["image"] is not None]
    batch = {
        "images": torch.stack([item["image"] for item in good]) if good else None,
        "records": [item["record"] for item in good],
        "skipped": [(item["record"], item["error"]) for item in items if item["image"] is None],
    }
    if good and "input" in good[0]:  # dataset.degrade: what the VAE is given
        batch["inputs"] = torch.stack([item["input"] for item in good])
    return batch


@dataclass(frozen=True)
class FileProblem:
    """A file that cannot be evaluated: which, a short reason code, and the message."""

    record: ImageRecord
    reason: str
    message: str


@dataclass
class DatasetScan:
    """Every file of the set checked from its header, before any model is loaded."""

    root: Path
    records: list[ImageRecord]  # usable, in dataset order
    sizes: list[tuple[int, int]]  # (H, W) each record is evaluated at
    problems: list[FileProblem]
    ignored: dict[str, int]  # suffix -> files in class folders that are not images
    warnings: list[str]
    reading: RasterReading | None = None  # raster mode: bands, band mode, stretch

    def class_counts(self) -> dict[str, int]:
        return dict(Counter(record.label for record in self.records))

    @property
    def radiometry(self) -> dict[str, Any]:
        """The pixel rule or the raster reading actually used, for metrics.json."""
        if self.reading is None:
            return {"stretch": "none", "rule": "pixel rule: 8 bit kept, 16 bit round(v / 257), float x 255"}
        return self.reading.record()


def _check_value_ranges(
    records: Sequence[ImageRecord], headers: Sequence[ImageHeader], reading: RasterReading | None
) -> tuple[list[str], list[FileProblem]]:
    """Read a few uint16/float files whole: low bit depth warns, floats outside [0, 1] are problems.

    Under a stretch (minmax, percentile) every value range is mapped to 8 bit: nothing to check.
    """
    warnings: list[str] = []
    problems: list[FileProblem] = []
    if reading is not None and reading.stretch != "none":
        return warnings, problems
    deep = [(r, h) for r, h in zip(records, headers) if h.dtype == "uint16"][:RANGE_SAMPLE]
    floats = [(r, h) for r, h in zip(records, headers) if h.dtype.startswith("float")][:RANGE_SAMPLE]
    if deep:
        highest = max(int(_raw_pixels(r.path).max()) for r, _ in deep)
        if highest < LOW_BIT_DEPTH_MAX:
            warnings.append(
                f"16-bit images use values up to {highest} only (of 65535; checked {len(deep)} files): "
                f"the pixel rule round(v / 257) maps them to at most {round(highest / 257)} of 255, a "
                "nearly black image. Set dataset.stretch=percentile (or minmax) if that is not what you "
                "want to score."
            )
    for record, _ in floats:
        try:
            if reading is None:
                to_rgb_uint8(_raw_pixels(record.path), str(record.path))
            else:
                reading.read(record.path)
        except CorruptImageError as exc:
            problems.append(FileProblem(record, exc.reason, str(exc)))
    return warnings, problems


def _raw_pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() in TIFF_SUFFIXES:
        return tifffile.imread(path)
    with Image.open(path) as img:
        return np.asarray(img)


def scan(cfg: DatasetConfig, min_side: int = 1) -> DatasetScan:
    """List the set and check every file's header against what the job needs.

    ``min_side``: the smallest image side the model (its spatial multiple) and the metrics
    (SSIM's window, MS-SSIM's scales) can take; ``cfg.max_pixels`` the largest image.
    """
    root = resolve_root(cfg)
    listed = list_images(root, cfg.classes, cfg.limit_per_class)
    reading = RasterReading.from_config(cfg)
    records: list[ImageRecord] = []
    headers: list[ImageHeader] = []
    problems: list[FileProblem] = []
    for record in listed:
        try:
            header = read_header(record.path, reading)
        except CorruptImageError as exc:
            problems.append(FileProblem(record, exc.reason, str(exc)))
            continue
        size = (cfg.resize[0], cfg.resize[1]) if cfg.resize else (header.height, header.width)
        if header.height * header.width > cfg.max_pixels:
            problems.append(
                FileProblem(
                    record,
                    "too_large",
                    f"{record.path}: {header.height}x{header.width} has more pixels than dataset.max_pixels="
                    f"{cfg.max_pixels}; evaluate such scenes in tiles, or raise dataset.max_pixels",
                )
            )
        elif min(size) < min_side:
            problems.append(
                FileProblem(
                    record,
                    "too_small",
                    f"{record.path}: {size[0]}x{size[1]} is smaller than the minimum side {min_side} "
                    "(the model's spatial multiple and the metrics' windows)",
                )
            )
        else:
            records.append(record)
            headers.append(header)
    warnings, range_problems = _check_value_ranges(records, headers, reading)
    bad = {problem.record.index for problem in range_problems}
    problems = sorted([*problems, *range_problems], key=lambda problem: problem.record.index)
    kept = [(r, h) for r, h in zip(records, headers) if r.index not in bad]
    rotated = sum(h.rotated for _, h in kept)
    if rotated:
        warnings.append(
            f"{rotated} image(s) carry an EXIF rotation, which is not applied (as in the study's loaders)"
        )
    with_nodata = sum(h.nodata for _, h in kept)
    if with_nodata:
        warnings.append(
            f"{with_nodata} file(s) declare a nodata value: in image folders nodata pixels become 0 and "
            "are scored like any other pixel; dataset=scene masks them out of every metric"
        )
    if reading is not None and reading.band_mode == "each":
        kept, problems = _one_record_per_band(kept, problems, reading)
    sizes = [(cfg.resize[0], cfg.resize[1]) if cfg.resize else (h.height, h.width) for _, h in kept]
    labels = sorted({record.label for record in listed})
    return DatasetScan(
        root,
        [r for r, _ in kept],
        sizes,
        problems,
        ignored_files(root, labels),
        warnings,
        reading,
    )


def _one_record_per_band(
    kept: list[tuple[ImageRecord, ImageHeader]], problems: list[FileProblem], reading: RasterReading
) -> tuple[list[tuple[ImageRecord, ImageHeader]], list[FileProblem]]:
    """band_mode=each: every band of a usable file becomes a record; indices stay dense, in dataset order.

    A problem file keeps one (renumbered) record, so skipped files are still counted once.
    """
    items: list[tuple[ImageRecord, ImageHeader | None, FileProblem | None]] = [
        *((record, header, None) for record, header in kept),
        *((problem.record, None, problem) for problem in problems),
    ]
    items.sort(key=lambda item: item[0].index)
    expanded: list[tuple[ImageRecord, ImageHeader]] = []
    renumbered: list[FileProblem] = []
    for record, header, problem in items:
        if problem is not None:
            renumbered.append(
                dataclasses.replace(
                    problem, record=dataclasses.replace(record, index=len(expanded) + len(renumbered))
                )
            )
            continue
        assert header is not None
        for band in reading.file_bands(header.channels, str(record.path)):
            index = len(expanded) + len(renumbered)
            expanded.append(
                (
                    ImageRecord(index, band_image_id(record.image_id, band), record.label, record.path, band),
                    header,
                )
            )
    return expanded, renumbered


def dataset_limits(records: Sequence[ImageRecord], reading: RasterReading) -> dict[int, tuple[float, float]]:
    """``stretch_scope=dataset``: each band's limits from the valid pixels of every file (read once each).

    One pixel type across the set is required (a histogram or a sample per band is kept, never the pixels).
    """
    stats: dict[int, raster.BandStats] = {}
    dtypes: set[str] = set()
    paths = list(dict.fromkeys(record.path for record in records))
    for path in tqdm(paths, desc="stretch limits", unit="file", disable=len(paths) < 50):
        try:
            values, valid, dtype, bands = _decoded_bands(path, reading.chooser(str(path)))
        except raster.RasterInputError as exc:
            raise CorruptImageError(str(exc), exc.reason) from exc
        dtypes.add(dtype)
        if len(dtypes) > 1:
            raise CorruptImageError(
                f"dataset.stretch_scope=dataset needs one pixel type across the set, found {sorted(dtypes)} "
                f"(last: {path}); use dataset.stretch_scope=image"
            )
        for position, band in enumerate(bands):
            stats.setdefault(band, raster.BandStats(1, dtype)).update(values[position : position + 1], valid)
    limits = {}
    for band, band_stats in sorted(stats.items()):
        stretch = band_stats.stretch(reading.stretch, reading.percentiles, [band], "dataset", f"band {band}")
        limits[band] = (float(stretch.low[0]), float(stretch.high[0]))
    return limits


def problems_report(problems: Sequence[FileProblem], limit: int = 200) -> str:
    """Every problem file with its reason, one per line (the first ``limit`` of them)."""
    counts = Counter(problem.reason for problem in problems)
    lines = [
        f"{len(problems)} file(s) cannot be evaluated ("
        + ", ".join(f"{k}: {v}" for k, v in counts.items())
        + "):"
    ]
    lines += [f"  [{p.reason}] {p.message}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


@dataclass
class PreparedDataset:
    root: Path
    records: list[ImageRecord]
    skipped: list[tuple[ImageRecord, str, str]]  # (record, reason, message) found by the scan
    loader: DataLoader
    scan: DatasetScan

    @property
    def batches(self) -> SameSizeBatches:
        """The loader's batches, in order (``skip`` them to resume)."""
        sampler = self.loader.batch_sampler
        assert isinstance(sampler, SameSizeBatches)
        return sampler


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity, which SLURM and containers restrict), shared
    among torchrun's ranks on the node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cpus // ranks_on_node)


# On an H200, 8 workers decoded 7,178 JPEGs/s at 256 px and 1,064 at 600 px, where the eager
# SD2.1 VAE took 258 and 44 (experiments/throughput): more would only cost memory and start time.
MAX_AUTO_WORKERS = 8


def loader_workers(requested: int | None) -> int:
    """``dataset.num_workers``, or when it is unset ``usable_cpus``, at most ``MAX_AUTO_WORKERS``."""
    return requested if requested is not None else min(MAX_AUTO_WORKERS, usable_cpus())


def prepare(cfg: DatasetConfig, batch_size: int, pin_memory: bool, min_side: int = 1) -> PreparedDataset:
    """Scan the set (every header, before any work), then batch it; pixels are decoded in workers.

    Problem files stop the job here, all of them listed, unless ``dataset.skip_corrupt`` skips them.
    """
    found = scan(cfg, min_side)
    for warning in found.warnings:
        log.warning("dataset %s: %s", cfg.name, warning)
    if found.problems and not cfg.skip_corrupt:
        raise CorruptImageError(
            problems_report(found.problems) + "\n(set dataset.skip_corrupt=true to skip and count such files)"
        )
    for problem in found.problems:
        log.warning("skipping %s", problem.message)
    reading = found.reading
    if reading is not None and reading.stretch != "none" and reading.scope == "dataset" and found.records:
        reading = dataclasses.replace(reading, dataset_limits=dataset_limits(found.records, reading))
        found.reading = reading
    source = ImageFolderSource(found.records, cfg.resize, reading, cfg.degrade)
    loader = DataLoader(
        source,
        batch_sampler=SameSizeBatches(found.sizes, batch_size),
        num_workers=loader_workers(cfg.num_workers),
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    skipped = [(problem.record, problem.reason, problem.message) for problem in found.problems]
    return PreparedDataset(found.root, found.records, skipped, loader, found)
