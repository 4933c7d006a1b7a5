"""Latent datasets: write a VAE's latents to shards, read them back lazily, decode them for scoring.

A latent directory holds

- ``shard-NNNNN.safetensors``: at most ``max_shard_bytes`` (about 1 GB) of latents, one entry
  per image keyed by its dataset index (``00000042``; ``00000042.range`` holds the uint8
  quantisation's per-channel offset and scale);
- ``index.csv``: one row per image in dataset order (image_id, class, shard, key, latent shape, the size it
  was encoded at, the source file's sha256, the bytes its entries take, and the memory
  layout the encoder returned the latent in, which decoding restores: CPU convolutions
  round differently in channels-last and contiguous layouts);
- ``latents.json``: model and its identity, latent policy, storage (dtype, quantisation,
  codec), source dataset, shards with their byte sizes, bytes and bits per pixel;
- ``README.md``: the dataset card, the same facts for people.

Every file is written under a temporary name and renamed into place (``os.replace``), so a
crash leaves each of them complete or absent. The index is rewritten after every shard and
lists only shards on disk; ``latents.json`` and the card come last, so a directory without
``latents.json`` is an export that did not finish, and reading it says so.

Latents are stored as the family's ``encode`` returns them (the raw encoder output, before
any scaling or shift factor; the card records both factors). A padded image's latent
covers the padded size; decoding crops back to the recorded size.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vaes4rs.config import Choice, DatasetConfig, DType, ModelConfig, ModelLoader
from vaes4rs.data import (
    DatasetScan,
    ImageFolderSource,
    ImageRecord,
    PreparedDataset,
    SameSizeBatches,
    loader_workers,
)
from vaes4rs.device import HostCopy
from vaes4rs.errors import InputError
from vaes4rs.models.adapter import NOISE_RULE, NonFiniteOutputError, Reconstruction, VAEAdapter

log = logging.getLogger(__name__)

FORMAT = "vaes4rs-latents"
FORMAT_VERSION = 1
INDEX_FILE = "index.csv"
META_FILE = "latents.json"
CARD_FILE = "README.md"
SHARD_NAME = "shard-{:05d}.safetensors"
MAX_SHARD_BYTES = 1_000_000_000
INDEX_COLUMNS = (
    "index",
    "image_id",
    "class",
    "shard",
    "key",
    "latent_shape",
    "height",
    "width",
    "source_sha256",
    "bytes",
    "layout",
)
# Relative change of a parameter tensor's mean |w| above which two models are different models;
# loading the same weights in bfloat16 instead of float32 moves it by at most 2**-9.
WEIGHTS_TOLERANCE = 1e-2


class StorageDType(Choice):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    uint8 = "uint8"  # per image and channel: offset and scale stored beside the codes


class LatentCodec(Choice):
    none = "none"
    zstd = "zstd"  # lossless, per latent, over byte planes (shuffled) for multi-byte dtypes


class LatentDirectoryError(InputError):
    """A latent directory that cannot be read or does not belong to the given model."""


@dataclass(frozen=True)
class Storage:
    """How latents are stored: a dtype, and a lossless codec on top (``uint8+zstd``)."""

    dtype: str = "float16"
    codec: str = "none"
    level: int = 10  # zstd level (1-22)

    @property
    def label(self) -> str:
        return self.dtype if self.codec == "none" else f"{self.dtype}+{self.codec}"

    @classmethod
    def parse(cls, label: str, level: int = 10) -> Storage:
        """``float16``, ``uint8+zstd``, ...: a clear error naming the valid parts otherwise."""
        dtype, _, codec = label.partition("+")
        if dtype not in StorageDType.__members__ or (codec or "none") not in LatentCodec.__members__:
            raise ValueError(
                f"unknown latent storage {label!r}: <dtype>[+<codec>] with dtype one of "
                f"{', '.join(StorageDType.__members__)} and codec one of {', '.join(LatentCodec.__members__)}"
            )
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be 1-22, got {level}")
        return cls(dtype, codec or "none", level)


# --- Packing one latent ------------------------------------------------------------------------


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _shuffle(raw: bytes, itemsize: int, inverse: bool = False) -> bytes:
    """Byte planes of a multi-byte array (all first bytes, then all second bytes): zstd finds
    the repeated exponent bytes of float16/bfloat16 much more easily laid out this way."""
    if itemsize == 1:
        return raw
    array = np.frombuffer(raw, dtype=np.uint8)
    shape = (itemsize, -1) if inverse else (-1, itemsize)
    return array.reshape(shape).T.tobytes()


def pack(z: torch.Tensor, storage: Storage) -> dict[str, torch.Tensor]:
    """One image's latent (C, ...) as the tensors stored for it, by key suffix ("" and ".range")."""
    z = z.detach().float().cpu()
    entries: dict[str, torch.Tensor] = {}
    if storage.dtype == "uint8":
        flat = z.reshape(z.shape[0], -1)
        low, high = flat.amin(dim=1), flat.amax(dim=1)
        scale = torch.where(high > low, (high - low) / 255, torch.ones_like(high))
        codes = ((flat - low[:, None]) / scale[:, None]).round().clamp(0, 255).to(torch.uint8)
        payload = codes.reshape(z.shape)
        entries[".range"] = torch.stack([low, scale])
    else:
        payload = z.to(_torch_dtype(storage.dtype))
        if not torch.isfinite(payload).all():
            raise ValueError(
                f"latent values (largest |z| = {z.abs().max().item():.4g}) do not fit {storage.dtype}; "
                "store them as bfloat16 or float32"
            )
    if storage.codec == "zstd":
        import zstandard

        raw = payload.contiguous().view(torch.uint8).numpy().tobytes()
        packed = zstandard.ZstdCompressor(level=storage.level).compress(_shuffle(raw, payload.element_size()))
        payload = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
    entries[""] = payload.contiguous()
    return entries


