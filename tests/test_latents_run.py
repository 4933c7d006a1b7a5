"""``vaes4rs.run dataset=latents``: stored latents decoded and scored like images, refusals named."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_per_image
from tests.test_latents import encode_cfg
from vaes4rs import files, preflight
from vaes4rs.config import ConfigError, validate
from vaes4rs.encode import export
from vaes4rs.evaluate import evaluate

# Per-image metrics only (no metric networks to plant), deterministic latents, float32.
SCORING = ("metric=standard", "metric.lpips=false", "metric.fid=false", "run.n_samples=2")


def run_overrides(model_dir: Path, *overrides: str) -> list[str]:
    return [
        "model=local",
        f"model.path={model_dir}",
        "dataset.num_workers=0",
        "run.device=cpu",
        "run.batch_size=2",
        "run.progress=false",
        "logger=none",
        *SCORING,
        *overrides,
    ]


def run_in_process(compose_conf: Callable, out_dir: Path, overrides: list[str]) -> dict:
    cfg = validate(compose_conf(overrides))
    out_dir.mkdir(parents=True)
    payload = evaluate(cfg, out_dir, preflight.check(cfg))
    assert payload is not None
    return payload


@pytest.fixture()
def float32_export(compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path) -> Path:
    cfg = encode_cfg(compose_conf, tiny_models / "SD21-VAE", image_folder, "export.dtype=float32")
    export(cfg, tmp_path / "latents", "test")
    return tmp_path / "latents"


def test_decoding_a_float32_export_scores_exactly_as_the_images(
    compose_conf, tiny_models: Path, image_folder: Path, float32_export: Path, tmp_path: Path
) -> None:
    model = tiny_models / "SD21-VAE"
    direct = run_in_process(
        compose_conf,
        tmp_path / "images",
        run_overrides(model, "dataset=folder", f"dataset.root={image_folder}"),
    )
    stored = run_in_process(
        compose_conf,
        tmp_path / "stored",
        run_overrides(model, "dataset=latents", f"dataset.root={float32_export}"),
    )
    images = read_per_image(tmp_path / "images" / files.PER_IMAGE_FILE)
    decoded = read_per_image(tmp_path / "stored" / files.PER_IMAGE_FILE)
    assert list(decoded) == list(images) and len(decoded["psnr"]) == 6
    for column in images:
        np.testing.assert_array_equal(decoded[column], images[column], err_msg=column)
    assert stored["metrics"] == direct["metrics"] and stored["n_images"] == 6
    assert stored["latents"]["storage"]["dtype"] == "float32" and stored["latents"]["bpp"] > 0
    assert stored["protocol"]["latent"] == "mode"  # the export's policy, not metric.latent
    assert (tmp_path / "stored" / files.SAMPLES_FILE).is_file()


def test_latents_of_another_model_are_refused_before_loading(
    compose_conf, tiny_models: Path, float32_export: Path
) -> None:
    cfg = validate(
        compose_conf(
            run_overrides(tiny_models / "FLUX2-VAE", "dataset=latents", f"dataset.root={float32_export}")
        )
    )
    with pytest.raises(preflight.PreflightError, match="holds latents of model 'SD21-VAE'.*cannot decode"):
        preflight.check(cfg)


def test_moved_source_images_are_listed_and_found_with_dataset_path(
    compose_conf, tiny_models: Path, image_folder: Path, float32_export: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.move(image_folder, moved)
    overrides = run_overrides(tiny_models / "SD21-VAE", "dataset=latents", f"dataset.root={float32_export}")
    with pytest.raises(preflight.PreflightError, match=r"6 source image\(s\) .* are missing.*dataset.path="):
        preflight.check(validate(compose_conf(overrides)))
    payload = run_in_process(compose_conf, tmp_path / "run", [*overrides, f"dataset.path={moved}"])
    assert payload["n_images"] == 6


def test_degrading_stored_latents_is_a_config_error(compose_conf, tiny_models: Path, tmp_path: Path) -> None:
    overrides = run_overrides(
        tiny_models / "SD21-VAE",
        "dataset=latents",
        f"dataset.root={tmp_path}",
        "dataset.degrade.noise_sigma=0.1",
    )
    with pytest.raises(ConfigError, match="dataset.degrade applies to images, not to stored latents"):
        validate(compose_conf(overrides))
