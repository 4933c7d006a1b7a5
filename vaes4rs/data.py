"""Image sources: class folders from a hub snapshot or a local directory, read as uint8 RGB.

Pixel rule (applied to every file, documented in the README):
- 8-bit images are kept as they are; 16-bit images are scaled linearly to 8 bit,
  ``round(v / 257)`` (0 -> 0, 65535 -> 255); float images are taken as [0, 1] and become
  ``round(clip(v, 0, 1) * 255)``.
- Grayscale is replicated to three channels; an alpha channel is dropped (not composited);
  palette images are expanded to RGB through their palette. More than four channels
  (multispectral) is an error: pick three bands first.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from vaes4rs.config import DatasetConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


class CorruptImageError(RuntimeError):
    """An image file that cannot be decoded; names the file."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of the set, in dataset order (classes by name, then files by name)."""

    index: int
    image_id: str  # "<class>/<file name>", unique within the dataset
    label: str
    path: Path


def to_rgb_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Apply the module's pixel rule to an HxW or HxWxC array; returns HxWx3 uint8."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF (C, H, W)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"{source}: unsupported image shape {array.shape}")
    channels = array.shape[-1]
    if channels > 4:
        raise ValueError(
            f"{source}: {channels} channels; vaes4rs reads RGB, grayscale or RGBA images. "
            "Select three bands (e.g. with rasterio or gdal_translate -b) first."
        )
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        pixels = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(
            f"{source}: pixel type {array.dtype} is not supported (uint8, uint16, float in [0,1])"
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
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc
    return to_rgb_uint8(array, str(path))


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header without decoding pixels."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 2, 3, 4):
                return int(shape[1]), int(shape[2])
            return int(shape[0]), int(shape[1])
        with Image.open(path) as img:
            width, height = img.size
            return height, width
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, IndexError) as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc


def list_images(root: Path, classes: Sequence[str] | None, limit_per_class: int | None) -> list[ImageRecord]:
    """Class folders sorted by name, files sorted by name: the order every result uses."""
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
    records: list[ImageRecord] = []
    for label in chosen:
        files = sorted(
            p for p in (root / label).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if limit_per_class is not None:
            files = files[:limit_per_class]
        for path in files:
            records.append(ImageRecord(len(records), f"{label}/{path.name}", label, path))
    if not records:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}")
    return records


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
        raise RuntimeError(
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
    """Yields one record's pixels (CHW uint8) or, for a corrupt file when skipping, None."""

    def __init__(self, records: list[ImageRecord], resize: Sequence[int] | None, skip_corrupt: bool) -> None:
        self.records = records
        self.resize = tuple(resize) if resize else None
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            pixels = read_image(record.path)
        except CorruptImageError as exc:
            if not self.skip_corrupt:
                raise
            return {"record": record, "image": None, "error": str(exc)}
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        if self.resize and tuple(image.shape[1:]) != self.resize:
            from torchvision.transforms.v2.functional import resize

            image = resize(image, list(self.resize), antialias=True)
        return {"record": record, "image": image, "error": None}


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

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate(items: list[dict]) -> dict:
    good = [item for item in items if item["image"] is not None]
    return {
        "images": torch.stack([item["image"] for item in good]) if good else None,
        "records": [item["record"] for item in good],
        "skipped": [(item["record"], item["error"]) for item in items if item["image"] is None],
    }


@dataclass
class PreparedDataset:
    root: Path
    records: list[ImageRecord]
    skipped: list[tuple[ImageRecord, str]]  # unreadable headers, found while indexing
    loader: DataLoader


def prepare(cfg: DatasetConfig, batch_size: int, pin_memory: bool) -> PreparedDataset:
    """List, size-check and batch the dataset; headers are read here, pixels in workers."""
    root = resolve_root(cfg)
    records = list_images(root, cfg.classes, cfg.limit_per_class)
    sizes: list[tuple[int, int]] = []
    kept: list[ImageRecord] = []
    skipped: list[tuple[ImageRecord, str]] = []
    for record in records:
        try:
            size = image_size(record.path)
        except CorruptImageError as exc:
            if not cfg.skip_corrupt:
                raise CorruptImageError(
                    f"{exc} (set dataset.skip_corrupt=true to skip and count such files)"
                ) from exc
            log.warning("skipping corrupt image: %s", exc)
            skipped.append((record, str(exc)))
            continue
        kept.append(record)
        sizes.append(tuple(cfg.resize) if cfg.resize else size)  # type: ignore[arg-type]
    source = ImageFolderSource(kept, cfg.resize, cfg.skip_corrupt)
    loader = DataLoader(
        source,
        batch_sampler=SameSizeBatches(sizes, batch_size),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    return PreparedDataset(root, kept, skipped, loader)
