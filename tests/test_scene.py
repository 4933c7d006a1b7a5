"""Whole scenes in tiles: tiling and blending, georeferenced outputs, masked metrics, seams, bad input.

Reference numbers are computed here from the written files and from the tiny model called
directly through diffusers, never taken from the payload under test.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from tests.conftest import needs_shared
from tests.test_cli import run_cli
from tests.test_raster import LANDSAT, NODATA, multispectral, stretched, write_geotiff
from vaes4rs import raster
from vaes4rs.config import RunConfig, validate
from vaes4rs.preflight import PreflightError
from vaes4rs.scene import (
    Grid,
    _Accumulators,
    _open_outputs,
    _score_and_write,
    axis_weights,
    check_scene,
    evaluate_scene,
    tile_starts,
)


@pytest.fixture(scope="module")
def base_cfg(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    """conf/dataset/scene.yaml composed once (Hydra is slow); tests copy it and change fields."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR
    from vaes4rs.config import register_configs

    register_configs()
    path = tmp_path_factory.mktemp("named") / "my_scene.tif"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = compose(
            "config",
            overrides=[
                "model=local",
                f"model.path={tiny_models}",
                "model.subfolder=SD21-VAE",
                "dataset=scene",
                f"dataset.path={path}",
                "logger=none",
                "run.device=cpu",
                "run.progress=false",
                "metric.lpips=false",
                "metric.fid=false",
                "metric.latent=mode",
            ],
        )
    cfg = validate(composed)
    assert (cfg.dataset.name, cfg.dataset.tile, cfg.dataset.overlap, cfg.dataset.blend) == (
        "my_scene.tif",
        512,
        64,
        True,
    )
    return cfg


def scene_cfg(base: RunConfig, path: Path, **dataset) -> RunConfig:
    cfg = copy.deepcopy(base)
    cfg.dataset.path = str(path)
    cfg.dataset.name = path.name
    cfg.run.batch_size = 8
    for key, value in {"tile": 32, "overlap": 8, **dataset}.items():
        setattr(cfg.dataset, key, value)
    return cfg


