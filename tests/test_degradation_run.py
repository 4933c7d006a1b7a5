"""Degraded inputs through the real loop: reference=clean scores the do-nothing baseline too;
saved reconstructions are the scored pixels; the study preset runs as a CLI sweep with its report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT, read_per_image
from tests.test_cli import run_cli
from tests.test_latents_run import run_in_process, run_overrides
from vaes4rs import files
from vaes4rs.config import DegradeConfig
from vaes4rs.data import read_image
from vaes4rs.degrade import degrade

NOISE = ("dataset=folder", "dataset.degrade.noise_sigma=0.2", "dataset.degrade.seed=3")


def psnr_zero_one(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR on [0, 1] of two uint8 images, written out here (not the code under test)."""
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


@pytest.fixture()
def degraded_runs(compose_conf: Callable, tiny_models: Path, image_folder: Path, tmp_path: Path) -> dict:
    model = tiny_models / "SD21-VAE"
    folder = (f"dataset.root={image_folder}",)
    return {
        reference: run_in_process(
            compose_conf,
            tmp_path / reference,
            run_overrides(
                model, *NOISE, *folder, f"metric.reference={reference}", "run.save_reconstructions=true"
            ),
        )
        for reference in ("clean", "input")
    } | {"root": tmp_path, "images": image_folder}


def test_reference_clean_scores_the_degraded_input_as_a_baseline(degraded_runs: dict) -> None:
    clean = read_per_image(degraded_runs["root"] / "clean" / files.PER_IMAGE_FILE)
    given = read_per_image(degraded_runs["root"] / "input" / files.PER_IMAGE_FILE)
    assert "input_psnr" in clean and "input_ssim" in clean and "input_psnr" not in given
    cfg = DegradeConfig(noise_sigma=0.2, seed=3)
    for i, image_id in enumerate(clean["image_id"]):
        original = read_image(degraded_runs["images"] / image_id)
        noisy = degrade(torch.from_numpy(original).permute(2, 0, 1)[None], [str(image_id)], cfg)[0]
        expected = psnr_zero_one(noisy.permute(1, 2, 0).numpy(), original)
        assert clean["input_psnr"][i] == pytest.approx(expected, rel=1e-6), image_id
    # the same reconstructions, scored against different references
    assert not np.allclose(clean["psnr"], given["psnr"])
    payload = degraded_runs["clean"]
    assert payload["degradation"]["noise_sigma"] == 0.2 and payload["degradation"]["reference"] == "clean"
    assert payload["baseline"]["label"] == "degraded input"
    assert payload["baseline"]["metrics"]["psnr"] == pytest.approx(np.mean(clean["input_psnr"]), rel=1e-12)
    assert "baseline" not in degraded_runs["input"]
    with (degraded_runs["root"] / "clean" / files.PER_CLASS_FILE).open() as handle:
        per_class = list(csv.DictReader(handle))
    forest = [row for row in per_class if row["class"] == "forest"][0]
    forest_rows = clean["class"] == "forest"
    assert float(forest["input_psnr"]) == pytest.approx(np.mean(clean["input_psnr"][forest_rows]), rel=1e-12)
    samples = degraded_runs["root"] / "clean" / files.SAMPLES_DIR
    assert sorted(p.name for p in samples.iterdir()) == ["inputs", "originals", "reconstructions"]


def test_saved_reconstructions_are_the_scored_pixels(degraded_runs: dict) -> None:
    """Re-scoring each saved PNG against its source gives per_image.csv's PSNR (quantize=none
    scores floats, so the PNG's rounding moves it a little: within 0.05 dB here)."""
    run = degraded_runs["root"] / "clean"
    saved = run / files.RECONSTRUCTIONS_DIR
    table = read_per_image(run / files.PER_IMAGE_FILE)
    pngs = sorted(saved.glob("*/*.png"))
    assert len(pngs) == len(table["image_id"]) == 6
    for i, image_id in enumerate(table["image_id"]):
        label, name = str(image_id).split("/")
        png = np.asarray(Image.open(saved / label / (Path(name).stem + ".png")))
        original = read_image(degraded_runs["images"] / image_id)
        assert png.shape == original.shape
        assert psnr_zero_one(png, original) == pytest.approx(table["psnr"][i], abs=0.05)
    card = (saved / "README.md").read_text()
    assert "SD21-VAE" in card and "6 PNG files in 2 class folders" in card and "noise" in card


@pytest.mark.slow
def test_the_study_preset_sweeps_and_its_report_plots(
    tiny_models: Path, image_folder: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "-m",
            "+experiment=degradation_study",
            *run_overrides(tiny_models / "SD21-VAE", "dataset=folder", f"dataset.root={image_folder}"),
            "dataset.limit_per_class=1",
            "hydra.sweep.dir=sweep",  # relative: the summary must still count each job once
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 job(s) launched, 4 done" in done.stdout + done.stderr
    results = sorted(sweep.glob(f"*/{files.RESULT_FILE}"))
    assert len(results) == 4
    assert all("dataset.degrade=" in path.parent.name for path in results)
    noise = {json.loads(p.read_text())["degradation"]["noise_sigma"] for p in results}
    assert noise == {0.0, 0.1, 0.2}
    report = subprocess.run(
        [sys.executable, "-m", "vaes4rs.report.degradation", str(sweep), "--out", str(tmp_path / "report")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    with (tmp_path / "report" / "degradation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["model"] for row in rows} >= {"SD21-VAE"} and (
        tmp_path / "report" / "degradation.png"
    ).is_file()
