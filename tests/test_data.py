from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tests.conftest import write_rgb
from vaes4rs import data
from vaes4rs.config import DatasetConfig
from vaes4rs.data import CorruptImageError, list_images, prepare, read_image, to_rgb_uint8


def test_order_is_classes_then_files_by_name(image_folder: Path) -> None:
    write_rgb(image_folder / "forest" / "a_first.png", 64, 64, seed=5)
    ids = [r.image_id for r in list_images(image_folder, None, None)]
    assert ids == [
        "forest/a_first.png",
        "forest/forest_0.png",
        "forest/forest_1.png",
        "forest/forest_2.png",
        "harbor/harbor_0.png",
        "harbor/harbor_1.png",
        "harbor/harbor_2.png",
    ]


def test_classes_and_limit_per_class(image_folder: Path) -> None:
    records = list_images(image_folder, ["harbor"], 2)
    assert [r.image_id for r in records] == ["harbor/harbor_0.png", "harbor/harbor_1.png"]
    with pytest.raises(ValueError, match=r"unknown class.*'desert'.*valid: \['forest', 'harbor'\]"):
        list_images(image_folder, ["desert"], None)


def test_missing_root_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope", None, None)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path / "empty", None, None)


def test_pixel_rule_for_odd_formats(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=-1))

    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])  # alpha dropped

    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_image(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))

    deep = (np.arange(8 * 8 * 3, dtype=np.uint32).reshape(8, 8, 3) * 340).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb")
    expected = np.round(deep / 257.0).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "deep.tif"), expected)
    ends = np.array([[0, 257, 65535]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ends.tif", ends)
    assert read_image(tmp_path / "ends.tif").tolist() == [[[0] * 3, [1] * 3, [255] * 3]]
    Image.fromarray(ends).save(tmp_path / "ends16.png")  # 16-bit grayscale PNG (mode I;16)
    assert read_image(tmp_path / "ends16.png").tolist() == [[[0] * 3, [1] * 3, [255] * 3]]


def test_pixel_rule_rejects_multispectral() -> None:
    with pytest.raises(CorruptImageError, match="5 channels.*Select three bands") as error:
        to_rgb_uint8(np.zeros((8, 8, 5), dtype=np.uint8), "x.tif")
    assert error.value.reason == "too_many_channels"


def test_corrupt_image_named_or_skipped(image_folder: Path) -> None:
    bad = image_folder / "forest" / "forest_9.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    cfg = DatasetConfig(name="scenes", source="folder", root=str(image_folder), num_workers=0)
    with pytest.raises(CorruptImageError, match=r"(?s)forest_9\.jpg.*skip_corrupt=true"):
        prepare(cfg, batch_size=4, pin_memory=False)
    cfg.skip_corrupt = True
    prepared = prepare(cfg, batch_size=4, pin_memory=False)
    assert [(r.path.name, reason) for r, reason, _ in prepared.skipped] == [("forest_9.jpg", "unreadable")]
    assert len(prepared.records) == 6


def test_truncated_jpeg_is_found_before_the_work(image_folder: Path) -> None:
    path = image_folder / "forest" / "forest_8.jpg"
    write_rgb(path, 64, 64, seed=3)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])  # header intact, pixels cut
    cfg = DatasetConfig(name="scenes", source="folder", root=str(image_folder), num_workers=0)
    with pytest.raises(CorruptImageError, match=r"(?s)\[truncated\].*forest_8.jpg"):
        prepare(cfg, batch_size=8, pin_memory=False)
    cfg.skip_corrupt = True
    prepared = prepare(cfg, batch_size=8, pin_memory=False)
    assert [(r.path.name, reason) for r, reason, _ in prepared.skipped] == [("forest_8.jpg", "truncated")]
    assert sum(len(b["records"]) for b in prepared.loader) == 6


def test_decoding_errors_come_back_from_workers_naming_the_file(image_folder: Path) -> None:
    """A file whose header passes but whose pixels do not decode: the batch carries the error."""
    path = image_folder / "forest" / "forest_8.png"
    write_rgb(path, 64, 64, seed=3)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20] = bytes(20)  # inside the pixel data: the header is intact
    path.write_bytes(bytes(data))
    cfg = DatasetConfig(name="scenes", source="folder", root=str(image_folder), num_workers=1)
    batches = list(prepare(cfg, batch_size=8, pin_memory=False).loader)
    ((record, error),) = [item for b in batches for item in b["skipped"]]
    assert record.path.name == "forest_8.png" and "forest_8.png" in str(error)
    assert isinstance(error, CorruptImageError)


