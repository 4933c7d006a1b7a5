"""Every reconstruction of a run as a lossless PNG in the source's class layout, with a card.

The claim under test is that reconstructions could replace the originals as training data,
so they are written where a class-folder loader (``dataset=folder``, torchvision's
``ImageFolder``) reads them: ``<root>/<class>/<image stem>.png``. Each file is written to a
hidden temporary name and renamed, so a crash never leaves half a PNG under a real name; a
resumed run simply overwrites the files it writes again.

PNG encoding (about 20 ms per 256 px image on one core) would make the GPU wait for the host,
so files are encoded by a pool of threads (Pillow releases the GIL while it compresses) while
the loop goes on; ``flush`` waits until every queued file is on disk, as a checkpoint must.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vaes4rs.data import ImageRecord

CARD_FILE = "README.md"
CARD_KEYS = ("model", "protocol", "dataset")  # what every card must name
TMP_SUFFIX = ".tmp"
MAX_QUEUED = 256  # images waiting to be encoded at most: memory stays bounded (256 MB at 600 px)


def _tmp_path(path: Path) -> Path:
    """``.<name>.tmp`` beside ``path``: hidden, and not an image suffix, so loaders skip it."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def _save_png(pixels: np.ndarray, path: Path) -> None:
    tmp = _tmp_path(path)
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)


class ReconstructionWriter:
    """Writes ``<root>/<class>/<image stem>.png`` per image and, on ``close``, ``<root>/README.md``.

    ``card`` names at least the model, protocol and dataset (``CARD_KEYS``); any other entries
    (the source, a degradation, the dtype, ...) are listed in the card as given. ``threads``
    encode the PNGs.
    """

    def __init__(self, root: Path, card: dict[str, Any], threads: int = 1) -> None:
        missing = [key for key in CARD_KEYS if key not in card]
        if missing:
            raise ValueError(f"reconstruction card needs {', '.join(missing)} (has {', '.join(card)})")
        self.root = Path(root)
        self.card = dict(card)
        self._owners: dict[Path, str] = {}  # file -> the image id written there by this writer
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="reconstruction-png")
        self._queued: deque[Future] = deque()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, record: ImageRecord) -> Path:
        return self.root / record.label / f"{Path(record.image_id).stem}.png"

    def write(self, record: ImageRecord, recon_uint8: torch.Tensor) -> Path:
        """Queue one uint8 (3, H, W) reconstruction to be saved losslessly; returns its path.

        Two images of a class whose names differ only in suffix (``a.jpg``, ``a.png``) would share
        a file: that is an error naming both, never a silent overwrite.
        """
        if recon_uint8.dtype != torch.uint8 or recon_uint8.ndim != 3 or recon_uint8.shape[0] != 3:
            raise ValueError(
                f"{record.image_id}: expected a uint8 (3, H, W) reconstruction, "
                f"got {tuple(recon_uint8.shape)} {recon_uint8.dtype}"
            )
        path = self.path_for(record)
        owner = self._owners.setdefault(path, record.image_id)
        if owner != record.image_id:
            raise ValueError(f"{owner} and {record.image_id} would both be saved as {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = recon_uint8.detach().cpu().permute(1, 2, 0).contiguous().numpy()
        while len(self._queued) >= MAX_QUEUED:
            self._queued.popleft().result()
        self._queued.append(self._pool.submit(_save_png, pixels, path))
        return path

    def flush(self) -> None:
        """Wait until every queued file is on disk; a failed write is raised here."""
        while self._queued:
            self._queued.popleft().result()

    def close(self) -> Path:
        """Flush, remove temporaries a crash left, write the card (atomically); returns its path."""
        self.flush()
        self._pool.shutdown()
        for stray in self.root.glob(f"*/.*.png{TMP_SUFFIX}"):
            stray.unlink()
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        n_images = sum(1 for _ in self.root.glob("*/*.png"))
        path = self.root / CARD_FILE
        tmp = _tmp_path(path)
        tmp.write_text(self._card_text(n_images, len(classes)))
        os.replace(tmp, path)
        return path

    def _card_text(self, n_images: int, n_classes: int) -> str:
        def show(value: Any) -> str:
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)

        model, dataset = show(self.card["model"]), show(self.card["dataset"])
        facts = [f"- **{key}**: {show(value)}" for key, value in self.card.items()]
        facts.append(f"- **images**: {n_images} PNG files in {n_classes} class folders")
        return "\n".join(
            [
                f"# Reconstructions of {dataset} by {model}",
                "",
                f"Every image of `{dataset}`, as the run fed it to `{model}` (a degradation, if any, is",
                "listed below), encoded and decoded and saved as a lossless 8-bit RGB PNG in the source's",
                "class layout: `<class>/<image stem>.png`. Written by vaes4rs",
                "(`run.save_reconstructions=true`).",
                "",
                *facts,
                "",
                "## Loading",
                "",
                "```python",
                "from pathlib import Path",
                "",
                "import numpy as np",
                "from PIL import Image",
                "",
                'root = Path("<this folder>")',
                "for path in sorted(root.glob('*/*.png')):",
                "    label, pixels = path.parent.name, np.asarray(Image.open(path))  # (H, W, 3) uint8",
                "```",
                "",
                "The folder is also a class-folder dataset as it stands:",
                "`torchvision.datasets.ImageFolder(root)`, or",
                "`python -m vaes4rs.run dataset=folder dataset.root=<this folder>` to score it.",
                "",
            ]
        )