def read_tiles(out: Path) -> list[dict[str, str]]:
    with (out / "per_tile.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 32, 8), (64, 32, 0), (32, 32, 4), (791, 512, 64), (33, 32, 8)]
)
def test_tiles_cover_the_axis_evenly_with_the_overlap_asked_for(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    steps = np.diff(starts)
    assert (tile - steps >= overlap).all() and (np.ptp(steps) <= 1 if steps.size else True)
    if len(starts) > 2:  # one tile fewer could not keep the overlap
        assert (length - tile) / (len(starts) - 2) > tile - overlap


def test_blended_and_hard_mosaics_of_exact_tiles_give_the_scene_back(tmp_path: Path) -> None:
    grid = Grid(70, 90, 32, 8)
    image = np.random.default_rng(0).random((2, 70, 90)).astype(np.float32)
    accumulators = _Accumulators(tmp_path, 2, 70, 90)
    for tile in grid.tiles:
        accumulators.add(grid, tile, image[:, tile.y : tile.y + 32, tile.x : tile.x + 32])
    assert np.allclose(accumulators.mosaic(True, 0, 70), image, atol=1e-6)
    assert np.array_equal(accumulators.mosaic(False, 0, 70), image)
    coverage = np.zeros((70, 90))
    for tile in grid.tiles:  # the hard rule: every pixel from exactly one tile
        coverage[tile.y : tile.y + 32, tile.x : tile.x + 32] += grid.weight(tile, blend=False)
    assert (coverage == 1).all()
    first, second = axis_weights([0, 24], 32, 56, blend=True)  # two tiles, 8 px shared
    assert np.allclose(first[24:] + second[:8], 1.0) and (first[:24] == 1).all() and (second[8:] == 1).all()
    assert (
        0 < first[-1] < 0.05 and second[0] < 0.05
    )  # the window is smooth: it fades to ~0 at the tile's edge


def test_seam_figures_on_tiles_that_disagree_by_a_known_step(base_cfg: RunConfig, tmp_path: Path) -> None:
    """Flat gray scene, tiles reconstructed as gray + 0.02 on a checkerboard: a 5.1-level step at cuts."""
    path = write_geotiff(tmp_path / "flat.tif", np.full((3, 64, 96), 128, dtype=np.uint8))
    cfg = scene_cfg(base_cfg, path)
    grid = Grid(64, 96, 32, 8)
    accumulators = _Accumulators(tmp_path / "acc", 3, 64, 96)
    for tile in grid.tiles:
        accumulators.add(
            grid, tile, np.full((3, 32, 32), 128 / 255 + 0.02 * ((tile.row + tile.col) % 2), np.float32)
        )
    with rasterio.open(path) as src:
        stretch = raster.fixed_stretch("uint8", [1, 2, 3], str(path))
        scene = check_scene(cfg)[1]
        outputs = _open_outputs(tmp_path, scene, src, 3, "")
        sums = _score_and_write(cfg, src, grid, [1, 2, 3], stretch, accumulators, outputs, torch.float32)
        for handle in outputs.values():
            handle.close()
    hard, blended = sums[False].seams(), sums[True].seams()
    assert hard["cut_jump"] == pytest.approx(0.02 * 255, abs=1e-3)  # every cut separates the two offsets
    assert hard["other_jump"] == pytest.approx(0.0, abs=1e-3) and hard["jump_excess"] == pytest.approx(
        5.1, abs=1e-3
    )
    assert blended["cut_jump"] < 0.3 * hard["cut_jump"]  # the raised cosine spreads the step over the overlap
    n_pixels = 64 * 96
    assert sums[False].n == n_pixels and sums[False].abs.mean() / n_pixels == pytest.approx(5.1 / 2, rel=0.2)


def test_multispectral_scene_end_to_end(base_cfg: RunConfig, tiny_models: Path, tmp_path: Path) -> None:
    values = multispectral(72, 88, seed=3)
    values[:, :20, :30] = NODATA
    path = write_geotiff(tmp_path / "s2.tif", values, nodata=NODATA)
    out = tmp_path / "out"
    out.mkdir()
    payload = evaluate_scene(scene_cfg(base_cfg, path, bands=[4, 3, 2], stretch="percentile"), out)
    valid = np.all(values != NODATA, axis=0)
    source = values[[3, 2, 1]]
    expected_input = stretched(source, valid, 2.0, 98.0)
    lows_highs = [np.percentile(band[valid].astype(np.float64), [2.0, 98.0]) for band in source]

    with rasterio.open(path) as src, rasterio.open(out / "reconstruction.tif") as recon_file:
        assert (recon_file.crs, recon_file.transform) == (src.crs, src.transform)
        assert (recon_file.count, recon_file.dtypes[0]) == (3, "uint8")
        recon8 = recon_file.read().astype(np.float64)
        assert np.array_equal(recon_file.read_masks(1) > 0, valid)
    with rasterio.open(out / "abs_error.tif") as error_file:
        error = error_file.read(1)
        assert error_file.crs.to_epsg() == 32633
    assert np.isnan(error[~valid]).all() and np.isfinite(error[valid]).all()
    independent_abs = np.abs(recon8 - expected_input).mean(axis=0)
    assert np.abs(error[valid] - independent_abs[valid]).max() <= 0.5 + 1e-4  # the file rounds to 8 bit

    mse = (((recon8 - expected_input) / 255) ** 2)[:, valid].mean()
    assert payload["metrics"]["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=0.01)
    group = payload["radiometry"]["groups"]["b4+b3+b2"]
    assert np.allclose(np.c_[group["low"], group["high"]], lows_highs)
    low, high = lows_highs[0]
    back = low + recon8[0][valid] / 255 * (high - low)
    rmse = math.sqrt(np.mean((back - source[0][valid]) ** 2))
    assert payload["metrics"]["rmse_source_b4"] == pytest.approx(rmse, rel=0.02)
    assert payload["scene"]["valid_fraction"] == pytest.approx(valid.mean())
    assert payload["seams"]["b4+b3+b2"]["n_valid_pixels"] == valid.sum()
    assert payload["scene"]["grid"] == [3, 4] and payload["n_images"] == 12
    assert set(payload["protocol"]["not_computed"]) == set()  # lpips/fid were switched off

    # One fully valid tile, reconstructed independently by diffusers: its per-tile PSNR.
    from diffusers import AutoencoderKL

    rows = {(int(r["row"]), int(r["col"])): r for r in read_tiles(out)}
    tile = rows[(1, 2)]
    y, x = int(tile["y"]), int(tile["x"])
    assert float(tile["valid_fraction"]) == 1.0
    vae = AutoencoderKL.from_pretrained(tiny_models / "SD21-VAE").eval()
    pixels = torch.from_numpy(expected_input[:, y : y + 32, x : x + 32].astype(np.float32))[None]
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixels / 127.5 - 1).latent_dist.mode()).sample.clamp(-1, 1)
    tile_mse = ((recon + 1) / 2 - pixels / 255).double().pow(2).mean().item()
    assert float(tile["psnr"]) == pytest.approx(10 * math.log10(1 / tile_mse), abs=1e-3)
    corner = rows[(0, 0)]  # mostly nodata
    assert float(corner["valid_fraction"]) == pytest.approx(valid[:32, :32].mean())
    json.dumps(payload)  # metrics.json-ready


