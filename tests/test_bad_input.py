"""Bad or odd input, each found before the work with its reason, never silently scored."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import write_rgb
from vaes4rs import files, rundir
from vaes4rs.config import DatasetConfig, ModelConfig, validate
from vaes4rs.data import CorruptImageError, list_images, prepare, scan
from vaes4rs.models.zoo import model_problems
from vaes4rs.preflight import PreflightError, check


def truncated_jpeg(folder: Path) -> Path:
    path = folder / "cut.jpg"
    write_rgb(path, 64, 64, seed=1)
    path.write_bytes(path.read_bytes()[:-200])
    return path


def eight_band_tiff(folder: Path) -> Path:
    path = folder / "bands.tif"
    tifffile.imwrite(
        path, np.zeros((8, 32, 32), dtype=np.uint16), photometric="minisblack", planarconfig="separate"
    )
    return path


def int16_tiff(folder: Path) -> Path:
    path = folder / "signed.tif"
    tifffile.imwrite(path, np.zeros((32, 32), dtype=np.int16))
    return path


def tiny_png(folder: Path) -> Path:
    path = folder / "tiny.png"
    write_rgb(path, 5, 5, seed=2)
    return path


def bomb_png(folder: Path) -> Path:
    """14000 x 14000 pixels: over Pillow's decompression-bomb limit, a few kB on disk."""
    path = folder / "bomb.png"
    Image.new("1", (14000, 14000)).save(path)
    return path


def non_utf8_name(folder: Path) -> Path:
    path = Path(os.fsdecode(os.fsencode(str(folder)) + b"/bad\xff.png"))
    write_rgb(path, 32, 32, seed=3)
    return path


def float_out_of_range(folder: Path) -> Path:
    path = folder / "reflectance.tif"
    tifffile.imwrite(path, np.full((32, 32, 3), 1.7, dtype=np.float32), photometric="rgb")
    return path


def not_an_image(folder: Path) -> Path:
    path = folder / "fake.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated JPEG": (truncated_jpeg, "truncated"),
    "8-band TIFF": (eight_band_tiff, "too_many_channels"),
    "int16 TIFF": (int16_tiff, "unsupported_pixel_type"),
    "5x5 image": (tiny_png, "too_small"),
    "decompression bomb": (bomb_png, "too_large"),
    "non-UTF-8 file name": (non_utf8_name, "bad_file_name"),
    "float outside [0, 1]": (float_out_of_range, "out_of_range"),
    "not an image": (not_an_image, "unreadable"),
}


@pytest.fixture()
def good_folder(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for label in ("forest", "harbor"):
        for i in range(2):
            write_rgb(root / label / f"{label}_{i}.png", 32, 32, seed=i)
    return root


def folder_cfg(root: Path, **kwargs) -> DatasetConfig:
    return DatasetConfig(name="set", source="folder", root=str(root), num_workers=0, **kwargs)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_each_bad_file_is_found_by_the_scan_with_its_reason(good_folder: Path, case: str) -> None:
    make, reason = BAD_FILES[case]
    bad = make(good_folder / "forest")
    found = scan(folder_cfg(good_folder), min_side=16)
    assert [(p.record.path.name, p.reason) for p in found.problems] == [(bad.name, reason)]
    assert len(found.records) == 4  # the good ones are untouched


def test_every_problem_is_listed_at_once_then_skipped_and_counted(good_folder: Path) -> None:
    made = {make(good_folder / "harbor").name: reason for make, reason in BAD_FILES.values()}
    with pytest.raises(CorruptImageError) as error:
        prepare(folder_cfg(good_folder), batch_size=4, pin_memory=False, min_side=16)
    message = str(error.value)
    assert message.startswith(f"{len(made)} file(s) cannot be evaluated")
    for name, reason in made.items():
        assert f"[{reason}]" in message, reason
        if reason != "bad_file_name":  # that one is named with its undecodable byte escaped
            assert name in message, name
    prepared = prepare(
        folder_cfg(good_folder, skip_corrupt=True), batch_size=4, pin_memory=False, min_side=16
    )
    assert sorted(reason for _, reason, _ in prepared.skipped) == sorted(made.values())
    assert sum(len(batch["records"]) for batch in prepared.loader) == 4


def test_uint16_that_uses_twelve_bits_is_warned_about(good_folder: Path, caplog) -> None:
    tifffile.imwrite(good_folder / "forest" / "s2.tif", np.full((32, 32, 3), 3000, dtype=np.uint16))
    with caplog.at_level(logging.WARNING):
        prepare(folder_cfg(good_folder), batch_size=4, pin_memory=False)
    assert "values up to 3000 only" in caplog.text and "at most 12 of 255" in caplog.text


def test_webp_and_bmp_are_read_and_other_files_counted(good_folder: Path) -> None:
    pixels = write_rgb(good_folder / "forest" / "x.png", 32, 32, seed=9)
    (good_folder / "forest" / "x.png").unlink()
    Image.fromarray(pixels).save(good_folder / "forest" / "lossless.webp", lossless=True)
    Image.fromarray(pixels).save(good_folder / "forest" / "plain.bmp")
    (good_folder / "forest" / "notes.txt").write_text("hello")
    (good_folder / "harbor" / "meta.xml").write_text("<x/>")
    found = scan(folder_cfg(good_folder))
    names = [r.path.name for r in found.records]
    assert "lossless.webp" in names and "plain.bmp" in names
    assert found.ignored == {".txt": 1, ".xml": 1}
    batches = list(prepare(folder_cfg(good_folder), batch_size=8, pin_memory=False).loader)
    decoded = {r.path.name: b["images"][i] for b in batches for i, r in enumerate(b["records"])}
    for name in ("lossless.webp", "plain.bmp"):
        assert np.array_equal(decoded[name].permute(1, 2, 0).numpy(), pixels), name


def test_a_root_one_level_too_high_names_the_folders_it_meant(good_folder: Path) -> None:
    write_rgb(good_folder.parent / "scenes" / "loose.png", 32, 32, seed=4)  # a class folder with one file
    with pytest.raises(FileNotFoundError, match=r"one level too high.*dataset.root=.*set"):
        list_images(good_folder.parent, None, None)


def test_empty_classes_warn_or_fail_when_asked_for(good_folder: Path, caplog) -> None:
    (good_folder / "desert").mkdir()
    with caplog.at_level(logging.WARNING):
        records = list_images(good_folder, None, None)
    assert len(records) == 4 and "desert" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"\['desert'\].*hold no images"):
        list_images(good_folder, ["desert", "forest"], None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+run.bach_size=4", r"unknown key run.bach_size \(did you mean run.batch_size\?\)"),
        ("dataset.limit_per_class=-1", r"dataset.limit_per_class must be a positive integer, got -1"),
        ("dataset.limit_per_class=0", r"dataset.limit_per_class must be a positive integer, got 0"),
        ("dataset.resize=[0,0]", r"dataset.resize must be \[H, W\] with positive sides"),
        ("dataset.classes=[]", r"dataset.classes is an empty list"),
        ("run.batch_size=0", r"run.batch_size must be a positive integer"),
    ],
)
def test_settings_hydra_lets_through_are_refused(compose_conf, tmp_path, override: str, message: str) -> None:
    cfg = compose_conf(
        [override, "model=local", f"model.path={tmp_path}", "dataset=folder", f"dataset.root={tmp_path}"]
    )
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def write_tiny_vae(folder: Path) -> None:
    import diffusers

    from tests.tiny_models import TINY_MODELS

    class_name, kwargs = TINY_MODELS["SD21-VAE"]
    getattr(diffusers, class_name)(**kwargs).save_pretrained(folder)


