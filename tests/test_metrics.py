"""Protocol configs, reductions, the suite's contract and its errors, without pretrained networks.

Definitions against their reference implementations live in test_metrics_reference.py.
Where a test needs Inception features it uses a cheap stand-in extractor (a fixed random
projection of pooled pixels): the streaming, skipping and bookkeeping are what is tested.
"""

from __future__ import annotations

from dataclasses import fields, replace
from urllib.error import URLError

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from tests.conftest import CONF_DIR
from tests.metric_weights import known_level_pairs
from vaes4rs.config import MetricConfig, register_configs, validate
from vaes4rs.metrics import fid, perceptual, pixel, stats, weights
from vaes4rs.metrics.suite import MetricSuite

NO_NETWORKS = dict(lpips=False, fid=False, kid=False)


def load_protocol(name: str) -> MetricConfig:
    merged = OmegaConf.merge(
        OmegaConf.structured(MetricConfig), OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml")
    )
    return OmegaConf.to_object(merged)


def images(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """([-1, 1] originals from uint8, noisy [-1, 1] reconstructions)."""
    generator = torch.Generator().manual_seed(seed)
    original = torch.randint(0, 256, (n, 3, size, size), generator=generator).float() / 127.5 - 1
    recon = (original + 0.1 * torch.randn(original.shape, generator=generator)).clamp(-1, 1)
    return original, recon


def run(suite: MetricSuite, original: torch.Tensor, recon: torch.Tensor, batch: int = 4) -> dict[str, float]:
    parts = [
        suite.update(recon[i : i + batch], original[i : i + batch]) for i in range(0, len(original), batch)
    ]
    table = {key: np.concatenate([part[key] for part in parts]) for key in suite.columns}
    table["height"] = np.full(len(original), original.shape[-2])
    table["width"] = np.full(len(original), original.shape[-1])
    return suite.finalize(table)


STUB_DIM = 32  # a 2048-d eigen-decomposition takes seconds; the bookkeeping is the same at 32


class StubInception(nn.Module):
    """uint8 images -> 32 'features': a fixed random projection of 4x4-pooled pixels."""

    def __init__(self) -> None:
        super().__init__()
        # float64 throughout, so batch shapes cannot move a digit of the features
        self.projection = torch.randn(48, STUB_DIM, generator=torch.Generator().manual_seed(0)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8
        return torch.tanh(nn.functional.adaptive_avg_pool2d(x.double() / 255, 4).flatten(1) @ self.projection)


@pytest.fixture()
def stub_inception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid, "load_inception", lambda weights, resize, device: StubInception())
    monkeypatch.setattr(fid, "FEATURE_DIM", STUB_DIM)


@pytest.mark.parametrize("name", ["paper", "standard"])
def test_protocol_files_set_every_field_explicitly(name: str) -> None:
    """A protocol never leans on a schema default that could change under it."""
    keys = set(OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml"))
    assert keys == {f.name for f in fields(MetricConfig)}
    assert load_protocol(name).protocol == name


def test_protocols_differ_where_the_issue_says() -> None:
    paper, standard = load_protocol("paper"), load_protocol("standard")
    assert (paper.latent, paper.seed, paper.gt_dtype, paper.value_range) == (
        "sample",
        42,
        "model",
        "minus_one_one",
    )
    assert (paper.pool_size, paper.quantize, paper.fid_quantize, paper.fid_resize) == (
        64,
        "none",
        "truncate",
        "antialias",
    )
    assert (paper.ssim_border, paper.kid, paper.bootstrap) == ("reflect", False, 0)
    assert (standard.latent, standard.gt_dtype, standard.value_range) == ("mode", "float32", "zero_one")
    assert (standard.pool_size, standard.quantize, standard.fid_quantize) == (1, "round", "round")
    assert (standard.fid_resize, standard.ssim_border, standard.kid) == ("tf1", "valid", True)
    assert standard.bootstrap > 0


def test_single_options_override_through_hydra(compose_conf, tmp_path) -> None:
    register_configs()
    overrides = ["metric=standard", "metric.latent=sample", "metric.fid=false", f"dataset.root={tmp_path}"]
    overrides += [
        "dataset=folder",
        "model=local",
        f"model.path={tmp_path}",
        "metric.weights.inception=/w.pth",
    ]
    cfg = validate(compose_conf(overrides))
    assert (cfg.metric.protocol, cfg.metric.latent, cfg.metric.fid, cfg.metric.kid) == (
        "standard",
        "sample",
        False,
        True,
    )
    assert cfg.metric.weights["inception"] == "/w.pth"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"fid_resize": "bicubic"}, "metric.fid_resize"),
        ({"ssim_border": "same"}, "metric.ssim_border"),
        ({"bootstrap": 100, "pool_size": 64}, "needs metric.pool_size=1"),
        ({"weights": {"incepton": "/x"}}, "unknown key"),
        ({"kid_subset_size": 1}, "kid_subset_size"),
    ],
)
def test_invalid_metric_options_fail_before_any_image(override, message) -> None:
    cfg = OmegaConf.create(
        {"model": {"name": "m", "path": "/m"}, "dataset": {"name": "d", "root": "/d"}, "metric": override}
    )
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_group_mean_and_pooled_psnr() -> None:
    values = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    assert stats.group_mean(values, 1) == pytest.approx(7.2)
    assert stats.group_mean(values, 2) == pytest.approx((1.5 + 6.5 + 20.0) / 3)
    mse = np.array([0.01, 0.04, 0.02])
    per_image = 10 * np.log10(4.0 / mse)  # range 2: 26.02, 20.00, 23.01 dB
    assert pixel.pooled_psnr(mse, np.ones(3), 1, 2.0) == pytest.approx(per_image.mean())
    # Pooling averages errors before the log: an image twice the size weighs twice.
    pooled = pixel.pooled_psnr(mse[:2], np.array([1.0, 2.0]), 2, 2.0)
    assert pooled == pytest.approx(10 * np.log10(4.0 / ((0.01 + 2 * 0.04) / 3)))


