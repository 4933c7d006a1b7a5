"""The rate-distortion study: codecs, equal-quality rates, the rd job end to end, its report, bad input."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import RS_SAMPLES, SHARED, needs_shared
from tests.metric_weights import _he_state
from vaes4rs.preflight import PreflightError
from vaes4rs.rd import RDConfig, rd_job, validate_rd
from vaes4rs.storage import report
from vaes4rs.storage.bdrate import point_bd_rate, quality_front, rate_at_quality
from vaes4rs.storage.codecs import CODECS, CodecError, check_available, check_params, get_codec, round_trip

# --- Codecs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A smooth 64x64 RGB image with some texture."""
    y, x = np.mgrid[0:64, 0:64]
    noise = np.random.default_rng(0).normal(0, 8, (64, 64, 3))
    base = np.stack([x * 3, y * 3, (x + y) * 2], axis=-1) + noise
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_writes_a_file_and_more_bits_buy_quality(name: str, photo: np.ndarray) -> None:
    codec = get_codec(name)
    check_available(codec)
    low, high = codec.defaults[0], codec.defaults[-1]  # JPEG 2000's ratios fall as quality rises
    (small, coarse), (large, fine) = round_trip(codec, photo, low), round_trip(codec, photo, high)
    assert coarse.shape == fine.shape == photo.shape and coarse.dtype == np.uint8
    assert 0 < small < large

    def mse(pixels: np.ndarray) -> float:
        return float(np.mean((pixels.astype(float) - photo) ** 2))

    assert mse(fine) < mse(coarse)


def test_codec_bytes_are_the_files_bytes(photo: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "WEBP", quality=40)
    size, pixels = round_trip(get_codec("webp"), photo, 40)
    assert size == len(buffer.getvalue())
    assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("jpeg", [0], "quality 0 is out of range; it is an integer from 1 to 100"),
        ("jpeg", [101], "quality 101 is out of range"),
        ("jpeg", [50.5], "quality 50.5 is out of range; it is an integer"),
        ("webp", [-1], "quality -1 is out of range"),
        ("jpeg2000", [1], "compression_ratio 1 is out of range; it is a number from 2 to 2000"),
        ("avif", ["high"], "quality 'high' is not a number"),
        ("jxl", [], "no quality values given"),
    ],
)
def test_parameters_out_of_range_are_refused(name: str, values: list, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        check_params(get_codec(name), values)


def test_unknown_codec_names_the_valid_ones() -> None:
    with pytest.raises(CodecError, match="unknown codec 'heic'; valid: avif, jpeg, jpeg2000, jxl, webp"):
        get_codec("heic")


# --- Equal-quality rates -----------------------------------------------------------------------


def test_rate_at_quality_follows_the_curve_and_never_extrapolates() -> None:
    bpp = [0.25, 0.5, 1.0, 2.0, 4.0]
    psnr = [26.0, 29.0, 32.0, 35.0, 38.0]  # 3 dB per doubling: log-rate linear in quality
    assert rate_at_quality(bpp, psnr, 30.5) == pytest.approx(2**-0.5, rel=1e-9)
    assert rate_at_quality(bpp, psnr, 38.5) is None and rate_at_quality(bpp, psnr, 20.0) is None
    codec_bpp, bd = point_bd_rate(8.0, 32.0, bpp, psnr)
    assert codec_bpp == pytest.approx(1.0) and bd == pytest.approx(700.0)  # 8x the bits: +700 %
    assert point_bd_rate(0.5, 32.0, bpp, psnr)[1] == pytest.approx(-50.0)


def test_lower_is_better_metrics_read_the_curve_the_other_way() -> None:
    bpp, lpips = [0.5, 1.0, 2.0], [0.3, 0.2, 0.1]
    assert rate_at_quality(bpp, lpips, 0.15, higher_is_better=False) == pytest.approx(math.sqrt(2), rel=0.05)
    assert rate_at_quality(bpp, lpips, 0.05, higher_is_better=False) is None


def test_the_front_drops_settings_that_cost_more_for_no_gain() -> None:
    rate, value = quality_front([1.0, 2.0, 1.5, 3.0, float("nan")], [30.0, 29.0, 31.0, 33.0, 40.0])
    assert rate.tolist() == [1.0, 1.5, 3.0] and value.tolist() == [30.0, 31.0, 33.0]


# --- The rd job --------------------------------------------------------------------------------


def rd_config(compose_conf: Callable, *overrides: str) -> RDConfig:
    return validate_rd(compose_conf(["run.device=cpu", "run.progress=false", *overrides], config_name="rd"))


@pytest.fixture()
def alexnet_file(tmp_path: Path) -> Path:
    """Random AlexNet features, so LPIPS runs offline (its linear heads ship with torchmetrics)."""
    from torchvision.models import alexnet

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in alexnet().state_dict().items()}
    path = tmp_path / "alexnet.pth"
    torch.save(_he_state(shapes, torch.Generator().manual_seed(0), "features."), path)
    return path