def test_model_folder_problems_are_said_in_the_folders_terms(tmp_path: Path) -> None:
    def problems(path: Path, **kwargs) -> str:
        return " ".join(model_problems(ModelConfig(name="m", path=str(path), **kwargs), offline=True))

    assert "model.path" in problems(tmp_path / "nope") and "does not exist" in problems(tmp_path / "nope")
    pipeline = tmp_path / "pipeline"
    write_tiny_vae(pipeline / "vae")
    assert "add model.subfolder=vae" in problems(pipeline)
    assert problems(pipeline, subfolder="vae") == ""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert f"model config {broken / 'config.json'} is not valid JSON" in problems(broken)
    pickled = tmp_path / "pickled"
    write_tiny_vae(pickled)
    (pickled / "diffusion_pytorch_model.safetensors").rename(pickled / "diffusion_pytorch_model.bin")
    assert "model.allow_pickle=true" in problems(pickled)
    assert problems(pickled, allow_pickle=True) == ""


def test_preflight_reports_every_missing_thing_in_one_message(compose_conf, tmp_path: Path) -> None:
    cfg = validate(
        compose_conf(
            [
                "model=local",
                f"model.path={tmp_path / 'no_model'}",
                "dataset=folder",
                f"dataset.root={tmp_path / 'no_images'}",
                "run.device=cuda" if not __import__("torch").cuda.is_available() else "run.device=cpu",
                "metric.missing_weights=error",
                "metric.weights.inception=/no/such/inception.pth",
                "logger=none",
            ]
        )
    )
    with pytest.raises(PreflightError) as error:
        check(cfg)
    lines = str(error.value).splitlines()
    assert "cannot start" in lines[0]
    text = str(error.value)
    assert "no_model" in text and "no_images" in text and "metric.weights.inception" in text
    if not __import__("torch").cuda.is_available():
        assert "run.device=cuda but no CUDA device" in text


def test_a_job_directory_holds_only_one_config(tmp_path: Path) -> None:
    job = tmp_path / "job"
    paper = {"metric": {"protocol": "paper"}}
    with rundir.claim(job, paper):
        (job / files.RESULT_FILE).write_text("{}")
    with pytest.raises(
        rundir.RunDirectoryError, match=r"another config \(metric.protocol: 'paper' -> 'standard'\)"
    ):
        with rundir.claim(job, {"metric": {"protocol": "standard"}}):
            pass
    assert (job / files.RESULT_FILE).read_text() == "{}"  # refused: nothing touched
    (job / files.ERROR_FILE).write_text("{}")  # a stale failure of the same config
    with rundir.claim(job, paper):
        assert not (job / files.ERROR_FILE).exists() and not (job / files.RESULT_FILE).exists()
        with pytest.raises(rundir.RunDirectoryError, match="another vaes4rs run is writing"):
            with rundir.claim(job, paper):
                pass
    assert json.loads((job / files.RUN_CONFIG_FILE).read_text()) == paper


def test_results_without_a_recorded_config_are_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / files.PER_IMAGE_FILE).write_text("index\n0\n")
    with pytest.raises(rundir.RunDirectoryError, match="without a recorded config"):
        with rundir.claim(tmp_path, {"a": 1}):
            pass
    assert (tmp_path / files.PER_IMAGE_FILE).read_text() == "index\n0\n"