def test_bootstrap_ci_is_seeded_chunk_free_and_about_right(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(3).normal(5.0, 2.0, 400)
    low, high = stats.bootstrap_ci(values, 2001, seed=1)
    assert low < values.mean() < high
    # A normal-theory 95% half-width is 1.96 * sd / sqrt(n); the bootstrap's is close to it.
    assert (high - low) / 2 == pytest.approx(1.96 * values.std() / np.sqrt(len(values)), rel=0.1)
    assert stats.bootstrap_ci(values, 2001, seed=1) == (low, high)
    monkeypatch.setattr(stats, "_CHUNK_VALUES", 1000)  # 2 resamples per chunk, the last one short
    assert stats.bootstrap_ci(values, 2001, seed=1) == (low, high)
    # A float32 column is averaged in float64 too, to the last digit.
    single = values.astype(np.float32)
    assert stats.bootstrap_ci(single, 2001, seed=1) == stats.bootstrap_ci(
        single.astype(np.float64), 2001, seed=1
    )


def test_suite_reports_ci_keys_and_records_the_protocol() -> None:
    cfg = replace(load_protocol("standard"), **NO_NETWORKS)
    suite = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    original, recon = images(10)
    metrics = run(suite, original, recon)
    assert set(metrics) == {
        f"{name}{suffix}" for name in ("psnr", "ssim") for suffix in ("", "_ci95_lo", "_ci95_hi")
    }
    for name in ("psnr", "ssim"):
        assert metrics[f"{name}_ci95_lo"] < metrics[name] < metrics[f"{name}_ci95_hi"]
    protocol = suite.protocol()
    assert protocol["name"] == "standard"
    assert {f.name for f in fields(MetricConfig)} - {"protocol"} <= set(protocol)
    assert set(protocol["definitions"]) == {"psnr", "ssim"}
    assert protocol["not_computed"] == {}


def test_switched_off_metrics_are_absent_not_zero() -> None:
    cfg = replace(load_protocol("paper"), ssim=False, **NO_NETWORKS)
    suite = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    assert suite.columns == ["mse", "psnr"]
    assert set(run(suite, *images(3))) == {"psnr"}


def test_casts_follow_the_protocol() -> None:
    pairs = known_level_pairs(2, 32, 32, seed=0)
    original, recon = pairs.x, pairs.recon
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    paper = MetricSuite(replace(load_protocol("paper"), **NO_NETWORKS), cpu, bf16)
    pred, target = paper.prepare(recon, original)
    assert torch.equal(pred, recon) and torch.equal(target, original.to(torch.bfloat16).float())
    standard = MetricSuite(
        replace(load_protocol("standard"), **NO_NETWORKS), torch.device("cpu"), torch.bfloat16
    )
    pred, target = standard.prepare(recon, original)
    assert torch.equal(target, original)
    assert torch.equal(pred, pairs.rounded.float() / 127.5 - 1)  # the levels the test fixed


def test_fid_streams_statistics_equal_to_torch_fidelity_on_all_features(stub_inception) -> None:
    """Running float64 sums over batches give torch-fidelity's FID of the stacked features."""
    cfg = replace(load_protocol("standard"), psnr=False, ssim=False, lpips=False, kid=False)
    suite = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    pairs = known_level_pairs(60, 32, 32, seed=0)  # more images than feature dimensions: full rank
    metrics = run(suite, pairs.x, pairs.recon, batch=7)
    stub = StubInception()
    real, fake = stub(pairs.originals), stub(pairs.rounded)  # the 8-bit pictures the test fixed
    real_stats, fake_stats = fid_features_to_statistics(real), fid_features_to_statistics(fake)
    expected = fid_statistics_to_metric(real_stats, fake_stats, verbose=False)["frechet_inception_distance"]
    # FID (1.6e-3 here) is a small difference of traces (Tr S1 + Tr S2 = 0.68 here) and
    # 2 Tr (S1 S2)^1/2. One-pass sums (sum of x x^T minus n mu mu^T, as torchmetrics keeps them)
    # against np.cov's two-pass centring, and our eigenvalue trace against scipy's sqrtm (whose
    # algorithm changed in scipy 1.17), leave up to ~5e-10 of those traces (3.5e-10 absolute
    # with scipy 1.17.1, 9e-12 before): the tolerance is 1e-8 of them, 4e-6 of the FID itself.
    traces = np.trace(real_stats["sigma"]) + np.trace(fake_stats["sigma"])
    assert metrics == {"fid": pytest.approx(expected, abs=1e-8 * traces), "fid_n": 60}


def test_kid_is_skipped_with_a_reason_from_2048_images(stub_inception) -> None:
    cfg = replace(load_protocol("standard"), psnr=False, ssim=False, lpips=False, kid_subsets=5)
    small = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    metrics = run(small, *images(6, size=8))
    assert {"fid", "fid_n", "kid", "kid_std"} <= set(metrics)
    large = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    metrics = run(large, *images(fid.KID_MAX_IMAGES, size=8), batch=512)
    assert "kid" not in metrics and metrics["fid_n"] == fid.KID_MAX_IMAGES
    assert "2048 images or more" in large.protocol()["not_computed"]["kid"]


def test_fid_of_one_image_is_absent_with_a_reason(stub_inception) -> None:
    cfg = replace(load_protocol("paper"), psnr=False, ssim=False, lpips=False)
    suite = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    assert run(suite, *images(1)) == {}
    assert suite.protocol()["not_computed"]["fid"] == "needs at least 2 images, got 1"


def test_explicit_weight_path_that_is_missing_names_file_and_source(tmp_path) -> None:
    cfg = replace(
        load_protocol("paper"),
        fid=False,
        weights={"alexnet": str(tmp_path / "none.pth")},
        missing_weights="error",
    )
    with pytest.raises(weights.MissingWeightsError) as err:
        MetricSuite(cfg, torch.device("cpu"), torch.float32)
    for part in (
        "metric.weights.alexnet",
        "alexnet-owt-7be5be79.pth",
        "download.pytorch.org",
        "metric.lpips=false",
    ):
        assert part in str(err.value)


def test_missing_weights_skip_the_metric_loudly_by_default(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = replace(load_protocol("paper"), fid=False, weights={"alexnet": str(tmp_path / "none.pth")})
    assert cfg.missing_weights == "skip"
    suite = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    metrics = run(suite, *images(2))
    assert "lpips" not in metrics and {"psnr", "ssim"} <= set(metrics)  # absent, never zero
    assert "alexnet-owt-7be5be79.pth" in suite.protocol()["not_computed"]["lpips"]
    assert "lpips skipped" in caplog.text and "download.pytorch.org" in caplog.text
    assert not any("not computed" in message for message in caplog.messages)  # said once, when skipped


def test_missing_cache_file_offline_says_where_to_put_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dst: str, hash_prefix: str | None = None) -> None:
        raise URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.weight_path("inception", {})
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in message
    assert "torch-fidelity/releases" in message and "metric.fid=false metric.kid=false" in message


def test_lpips_heads_come_from_the_torchmetrics_wheel() -> None:
    path = weights.weight_path("lpips_alex", {})
    assert path.parent.name == "lpips_models" and path.is_file()


def test_ms_ssim_refuses_images_too_small_for_five_scales() -> None:
    x = torch.rand(1, 3, 150, 150)
    with pytest.raises(ValueError, match="161x161"):
        perceptual.ms_ssim_per_image(x, x)
    y = torch.rand(1, 3, 161, 161)
    assert perceptual.ms_ssim_per_image(y, y).item() == pytest.approx(1.0)


def test_valid_ssim_crops_the_window_radius() -> None:
    original, recon = images(2, size=40)
    full = pixel.ssim_map(recon, original, 2.0)
    valid = pixel.ssim_per_image(recon, original, 2.0, "valid")
    torch.testing.assert_close(valid, full[..., 5:-5, 5:-5].flatten(1).mean(1))
    with pytest.raises(ValueError, match="over 10 px"):
        pixel.ssim_per_image(recon[..., :10, :10], original[..., :10, :10], 2.0, "valid")


def test_no_confidence_interval_from_one_image(caplog: pytest.LogCaptureFixture) -> None:
    cfg = replace(load_protocol("standard"), lpips=False, fid=False, kid=False)
    suite = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    metrics = run(suite, *images(1))
    assert "psnr" in metrics and "psnr_ci95_lo" not in metrics
    assert suite.protocol()["not_computed"]["psnr_ci95"] == "a confidence interval needs at least 2 images"
    assert "psnr_ci95 not computed: a confidence interval needs at least 2 images" in caplog.messages
    two = MetricSuite(cfg, torch.device("cpu"), torch.float32)
    bounded = run(two, *images(2))
    assert bounded["psnr_ci95_lo"] <= bounded["psnr"] <= bounded["psnr_ci95_hi"]


def test_a_bootstrap_interval_with_exact_reconstructions_is_inf_not_nan() -> None:
    """Identical images have PSNR inf (a JPEG re-encode at the file's own quality can be exact):
    resamples holding one have an infinite mean, and the interval says so instead of NaN."""
    values = np.array([30.0, 31.0, np.inf, 29.0])
    low, high = stats.bootstrap_ci(values, 200, seed=0)
    draws = np.random.default_rng(0).integers(0, 4, (200, 4))
    means = np.sort(values[draws].mean(axis=1))
    assert np.isinf(means).any() and not np.isnan([low, high]).any()
    assert high == np.inf and low == means[round(0.025 * 199)]