def unpack(entries: dict[str, torch.Tensor], storage: Storage, shape: Sequence[int]) -> torch.Tensor:
    """The float32 latent back from its stored tensors (exact for float32, bfloat16 and float16)."""
    payload = entries[""]
    dtype = _torch_dtype(storage.dtype)
    if storage.codec == "zstd":
        import zstandard

        itemsize = torch.empty((), dtype=dtype).element_size()
        raw = zstandard.ZstdDecompressor().decompress(payload.numpy().tobytes())
        payload = torch.frombuffer(bytearray(_shuffle(raw, itemsize, inverse=True)), dtype=torch.uint8)
        payload = payload.view(dtype).reshape(tuple(shape))
    if storage.dtype == "uint8":
        low, scale = entries[".range"]
        flat = payload.reshape(payload.shape[0], -1).float() * scale[:, None] + low[:, None]
        return flat.reshape(tuple(shape))
    return payload.float()


# --- Model identity ----------------------------------------------------------------------------


def model_identity(module: nn.Module) -> dict[str, Any]:
    """What makes a model this model: class, architecture config, and its weights' magnitudes.

    Weights are summarised (mean |w| per parameter tensor), not hashed, so the same weights
    loaded in another dtype still match while another checkpoint of the same architecture does not.
    """
    if hasattr(module, "config"):
        config = {k: v for k, v in dict(module.config).items() if not str(k).startswith("_")}
    else:
        config = {"variant": getattr(module, "variant", None)}
    text = json.dumps(config, sort_keys=True, default=str)
    with torch.no_grad():
        magnitudes = [float(p.detach().float().abs().mean()) for p in module.parameters()]
    return {
        "class": type(module).__name__,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "parameters": sum(p.numel() for p in module.parameters()),
        "weights_mean_abs": magnitudes,
    }


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two identities, in words; empty when they are the same model."""
    found = [
        f"{key}: {recorded.get(key)} vs {current.get(key)}"
        for key in ("class", "config_sha256", "parameters")
        if recorded.get(key) != current.get(key)
    ]
    if found:
        return found
    a, b = np.asarray(recorded["weights_mean_abs"]), np.asarray(current["weights_mean_abs"])
    changed = np.abs(a - b) > WEIGHTS_TOLERANCE * np.maximum(np.abs(a), 1e-12)
    if changed.any():
        found.append(f"weights: {int(changed.sum())} of {len(a)} parameter tensors differ")
    return found


# --- Writing -----------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, flush it to disk, then rename it into place.

    The file gets the permissions a plain ``open`` would give it (safetensors writes 0600).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def existing_export(root: Path) -> list[str]:
    """Files of a latent dataset (complete or interrupted) already in ``root``."""
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.name in (INDEX_FILE, META_FILE, CARD_FILE)]
    return sorted(names + [p.name for p in root.glob("shard-*.safetensors")])


@dataclass(frozen=True)
class LatentEntry:
    """One row of ``index.csv``."""

    index: int
    image_id: str
    label: str
    shard: str
    key: str
    shape: tuple[int, ...]
    height: int
    width: int
    sha256: str
    nbytes: int
    layout: str  # "channels_last" when the encoder returned the latent in that memory layout

    def row(self) -> list[Any]:
        """The entry as its ``index.csv`` row (INDEX_COLUMNS)."""
        shape = "x".join(str(s) for s in self.shape)
        return [
            self.index,
            self.image_id,
            self.label,
            self.shard,
            self.key,
            shape,
            self.height,
            self.width,
            self.sha256,
            self.nbytes,
            self.layout,
        ]


class LatentWriter:
    """Adds one image's latent at a time; a shard is written whenever the next would overflow it.

    ``meta`` (model, latent policy, source dataset, command, versions) goes into
    ``latents.json`` and the card with what the writer measures (shards, bytes, bpp).
    """

    def __init__(
        self,
        root: Path,
        storage: Storage,
        meta: dict[str, Any],
        max_shard_bytes: int = MAX_SHARD_BYTES,
        overwrite: bool = False,
    ) -> None:
        found = existing_export(root)
        if found and not overwrite:
            raise LatentDirectoryError(
                f"{root} already holds a latent dataset ({', '.join(found[:4])}); "
                "choose another directory or set export.overwrite=true"
            )
        root.mkdir(parents=True, exist_ok=True)
        for name in found:
            (root / name).unlink()
        for stale in root.glob(".*.tmp"):  # left by a crashed export
            stale.unlink()
        self.root, self.storage, self.meta = root, storage, meta
        self.max_shard_bytes = max_shard_bytes
        self.entries: list[LatentEntry] = []
        self.shards: dict[str, int] = {}  # shard name -> bytes on disk
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0

    @property
    def _shard_name(self) -> str:
        return SHARD_NAME.format(len(self.shards))

    def add(self, record: ImageRecord, latent: torch.Tensor, height: int, width: int, sha256: str) -> int:
        """Store one image's latent (C, ...); returns the bytes its entries take in the shard."""
        key = f"{record.index:08d}"
        tensors = {key + suffix: t for suffix, t in pack(latent, self.storage).items()}
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending.update(tensors)
        self._pending_bytes += nbytes
        shape = tuple(int(s) for s in latent.shape)
        layout = (
            "channels_last" if latent.dim() == 3 and shape[0] > 1 and latent.stride(0) == 1 else "contiguous"
        )
        self.entries.append(
            LatentEntry(
                record.index,
                record.image_id,
                record.label,
                self._shard_name,
                key,
                shape,
                height,
                width,
                sha256,
                nbytes,
                layout,
            )
        )
        return nbytes

    def _flush(self) -> None:
        name = self._shard_name
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "storage": self.storage.label}
        atomic_write(self.root / name, lambda tmp: save_file(self._pending, str(tmp), metadata=metadata))
        self.shards[name] = (self.root / name).stat().st_size
        self._pending, self._pending_bytes = {}, 0
        atomic_write(self.root / INDEX_FILE, self._write_index)

    def _write_index(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(entry.row() for entry in sorted(self.entries, key=lambda e: e.index))

    def close(self) -> dict[str, Any]:
        """Write the last shard, the index, ``latents.json`` and the card; returns ``latents.json``."""
        if not self.entries:
            raise LatentDirectoryError(f"no latents to write to {self.root}")
        if self._pending:
            self._flush()
        pixels = sum(e.height * e.width for e in self.entries)
        shard_bytes = sum(self.shards.values())
        index_bytes = (self.root / INDEX_FILE).stat().st_size
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **self.meta,
            "storage": storage_description(self.storage),
            "n_images": len(self.entries),
            "pixels": pixels,
            "classes": sorted({e.label for e in self.entries}),
            "shards": self.shards,
            "bytes": {
                "shards": shard_bytes,
                "payload": sum(e.nbytes for e in self.entries),
                "index": index_bytes,
            },
            "bytes_per_image": shard_bytes / len(self.entries),
            "bpp": 8 * shard_bytes / pixels,
            "bpp_with_index": 8 * (shard_bytes + index_bytes) / pixels,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        text = json.dumps(meta, indent=2, default=str) + "\n"
        atomic_write(self.root / META_FILE, lambda tmp: tmp.write_text(text))
        card = dataset_card(meta)
        atomic_write(self.root / CARD_FILE, lambda tmp: tmp.write_text(card))
        return meta


def storage_description(storage: Storage) -> dict[str, Any]:
    """The storage settings as ``latents.json`` records them (read back by ``LatentDataset``)."""
    out: dict[str, Any] = {"label": storage.label, "dtype": storage.dtype, "codec": storage.codec}
    if storage.dtype == "uint8":
        out["quantisation"] = (
            "per image and channel: offset = min, scale = (max - min) / 255 (1 when max = min), "
            "code = round((z - offset) / scale); decoded as code * scale + offset in float32. "
            "Offset and scale are stored as float32 in '<key>.range' (row 0 offset, row 1 scale)"
        )
    if storage.codec == "zstd":
        out["level"] = storage.level
        out["codec_detail"] = (
            "each entry's payload compressed on its own with zstd, after splitting multi-byte "
            "values into byte planes; stored as a 1-D uint8 tensor, shape in index.csv"
        )
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def dataset_card(meta: dict[str, Any]) -> str:
    """The dataset card (README.md): what the latents are, how they were made and how to read them."""
    model, latent, source, storage = meta["model"], meta["latent"], meta["source"], meta["storage"]
    where = model.get("path") or " ".join(
        filter(None, [model.get("repo"), model.get("subfolder") and f"(subfolder {model['subfolder']})"])
    )
    rows = [
        ("model", f"{model['name']} ({model['identity']['class']})"),
        ("weights", where or "-"),
        ("revision", _fmt(model.get("revision"))),
        ("compute dtype", model["dtype"]),
        (
            "latent policy",
            f"{latent['policy']}"
            + ("" if latent["deterministic"] else f" (seed {latent['seed']}; {NOISE_RULE})"),
        ),
        ("scaling factor", _fmt(model.get("scaling_factor"))),
        ("shift factor", _fmt(model.get("shift_factor"))),
        ("stored dtype", storage["dtype"]),
        ("codec", storage["codec"] + (f" (level {storage['level']})" if "level" in storage else "")),
        ("quantisation", storage.get("quantisation", "none")),
        ("images", str(meta["n_images"])),
        ("classes", str(len(meta["classes"]))),
        ("shards", str(len(meta["shards"]))),
        ("bytes on disk per image (shards)", f"{meta['bytes_per_image']:.1f}"),
        ("bits per pixel (shards)", f"{meta['bpp']:.4f}"),
        ("bits per pixel (shards + index)", f"{meta['bpp_with_index']:.4f}"),
        ("source dataset", f"{source['name']} ({source.get('repo') or source['root']})"),
        ("source revision", _fmt(source.get("revision"))),
        ("resize", _fmt(source.get("resize"))),
        ("licence", source["licence"]),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"""---
tags: [latents, remote-sensing, vaes4rs]
---
# Latents of {source["name"]} by {model["name"]}

Written by `vaes4rs.encode` (format {meta["format"]} v{meta["version"]}, {meta["created"]}).

| | |
|---|---|
{table}

Each latent is the raw encoder output of its image reflect-padded to a multiple of
{model["spatial_multiple"]} pixels, before any scaling or shift factor (a diffusion model's
latent is usually `(z - shift) * scale`). Decoding crops back to `index.csv`'s `height` x `width`.

## Files

- `shard-NNNNN.safetensors`: one entry per image, keyed by `index.csv`'s `key`
  (uint8 storage adds `<key>.range`).
- `index.csv`: {", ".join(INDEX_COLUMNS)}.
- `latents.json`: everything in this card, machine-readable, with the model's identity.

```python
from vaes4rs.latents import LatentDataset
latents = LatentDataset("<this directory>")
item = latents[0]  # {{"entry": LatentEntry(...), "latent": float32 tensor}}
```

## Command

```bash
{meta["command"]}
```
"""


# --- Reading -----------------------------------------------------------------------------------


def _read_index(path: Path) -> list[LatentEntry]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        LatentEntry(
            int(row["index"]),
            row["image_id"],
            row["class"],
            row["shard"],
            row["key"],
            tuple(int(s) for s in row["latent_shape"].split("x")),
            int(row["height"]),
            int(row["width"]),
            row["source_sha256"],
            int(row["bytes"]),
            row["layout"],
        )
        for row in rows
    ]


class LatentDataset(Dataset):
    """A latent directory as a torch Dataset: item ``i`` is ``{"entry", "latent"}`` (float32).

    Opening checks that the export finished and that every shard is on disk at its recorded
    size; shards are opened (memory-mapped) only when an item in them is first read, once per
    process, so DataLoader workers each open their own.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        meta_path, index_path = self.root / META_FILE, self.root / INDEX_FILE
        if not self.root.is_dir():
            raise LatentDirectoryError(f"latent directory {self.root} does not exist")
        if not meta_path.is_file():
            hint = (
                "its export did not finish (index.csv lists the shards written before it stopped)"
                if index_path.is_file()
                else "it is not a latent dataset written by python -m vaes4rs.encode"
            )
            raise LatentDirectoryError(f"{self.root}: no {META_FILE}; {hint}")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != FORMAT_VERSION:
            raise LatentDirectoryError(
                f"{meta_path}: format {self.meta.get('format')} v{self.meta.get('version')}, "
                f"this vaes4rs reads {FORMAT} v{FORMAT_VERSION}"
            )
        if not index_path.is_file():
            raise LatentDirectoryError(f"{self.root}: {INDEX_FILE} is missing")
        self.entries = _read_index(index_path)
        self._check_files()
        recorded = self.meta["storage"]
        self.storage = Storage(recorded["dtype"], recorded["codec"], recorded.get("level", 10))
        self._open: dict[str, Any] = {}

    def _check_files(self) -> None:
        shards: dict[str, int] = self.meta["shards"]
        problems = []
        for name, size in shards.items():
            path = self.root / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif path.stat().st_size != size:
                problems.append(f"{name} has {path.stat().st_size} bytes, {size} were written")
        unknown = sorted({e.shard for e in self.entries} - set(shards))
        if unknown:
            problems.append(f"{INDEX_FILE} names shard(s) not in {META_FILE}: {', '.join(unknown)}")
        if len(self.entries) != self.meta["n_images"]:
            problems.append(
                f"{INDEX_FILE} lists {len(self.entries)} images, {self.meta['n_images']} were written"
            )
        if problems:
            raise LatentDirectoryError(f"latent directory {self.root} is incomplete: " + "; ".join(problems))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # open shard handles stay in their process

    def __len__(self) -> int:
        return len(self.entries)

    def _shard(self, name: str) -> Any:
        if name not in self._open:
            self._open[name] = safe_open(str(self.root / name), framework="pt")
        return self._open[name]

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        shard = self._shard(entry.shard)
        stored = {"": shard.get_tensor(entry.key)}
        if self.storage.dtype == "uint8":
            stored[".range"] = shard.get_tensor(entry.key + ".range")
        return {"entry": entry, "latent": unpack(stored, self.storage, entry.shape)}

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) each image was encoded at, which decoding crops back to."""
        return [(e.height, e.width) for e in self.entries]

    @property
    def source_root(self) -> Path:
        return Path(self.meta["source"]["root"])

    def image_records(self, source_root: str | Path | None = None) -> list[ImageRecord]:
        """The source images as the data module's records (paths under ``source_root``)."""
        root = Path(source_root).expanduser() if source_root else self.source_root
        return [ImageRecord(e.index, e.image_id, e.label, root / e.image_id) for e in self.entries]

    def model_config(self) -> ModelConfig:
        """The recorded model, loadable with ``zoo.load_vae`` in the dtype it encoded in."""
        model = self.meta["model"]
        return ModelConfig(
            name=model["name"],
            loader=ModelLoader(model["loader"]),
            repo=model["repo"],
            subfolder=model["subfolder"],
            path=model["path"],
            revision=model["revision"],
            variant=model["variant"],
            dtype=DType(model["dtype"]),
        )

    def check_model(self, module: nn.Module) -> None:
        """Raise LatentDirectoryError unless ``module`` is the model that wrote these latents."""
        recorded = self.meta["model"]
        differences = identity_differences(recorded["identity"], model_identity(module))
        if differences:
            raise LatentDirectoryError(
                f"{self.root} holds latents of model '{recorded['name']}' ({recorded['identity']['class']}); "
                f"the model given ({type(module).__name__}) is another one ({'; '.join(differences)}). "
                f"Decode with the model that wrote them: {recorded.get('path') or recorded.get('repo')}"
            )


# --- Encoding and decoding a batch -------------------------------------------------------------


def encode_latents(adapter: VAEAdapter, images: torch.Tensor, image_ids: Sequence[str] = ()) -> torch.Tensor:
    """Latents of [-1, 1] images (B, 3, H, W), padded as ``reconstruct`` pads them.

    ``image_ids`` seed each image's noise when the policy samples (the adapter's rule), so a
    sampled export holds the latents ``vaes4rs.run`` would draw for the same images.
    """
    with torch.no_grad():
        padded, _ = adapter.pad(images.to(adapter.device, adapter.dtype))
        z = adapter.encode(padded, image_ids=image_ids)
    if not torch.isfinite(z).all():
        raise NonFiniteOutputError(
            f"model '{adapter.name}' in {z.dtype} produced non-finite latents; use model.dtype=float32"
        )
    return z


def decode_latents(
    adapter: VAEAdapter, latents: torch.Tensor, height: int, width: int, channels_last: bool = False
) -> torch.Tensor:
    """Reconstructions in [-1, 1] (float32) of stored latents, cropped to the encoded size.

    ``channels_last``: hand the decoder its input in the layout the encoder gave it (a CPU
    encoder may return a channels-last view), as convolutions round differently by layout;
    so a float32 export decodes bit for bit to ``VAEAdapter.reconstruct``'s output.
    """
    return start_decoding(adapter, latents, height, width, channels_last).checked()


def start_decoding(
    adapter: VAEAdapter, latents: torch.Tensor, height: int, width: int, channels_last: bool = False
) -> Reconstruction:
    """``decode_latents`` with its finiteness check left to the caller (it waits for the GPU)."""
    latents = latents.to(adapter.device, adapter.dtype, non_blocking=True)
    if channels_last:
        latents = latents.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = adapter.decode(latents)[..., :height, :width]
        images = out.float().clamp(-1.0, 1.0)
    problem = f"model '{adapter.name}' in {out.dtype} decoded non-finite values; use model.dtype=float32"
    return Reconstruction(images, HostCopy(torch.isfinite(out).all()), problem)


class _PairedSource(Dataset):
    """Item ``i``: a stored latent with its source image, whose file must still be the one encoded."""

    def __init__(self, latents: LatentDataset, records: list[ImageRecord]) -> None:
        self.latents = latents
        self.images = ImageFolderSource(records, latents.meta["source"].get("resize"))

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.latents[i]
        record = self.images.records[i]
        if not record.path.is_file():
            raise LatentDirectoryError(
                f"source image {record.path} of {self.latents.root} is missing; pass the folder "
                "holding the class folders as source_root"
            )
        if file_sha256(record.path) != item["entry"].sha256:
            raise LatentDirectoryError(f"source image {record.path} changed since its latent was written")
        image = self.images[i]
        if image["error"] is not None:
            raise image["error"]
        layout = item["entry"].layout
        return {"record": record, "image": image["image"], "latent": item["latent"], "layout": layout}


@dataclass
class DecodedBatch:
    """Source pixels, records and the reconstructions decoded from the stored latents."""

    images: torch.Tensor  # uint8 (B, 3, H, W), CPU: the source images as the export read them
    records: list[ImageRecord]  # index, image_id, label (class), path of each source image
    recon: torch.Tensor  # float32 in [-1, 1] (B, 3, H, W), on the adapter's device


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "records": [item["record"] for item in items],
        "images": torch.stack([item["image"] for item in items]),
        "latents": torch.stack([item["latent"] for item in items]),
        "layout": items[0]["layout"],
        "skipped": [],  # the run loop's batches list unreadable files; a source image never is skipped
    }