def test_rd_job_measures_codecs_and_stored_latents(
    compose_conf, tiny_models: Path, image_folder: Path, alexnet_file: Path, tmp_path: Path
) -> None:
    cfg = rd_config(
        compose_conf,
        "model=local",
        f"model.path={tiny_models / 'FLUX2-VAE'}",
        "dataset=folder",
        f"dataset.root={image_folder}",
        "dataset.classes=[forest]",  # three 64x64 images (mixed sizes: tests/test_latents.py)
        "dataset.num_workers=0",
        "metric.ms_ssim=false",  # needs 161 px a side
        f"metric.weights.alexnet={alexnet_file}",
        "rd.codecs=[jpeg,webp]",
        "rd.qualities.jpeg=[10,50,90]",
        "rd.qualities.webp=[20,80]",
        "rd.storage=[float32,float16,uint8,uint8+zstd]",
        "rd.keep_latents=true",
    )
    out = tmp_path / "job"
    out.mkdir()
    rows = rd_job(cfg, out, "python -m vaes4rs.rd (test)")
    by = {(r["method"], r.get("storage", ""), r.get("param", "")): r for r in rows}
    pixels = 3 * 64 * 64
    assert {r["pixels"] for r in rows} == {pixels} and {r["n_images"] for r in rows} == {3}
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(image_folder.glob("forest/*.png"))]
    jpeg_bytes = sum(round_trip(get_codec("jpeg"), image, 50)[0] for image in images)
    assert (
        by[("jpeg", "", 50)]["bytes"] == jpeg_bytes and by[("jpeg", "", 50)]["bpp"] == 8 * jpeg_bytes / pixels
    )
    for storage in ("float32", "float16", "uint8", "uint8+zstd"):
        shards = (out / "latents" / storage).glob("shard-*.safetensors")
        on_disk = sum(p.stat().st_size for p in shards)
        assert by[("vae", storage, "")]["bpp"] == 8 * on_disk / pixels  # bpp = 8 x bytes on disk / pixels
    # float32 storage decodes to the direct reconstruction exactly; the others differ, measurably
    exact, direct = by[("vae", "float32", "")], by[("vae", "direct", "")]
    assert exact["max_abs_vs_direct"] == 0 and exact["psnr_vs_direct"] == math.inf
    assert all(exact[m] == direct[m] for m in ("psnr", "ssim", "lpips"))
    assert 0 < by[("vae", "float16", "")]["max_abs_vs_direct"] < by[("vae", "uint8", "")]["max_abs_vs_direct"]
    assert by[("vae", "uint8", "")]["psnr"] == by[("vae", "uint8+zstd", "")]["psnr"]  # zstd is lossless
    assert by[("vae", "uint8+zstd", "")]["bytes"] < by[("vae", "uint8", "")]["bytes"]
    assert by[("jpeg", "", 10)]["psnr"] < by[("jpeg", "", 90)]["psnr"]
    assert {"psnr", "ssim", "lpips"} <= set(by[("webp", "", 20)]) and "ms_ssim" not in by[("webp", "", 20)]
    for name in ("rd.csv", "rd.json", "bd_rate.csv", "rd_table.md", "rd.png", "rd.pdf"):
        assert (out / name).stat().st_size > 0, name
    with (out / "bd_rate.csv").open(newline="") as handle:
        bd = list(csv.DictReader(handle))
    assert {b["storage"] for b in bd} == {"float32", "float16", "uint8", "uint8+zstd"}
    assert {b["codec"] for b in bd} == {"jpeg", "webp"}
    assert "vs JPEG" in (out / "rd_table.md").read_text()


def test_the_report_merges_jobs_and_keeps_codec_rows_once(tmp_path: Path) -> None:
    common = {"dataset": "set", "image_set": "abc", "n_images": 2.0, "pixels": 100.0}
    codec = [
        {
            **common,
            "method": "jpeg",
            "param_name": "quality",
            "param": q,
            "bytes": b,
            "bpp": b * 0.08,
            "psnr": p,
        }
        for q, b, p in ((10, 10, 25.0), (50, 20, 30.0), (90, 40, 35.0))
    ]
    for model, psnr in (("a", 30.0), ("b", 33.0)):
        job = tmp_path / f"{model}-set"
        job.mkdir()
        (job / "rd.json").write_text("{}")
        vae = [
            {**common, "method": "vae", "model": model, "storage": "direct", "psnr": psnr + 0.1},
            {
                **common,
                "method": "vae",
                "model": model,
                "storage": "uint8",
                "bytes": 80.0,
                "bpp": 6.4,
                "psnr": psnr,
            },
        ]
        report.write_rows(job / "rd.csv", codec + vae)
    assert report.main(["--results", str(tmp_path)]) == 0
    merged = report.read_rows([tmp_path / "rd.csv"])
    assert [r["method"] for r in merged].count("jpeg") == 3 and len(merged) == 7
    with (tmp_path / "bd_rate.csv").open(newline="") as handle:
        bd = {row["model"]: row for row in csv.DictReader(handle)}
    assert float(bd["a"]["codec_bpp"]) == pytest.approx(1.6) and float(
        bd["a"]["bd_rate_pct"]
    ) == pytest.approx(300)
    # 33 dB lies between the 30 and 35 dB settings, where each 5 dB doubles the rate
    assert float(bd["b"]["codec_bpp"]) == pytest.approx(0.8 * 2 ** (8 / 5))
    assert (tmp_path / "rd.png").is_file() and (tmp_path / "rd.pdf").is_file()
    with pytest.raises(SystemExit):
        report.main(["--results", str(tmp_path / "a-set" / "missing")])


