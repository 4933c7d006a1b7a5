"""Rasters in image folders: band selection, stretches (and their inverse), nodata, one record per band.

Expected pixels are computed here from the written arrays with numpy (np.percentile on the
valid values, clip, round), never read back through the code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import RS_SAMPLES, needs_shared, read_per_image
from tests.test_latents_run import run_in_process, run_overrides
from vaes4rs import files, raster
from vaes4rs.config import DatasetConfig, _check_dataset_extras
from vaes4rs.data import CorruptImageError, prepare, scan
from vaes4rs.errors import ConfigError

LANDSAT = RS_SAMPLES / "scenes" / "landsat_RGB.byte.tif"
NODATA = 0


def multispectral(height: int, width: int, seed: int, bands: int = 8, top: int = 4095) -> np.ndarray:
    """(bands, H, W) uint16 in 1..top (a 12-bit sensor): smooth blocks, each band its own brightness."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, top + 1, (bands, height // 8 + 1, width // 8 + 1))
    smooth = np.kron(coarse, np.ones((1, 8, 8)))[:, :height, :width]
    scale = np.linspace(0.3, 1.0, bands)[:, None, None]  # band 1 darkest
    return np.maximum(1, smooth * scale).astype(np.uint16)


def write_geotiff(
    path: Path, values: np.ndarray, nodata: float | None = None, georeferenced: bool = True
) -> Path:
    """A (C, H, W) GeoTIFF in UTM 33N at 10 m (or with no CRS and no transform)."""
    count, height, width = values.shape
    profile = dict(
        driver="GTiff", height=height, width=width, count=count, dtype=str(values.dtype), nodata=nodata
    )
    if georeferenced:
        profile.update(crs="EPSG:32633", transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
    return path


def stretched(values: np.ndarray, valid: np.ndarray, low_q: float, high_q: float) -> np.ndarray:
    """The percentile stretch, computed independently: per band, on valid pixels, numpy's percentile."""
    out = np.zeros(values.shape, dtype=np.uint8)
    for band in range(values.shape[0]):
        low, high = np.percentile(values[band][valid].astype(np.float64), [low_q, high_q])
        unit = np.clip((values[band].astype(np.float64) - low) / (high - low), 0, 1)
        out[band] = np.round(unit * 255)
    out[:, ~valid] = 0
    return out


def folder_cfg(root: Path, **kwargs) -> DatasetConfig:
    return DatasetConfig(name="ms", source="folder", root=str(root), num_workers=0, **kwargs)


def loaded(cfg: DatasetConfig) -> dict[str, np.ndarray]:
    """image_id -> HxWx3 uint8 as the loader delivers it."""
    out = {}
    for batch in prepare(cfg, batch_size=4, pin_memory=False).loader:
        for record, image in zip(batch["records"], batch["images"]):
            out[record.image_id] = image.permute(1, 2, 0).numpy()
    return out


@pytest.fixture()
def ms_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Two 8-band uint16 GeoTIFFs in one class; the second has a nodata corner."""
    arrays = {"a.tif": multispectral(40, 48, seed=1), "b.tif": multispectral(40, 48, seed=2)}
    arrays["b.tif"][:, :10, :12] = NODATA
    for name, values in arrays.items():
        write_geotiff(tmp_path / "ms" / "fields" / name, values, nodata=NODATA)
    return tmp_path / "ms", arrays


def test_bands_and_percentile_stretch_per_image(ms_folder) -> None:
    root, arrays = ms_folder
    images = loaded(folder_cfg(root, bands=[4, 3, 2], stretch="percentile"))
    for name, values in arrays.items():
        valid = np.all(values != NODATA, axis=0)
        expected = stretched(values[[3, 2, 1]], valid, 2.0, 98.0)
        assert np.array_equal(images[f"fields/{name}"], np.moveaxis(expected, 0, -1)), name
    b = images["fields/b.tif"]
    assert (b[:10, :12] == 0).all() and b[10:, 12:].max() == 255  # nodata black; the range is used
    warnings = scan(folder_cfg(root, bands=[4, 3, 2], stretch="percentile")).warnings
    assert any("2 file(s) declare a nodata value" in w and "dataset=scene masks" in w for w in warnings)


def test_twelve_bit_data_nearly_black_without_a_stretch_full_range_with_one(ms_folder) -> None:
    root, arrays = ms_folder
    plain = loaded(folder_cfg(root, bands=[4, 3, 2]))["fields/a.tif"]
    assert np.array_equal(plain, np.moveaxis(np.round(arrays["a.tif"][[3, 2, 1]] / 257.0), 0, -1))
    assert plain.max() <= 16  # 4095 / 257: what the issue calls "nearly black"
    minmax = loaded(folder_cfg(root, bands=[4, 3, 2], stretch="minmax"))["fields/a.tif"]
    assert minmax.min() == 0 and minmax.max() == 255


def test_dataset_scope_uses_one_set_of_limits_recorded_for_metrics_json(ms_folder) -> None:
    root, arrays = ms_folder
    cfg = folder_cfg(
        root, bands=[5], stretch="percentile", stretch_percentiles=[5.0, 95.0], stretch_scope="dataset"
    )
    prepared = prepare(cfg, batch_size=4, pin_memory=False)
    pooled = np.concatenate([values[4][np.all(values != NODATA, axis=0)] for values in arrays.values()])
    low, high = np.percentile(pooled.astype(np.float64), [5.0, 95.0])
    record = prepared.scan.radiometry
    assert record["stretch"] == "percentile" and record["scope"] == "dataset"
    assert record["limits"]["b5"] == pytest.approx([low, high])
    image = next(iter(prepared.loader))["images"][0, 0].numpy()  # gray band 5 of a.tif, channel 0
    expected = np.round(np.clip((arrays["a.tif"][4] - low) / (high - low), 0, 1) * 255)
    assert np.array_equal(image, expected)


def test_each_band_is_its_own_record(ms_folder) -> None:
    root, arrays = ms_folder
    cfg = folder_cfg(root, band_mode="each", stretch="minmax")
    found = scan(cfg)
    assert [r.image_id for r in found.records] == [
        f"fields/{f}@b{b}" for f in ("a.tif", "b.tif") for b in range(1, 9)
    ]
    assert [r.index for r in found.records] == list(range(16))
    assert [r.band for r in found.records[:8]] == list(range(1, 9))
    images = loaded(cfg)
    band7 = arrays["a.tif"][6].astype(np.float64)
    expected = np.round((band7 - band7.min()) / (band7.max() - band7.min()) * 255)
    image = images["fields/a.tif@b7"]
    assert np.array_equal(image[..., 0], expected) and (image == image[..., :1]).all()  # gray, replicated


def test_band_out_of_range_names_the_band_count(ms_folder) -> None:
    root, _ = ms_folder
    found = scan(folder_cfg(root, bands=[9, 3, 2]))
    assert [p.reason for p in found.problems] == ["band_out_of_range"] * 2
    assert "asks for band(s) [9], but the file has 8 band(s) (valid: 1..8" in found.problems[0].message
    with pytest.raises(CorruptImageError, match=r"(?s)a\.tif.*8 band\(s\)"):
        prepare(folder_cfg(root, bands=[9, 3, 2]), batch_size=4, pin_memory=False)


def test_multiband_without_bands_asks_for_them(ms_folder) -> None:
    root, _ = ms_folder
    found = scan(folder_cfg(root, stretch="minmax"))
    assert {p.reason for p in found.problems} == {"too_many_channels"}
    assert "dataset.bands=[r,g,b]" in found.problems[0].message


def test_band_stats_percentiles_match_numpy_for_integers_and_floats() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, (2, 50, 60)).astype(np.uint16)
    valid = rng.random((50, 60)) > 0.2
    stats = raster.BandStats(2, "uint16")
    stats.update(values[:, :25], valid[:25])  # two windows, as a scene is read
    stats.update(values[:, 25:], valid[25:])
    for q in (0.0, 2.0, 37.5, 98.0, 100.0):
        assert stats.percentile(q) == pytest.approx(
            np.percentile(values[:, valid].astype(np.float64), q, axis=1)
        )
    floats = rng.normal(0.2, 0.05, (1, 30, 30)).astype(np.float32)
    float_stats = raster.BandStats(1, "float32")
    float_stats.update(floats, np.ones((30, 30), dtype=bool))
    assert float_stats.percentile(98.0) == pytest.approx(
        np.percentile(floats.reshape(1, -1).astype(np.float64), 98.0, axis=1)
    )
    minmax = stats.stretch("minmax", (2, 98), [1, 2], "image", "x")
    assert list(minmax.low) == [values[b][valid].min() for b in range(2)]


def test_inverse_stretch_returns_source_units() -> None:
    values = np.array([[[100, 600, 1100, 5000]]], dtype=np.uint16)  # 5000 lies above the upper limit
    stretch = raster.Stretch("minmax", (1,), np.array([100.0]), np.array([1100.0]), "uint16", "image")
    assert stretch.to_uint8(values).tolist() == [[[0, 128, 255, 255]]]  # 127.5 rounds half to even: 128
    back = stretch.to_source(stretch.to_unit(values))
    assert back[0, 0, :3] == pytest.approx([100, 600, 1100]) and back[0, 0, 3] == pytest.approx(
        1100
    )  # clipped


def test_stretch_none_refuses_types_without_a_fixed_range() -> None:
    with pytest.raises(raster.RasterInputError, match=r"int16.*dataset.stretch=minmax"):
        raster.fixed_stretch("int16", [1], "dem.tif")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bands": [0, 1, 2]}, r"1-based band numbers"),
        ({"bands": [4, 3]}, r"band_mode=rgb takes 1 band \(gray\) or 3"),
        ({"stretch_percentiles": [98.0, 2.0]}, r"0 <= low < high <= 100"),
        ({"tile": 64, "overlap": 32}, r"overlap in \[0, tile/2\)"),
    ],
)
def test_config_bounds(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _check_dataset_extras(DatasetConfig(name="x", **settings))
    _check_dataset_extras(DatasetConfig(name="x", bands=[4], band_mode="each"))  # one band alone is fine


def test_landsat_nodata_is_left_out_of_the_stretch_limits() -> None:
    needs_shared(LANDSAT)
    with rasterio.open(LANDSAT) as src:
        masked = src.read(masked=True)  # rasterio's own nodata mask, independently of vaes4rs
    valid = ~np.any(np.ma.getmaskarray(masked), axis=0)
    assert 0.5 < valid.mean() < 0.8  # the footprint: a rotated rectangle inside a nodata frame
    with raster.open_raster(LANDSAT) as src:
        values, ours = raster.read_window(src, [1, 2, 3])
    assert np.array_equal(ours, valid)
    stats = raster.BandStats(3, "uint8")
    stats.update(values, ours)
    expected = np.percentile(masked.data[:, valid].astype(np.float64), 2.0, axis=1)
    assert stats.percentile(2.0) == pytest.approx(expected)
    assert (expected > 0).all()  # with the nodata zeros counted, the 2nd percentile would be 0


def test_every_band_is_scored_and_summarised_per_band(
    compose_conf, tiny_models: Path, ms_folder, tmp_path
) -> None:
    """band_mode=each through the loop: a band column, and each band aggregated like the set."""
    root, _ = ms_folder
    overrides = run_overrides(
        tiny_models / "SD21-VAE", "dataset=folder", f"dataset.root={root}", "dataset.band_mode=each"
    )
    payload = run_in_process(compose_conf, tmp_path / "run", [*overrides, "dataset.stretch=minmax"])
    table = read_per_image(tmp_path / "run" / files.PER_IMAGE_FILE)
    assert table["band"].tolist() == [float(b) for _ in range(2) for b in range(1, 9)]
    assert sorted(payload["per_band"]) == [f"b{b}" for b in range(1, 9)]
    for band in range(1, 9):
        rows = table["band"] == band
        assert payload["per_band"][f"b{band}"]["psnr"] == pytest.approx(table["psnr"][rows].mean(), rel=1e-12)
    assert payload["radiometry"]["stretch"] == "minmax" and payload["radiometry"]["band_mode"] == "each"