def _loader(
    latents: LatentDataset, records: list[ImageRecord], batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    return DataLoader(
        _PairedSource(latents, records),
        batch_sampler=SameSizeBatches(latents.sizes, batch_size),
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
    )


def model_problems(latents: LatentDataset, model: ModelConfig) -> list[str]:
    """Why ``model`` is not the one that wrote the latents, judged from its config (before loading).

    The weights' identity is checked again once the model is loaded (``check_model``).
    """
    recorded = latents.meta["model"]
    same_path = bool(model.path and recorded.get("path")) and (
        Path(model.path).expanduser().resolve() == Path(recorded["path"]).expanduser().resolve()
    )
    same_repo = bool(model.repo) and (model.repo, model.subfolder) == (
        recorded.get("repo"),
        recorded.get("subfolder"),
    )
    same_tiny = model.loader == "tiny" and not model.path and model.variant == recorded.get("variant")
    if same_path or same_repo or same_tiny:
        return []
    where = recorded.get("path") or f"{recorded.get('repo')}/{recorded.get('subfolder') or ''}"
    return [
        f"{latents.root} holds latents of model '{recorded['name']}' ({where}); model '{model.name}' cannot "
        f"decode them: run with model={recorded['name']} (or model.path={recorded.get('path')})"
    ]


def prepare_run(
    cfg: DatasetConfig, batch_size: int, pin_memory: bool
) -> tuple[LatentDataset, PreparedDataset]:
    """A latent directory as ``vaes4rs.run``'s dataset: each batch carries the stored latents
    and their source images (under ``dataset.path`` when they moved), every source file
    checked to exist up front.
    """
    latents = LatentDataset(cfg.root or "")
    records = latents.image_records(cfg.path)
    missing = [str(record.path) for record in records if not record.path.is_file()]
    if missing:
        shown = "\n  ".join(missing[:20]) + (
            f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise LatentDirectoryError(
            f"{len(missing)} source image(s) of {latents.root} are missing (set dataset.path=<folder "
            f"holding the class folders> if they moved):\n  {shown}"
        )
    scan = DatasetScan(latents.root, records, latents.sizes, [], {}, [])
    loader = _loader(latents, records, batch_size, loader_workers(cfg.num_workers), pin_memory)
    return latents, PreparedDataset(latents.root, records, [], loader, scan)


def decode_batches(
    latents: LatentDataset,
    adapter: VAEAdapter,
    batch_size: int,
    *,
    source_root: str | Path | None = None,
    num_workers: int = 0,
) -> Iterator[DecodedBatch]:
    """Decode every stored latent, batch by batch, with its source image to score it against.

    Batches hold images of one size in dataset order (``SameSizeBatches``), as ``vaes4rs.run``
    batches the images themselves, so a float32 export decoded with the export's batch size
    gives exactly ``adapter.reconstruct``'s output. Refuses latents of another model.
    """
    latents.check_model(adapter.module)
    records = latents.image_records(source_root)
    for batch in _loader(latents, records, batch_size, num_workers, adapter.device.type == "cuda"):
        height, width = batch["images"].shape[-2:]
        channels_last = batch["layout"] == "channels_last"
        recon = decode_latents(adapter, batch["latents"], int(height), int(width), channels_last)
        yield DecodedBatch(batch["images"], batch["records"], recon)