def test_unreferenced_raster_gives_plain_tiffs_and_blend_false_scores_the_hard_mosaic(
    base_cfg: RunConfig, tmp_path: Path, caplog
) -> None:
    path = write_geotiff(
        tmp_path / "plain.tif",
        multispectral(48, 40, seed=4, bands=3, top=255).astype(np.uint8),
        georeferenced=False,
    )
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.WARNING):
        payload = evaluate_scene(scene_cfg(base_cfg, path, blend=False), out)
    assert "plain TIFFs (not georeferenced)" in caplog.text
    assert payload["scene"]["georeferenced"] is False and "plain TIFF" in payload["scene"]["outputs_note"]
    with rasterio.open(out / "reconstruction.tif") as recon_file:
        assert recon_file.crs is None and recon_file.transform == Affine.identity()
    hard = payload["seams"]["b1+b2+b3"]["hard"]
    assert payload["metrics"]["psnr"] == hard["psnr"] != payload["seams"]["b1+b2+b3"]["blended"]["psnr"]


def test_each_band_of_a_scene_gets_its_own_pass_and_numbers(base_cfg: RunConfig, tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "ms.tif", multispectral(32, 40, seed=5, bands=3))
    out = tmp_path / "out"
    out.mkdir()
    payload = evaluate_scene(scene_cfg(base_cfg, path, band_mode="each", stretch="minmax", overlap=4), out)
    assert [f"psnr_b{b}" in payload["metrics"] for b in range(1, 4)] == [True] * 3
    assert payload["metrics"]["psnr"] == pytest.approx(
        np.mean([payload["groups"][f"b{b}"]["metrics"]["psnr"] for b in range(1, 4)])
    )
    for band in range(1, 4):
        with rasterio.open(out / f"reconstruction_b{band}.tif") as recon_file:
            assert recon_file.count == 1
    tiles = read_tiles(out)
    assert len(tiles) == 3 * 2 and tiles[-1]["tile_id"] == "ms.tif/r0c1@b3"
    assert [int(t["index"]) for t in tiles] == list(range(6))


def test_bad_scenes_are_refused_before_any_model_loads(base_cfg: RunConfig, tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "small.tif", multispectral(24, 40, seed=6))
    with pytest.raises(
        PreflightError, match=r"24x40 pixels, smaller than dataset.tile=32: set dataset.tile to at most 24"
    ):
        check_scene(scene_cfg(base_cfg, path, bands=[4, 3, 2]))
    path = write_geotiff(tmp_path / "ms.tif", multispectral(48, 48, seed=6))
    with pytest.raises(
        PreflightError, match=r"asks for band\(s\) \[12\], but the file has 8 band\(s\) \(valid: 1..8"
    ):
        check_scene(scene_cfg(base_cfg, path, bands=[12, 3, 2]))
    with pytest.raises(PreflightError, match=r"8 channels.*dataset.bands=\[r,g,b\]"):
        check_scene(scene_cfg(base_cfg, path))
    with pytest.raises(PreflightError, match=r"is not a file"):
        check_scene(scene_cfg(base_cfg, tmp_path / "missing.tif"))


def test_landsat_window_keeps_its_crs_and_transform(base_cfg: RunConfig, tmp_path: Path) -> None:
    needs_shared(LANDSAT)
    window = Window(40, 300, 96, 64)  # the scene's western edge: nodata frame and footprint
    with rasterio.open(LANDSAT) as src:
        profile = {
            **src.profile,
            "width": 96,
            "height": 64,
            "transform": window_transform(window, src.transform),
        }
        data = src.read(window=window)
        masked = src.read(window=window, masked=True)
    crop = tmp_path / "landsat_crop.tif"
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data)
    valid = ~np.any(np.ma.getmaskarray(masked), axis=0)
    assert 0.1 < valid.mean() < 0.9
    out = tmp_path / "out"
    out.mkdir()
    payload = evaluate_scene(scene_cfg(base_cfg, crop), out)
    with rasterio.open(out / "reconstruction.tif") as recon_file:
        assert recon_file.crs.to_epsg() == 32618 and recon_file.transform == profile["transform"]
        assert np.array_equal(recon_file.read_masks(1) > 0, valid)
    assert payload["scene"]["valid_fraction"] == pytest.approx(valid.mean())
    assert payload["radiometry"]["groups"]["b1+b2+b3"]["high"] == [255.0] * 3  # stretch=none on 8-bit


@pytest.mark.slow
def test_cli_scene_job(tiny_models: Path, tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "cli.tif", multispectral(48, 56, seed=7))
    out = tmp_path / "run"
    result = run_cli(
        [
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=FLUX2-VAE",
            "dataset=scene",
            f"dataset.path={path}",
            "dataset.bands=[4,3,2]",
            "dataset.stretch=percentile",
            "dataset.tile=32",
            "dataset.overlap=8",
            "logger=none",
            "run.device=cpu",
            "metric.lpips=false",
            "metric.fid=false",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["dataset"] == "cli.tif" and payload["config"]["dataset"]["bands"] == [4, 3, 2]
    assert {"hard", "blended"} <= set(payload["seams"]["b4+b3+b2"])
    assert (out / "reconstruction.tif").is_file() and (out / "abs_error.tif").is_file()
    assert not (out / ".scene_accumulators").exists()
