"""Saved reconstructions: lossless round trip, the source's class layout, atomic writes, the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaes4rs.data import ImageRecord
from vaes4rs.reconstructions import ReconstructionWriter

CARD = {"model": "flux2", "protocol": "standard", "dataset": "resisc45", "source": "blanchon/RESISC45"}


def record(index: int, image_id: str) -> ImageRecord:
    label = image_id.split("/")[0]
    return ImageRecord(index, image_id, label, Path("/data") / image_id)


def random_image(seed: int, height: int = 20, width: int = 28) -> torch.Tensor:
    """Every 8-bit level is possible: a lossy or range-shifting writer would show."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("threads", [1, 3])
def test_round_trip_is_bit_exact_in_the_class_layout(tmp_path: Path, threads: int) -> None:
    writer = ReconstructionWriter(tmp_path / "recon", CARD, threads=threads)
    images = {
        "airplane/airplane_001.jpg": random_image(0),
        "airplane/airplane_002.tif": random_image(1, 33, 17),
        "beach/beach_010.png": random_image(2),
    }
    for index, (image_id, image) in enumerate(images.items()):
        writer.write(record(index, image_id), image)
    writer.close()
    expected_files = {
        "airplane/airplane_001.png",
        "airplane/airplane_002.png",
        "beach/beach_010.png",
    }
    written = {p.relative_to(tmp_path / "recon").as_posix() for p in (tmp_path / "recon").rglob("*.png")}
    assert written == expected_files
    for image_id, image in images.items():
        stem = image_id.rsplit(".", 1)[0]
        assert np.array_equal(read_png(tmp_path / "recon" / f"{stem}.png"), image.permute(1, 2, 0).numpy())
    assert not [p for p in (tmp_path / "recon").rglob("*") if p.name.startswith(".")]


def test_a_rerun_overwrites_and_crash_leftovers_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "recon"
    first = ReconstructionWriter(root, CARD)
    first.write(record(0, "forest/forest_1.jpg"), random_image(3))
    first.flush()  # the earlier process got this file on disk
    # what a crash mid-write leaves: a half temporary, never a half PNG under the real name
    (root / "forest" / ".forest_2.png.tmp").write_bytes(b"\x89PNG\r\n")
    again = ReconstructionWriter(root, CARD)
    again.write(record(0, "forest/forest_1.jpg"), random_image(4))
    again.close()
    assert np.array_equal(
        read_png(root / "forest" / "forest_1.png"), random_image(4).permute(1, 2, 0).numpy()
    )
    assert sorted(p.name for p in (root / "forest").iterdir()) == ["forest_1.png"]


def test_the_card_names_model_protocol_dataset_count_and_loading(tmp_path: Path) -> None:
    root = tmp_path / "recon"
    writer = ReconstructionWriter(root, {**CARD, "degradation": {"kind": "noise", "strength": 0.1}})
    for index in range(3):
        writer.write(record(index, f"c{index % 2}/img_{index}.jpg"), random_image(index))
    card = writer.close()
    assert card == root / "README.md"
    text = card.read_text()
    for fact in ("flux2", "standard", "resisc45", "blanchon/RESISC45", '"strength": 0.1'):
        assert fact in text
    assert "**images**: 3 PNG files in 2 class folders" in text
    assert "ImageFolder" in text and "Image.open" in text


def test_names_that_collide_and_bad_tensors_are_refused(tmp_path: Path) -> None:
    writer = ReconstructionWriter(tmp_path, CARD)
    writer.write(record(0, "lake/lake_1.jpg"), random_image(0))
    with pytest.raises(ValueError, match="lake/lake_1.jpg and lake/lake_1.png"):
        writer.write(record(1, "lake/lake_1.png"), random_image(1))
    with pytest.raises(ValueError, match="uint8"):
        writer.write(record(2, "lake/lake_2.jpg"), random_image(2).float())
    with pytest.raises(ValueError, match="protocol"):
        ReconstructionWriter(tmp_path, {"model": "flux2", "dataset": "aid"})


def test_a_failed_write_is_raised_by_flush_and_close(tmp_path: Path) -> None:
    root = tmp_path / "recon"
    (root / "forest" / "forest_1.png").mkdir(parents=True)  # a folder where the file must go
    (root / "forest" / "forest_1.png" / "inside").write_text("keeps the folder from being replaced")
    writer = ReconstructionWriter(root, CARD, threads=2)
    writer.write(record(0, "forest/forest_1.jpg"), random_image(0))  # queued: no error yet
    with pytest.raises(OSError):
        writer.flush()
    writer.write(record(2, "forest/forest_2.jpg"), random_image(2))
    writer.close()  # the rest is written
    written = read_png(root / "forest" / "forest_2.png")
    assert np.array_equal(written, random_image(2).permute(1, 2, 0).numpy())