@pytest.mark.parametrize(
    ("requested", "cpus", "ranks_on_node", "expected"),
    [
        (3, 64, None, 3),  # asked for: taken as is
        (0, 64, None, 0),
        (None, 2, None, 2),  # unset: the CPUs this process may use...
        (None, 64, None, data.MAX_AUTO_WORKERS),  # ...at most 8...
        (None, 16, "4", 4),  # ...shared among torchrun's ranks on the node...
        (None, 2, "8", 1),  # ...and at least one
    ],
)
def test_loader_workers(monkeypatch, requested, cpus, ranks_on_node, expected) -> None:
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if ranks_on_node is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks_on_node)
    assert data.loader_workers(requested) == expected


def test_unset_workers_reach_the_loader(image_folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = DatasetConfig(name="scenes", source="folder", root=str(image_folder))
    assert cfg.num_workers is None
    assert prepare(cfg, batch_size=2, pin_memory=False).loader.num_workers == 3


def test_batches_have_one_size_and_cover_every_image(image_folder: Path) -> None:
    cfg = DatasetConfig(name="scenes", source="folder", root=str(image_folder), num_workers=0)
    batches = list(prepare(cfg, batch_size=2, pin_memory=False).loader)
    seen = []
    for batch in batches:
        assert batch["images"].dtype == torch.uint8
        assert len({tuple(batch["images"].shape[-2:])}) == 1
        seen += [r.index for r in batch["records"]]
    assert sorted(seen) == list(range(6))
    sizes = {r.image_id: tuple(b["images"].shape[-2:]) for b in batches for r in b["records"]}
    assert sizes["harbor/harbor_1.png"] == (96, 96) and sizes["harbor/harbor_0.png"] == (150, 150)


def test_resize_option(image_folder: Path) -> None:
    cfg = DatasetConfig(
        name="scenes", source="folder", root=str(image_folder), num_workers=0, resize=[32, 48]
    )
    batches = list(prepare(cfg, batch_size=8, pin_memory=False).loader)
    assert len(batches) == 1 and tuple(batches[0]["images"].shape) == (6, 3, 32, 48)


def make_hub_snapshot(hf_home: Path, repo: str, commit: str = "0123abcd") -> Path:
    """A dataset snapshot in the Hugging Face cache layout (as `hf download` leaves it)."""
    repo_dir = hf_home / "hub" / f"datasets--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir / "snapshots" / commit


def test_hub_dataset_read_from_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub_constants

    snapshot = make_hub_snapshot(tmp_path, "blanchon/RESISC45")
    write_rgb(snapshot / "data" / "airplane" / "airplane_1.jpg", 64, 64, seed=1)
    write_rgb(snapshot / "data" / "beach" / "beach_1.jpg", 64, 64, seed=2)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = DatasetConfig(name="resisc45", source="hub", repo="blanchon/RESISC45", subdir="data", num_workers=0)
    prepared = prepare(cfg, batch_size=8, pin_memory=False)
    assert prepared.root == snapshot / "data"
    assert [r.image_id for r in prepared.records] == ["airplane/airplane_1.jpg", "beach/beach_1.jpg"]

    missing = DatasetConfig(name="aid", source="hub", repo="blanchon/AID", subdir="data")
    with pytest.raises(RuntimeError, match=r"blanchon/AID.*not in the Hugging Face cache.*hf download"):
        prepare(missing, batch_size=8, pin_memory=False)


def test_hub_zip_archive_is_extracted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    import huggingface_hub.constants as hub_constants

    snapshot = make_hub_snapshot(tmp_path, "torchgeo/ucmerced")
    snapshot.mkdir(parents=True)
    tif = tmp_path / "beach00.tif"
    tifffile.imwrite(tif, np.full((20, 24, 3), 7, dtype=np.uint8), photometric="rgb")
    with zipfile.ZipFile(snapshot / "UCMerced_LandUse.zip", "w") as zf:
        zf.write(tif, "UCMerced_LandUse/Images/beach/beach00.tif")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = DatasetConfig(
        name="ucmerced",
        source="hub",
        repo="torchgeo/ucmerced",
        archive="UCMerced_LandUse.zip",
        subdir="UCMerced_LandUse/Images",
        num_workers=0,
    )
    prepared = prepare(cfg, batch_size=8, pin_memory=False)
    (batch,) = list(prepared.loader)
    assert tuple(batch["images"].shape) == (1, 3, 20, 24) and int(batch["images"].max()) == 7