# --- Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rd.codecs=[jpeg,heic]", "unknown codec 'heic'"),
        ("rd.qualities.jpeg=[0,50]", "quality 0 is out of range"),
        ("rd.qualities.jpeg2000=[1000000]", "compression_ratio 1000000 is out of range"),
        ("rd.qualities.avif=[50]", None),  # fine: avif is in the default codecs
        ("rd.storage=[float16,int4]", "unknown latent storage 'int4'"),
        ("rd.storage=[]", "must name each storage option once"),
        ("metric.fid=true", "per-image metrics only"),
    ],
)
def test_bad_rd_settings_fail_at_start_up(
    compose_conf, tmp_path: Path, override: str, message: str | None
) -> None:
    common = ["model=local", f"model.path={tmp_path}", "dataset=folder", f"dataset.root={tmp_path}"]
    if message is None:
        assert rd_config(compose_conf, *common, override).rd.qualities["avif"] == [50]
        return
    with pytest.raises(Exception, match=message):
        rd_config(compose_conf, *common, override)


def test_ms_ssim_is_on_by_default_and_small_images_are_refused_before_work(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path
) -> None:
    cfg = rd_config(
        compose_conf,
        "model=local",
        f"model.path={tiny_models / 'SD21-VAE'}",
        "dataset=folder",
        f"dataset.root={image_folder}",
        "metric.lpips=false",
    )
    assert cfg.metric.ms_ssim and cfg.metric.protocol == "standard"
    with pytest.raises(PreflightError, match="smaller than the minimum side 161"):
        rd_job(cfg, tmp_path / "job", "test")
    assert not (tmp_path / "job").exists()  # refused before any work


def test_qualities_for_a_codec_not_measured_are_refused(compose_conf, tmp_path: Path) -> None:
    common = ["model=local", f"model.path={tmp_path}", "dataset=folder", f"dataset.root={tmp_path}"]
    with pytest.raises(Exception, match="rd.qualities.webp is set but webp is not in rd.codecs"):
        rd_config(compose_conf, *common, "rd.codecs=[jpeg]", "rd.qualities.webp=[50]")


# --- The real TAEF2 ----------------------------------------------------------------------------


def test_real_taef2_rd_on_resisc45_samples(compose_conf, tmp_path: Path) -> None:
    taef2 = SHARED / "weights" / "taef2"
    needs_shared(taef2)
    needs_shared(RS_SAMPLES / "resisc45")
    root = tmp_path / "resisc45"
    (root / "airport").mkdir(parents=True)
    for source in sorted((RS_SAMPLES / "resisc45" / "airport").iterdir())[:1]:
        (root / "airport" / source.name).symlink_to(source)
    cfg = rd_config(
        compose_conf,
        "model=taef2",
        f"model.path={taef2}",
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.resize=[128,128]",  # real pixels, a quarter of the compute; decoding resizes the same way
        "dataset.num_workers=0",
        "metric.lpips=false",
        "metric.ms_ssim=false",
        "rd.codecs=[jpeg]",
        "rd.qualities.jpeg=[10,60]",
        "rd.storage=[float16,uint8+zstd]",
    )
    out = tmp_path / "job"
    out.mkdir()
    rows = {(r["method"], r.get("storage", ""), r.get("param", "")): r for r in rd_job(cfg, out, "test")}
    half, packed = rows[("vae", "float16", "")], rows[("vae", "uint8+zstd", "")]
    assert 8.0 < half["bpp"] < 8.1 and 3.5 < packed["bpp"] < 4.125  # 32 channels at 1/8: 8 bpp in float16
    assert 28 < rows[("vae", "direct", "")]["psnr"] < 36  # a real autoencoder, not a plumbing error
    assert abs(half["psnr"] - rows[("vae", "direct", "")]["psnr"]) < 0.01
    assert not (out / "latents").exists()  # rd.keep_latents=false
