"""Pixel metrics and their reductions against references that share no code with vaes4rs.

Every expected number comes from what the test built itself (8-bit levels fixed by
construction, tests/metric_weights.py ``known_level_pairs``) and from skimage, torchmetrics,
scipy or a formula written out here; nothing on the reference side calls vaes4rs.metrics.
Datasets mix image sizes, as AID-through-SANA style padding never does but a folder of
scenes does, so the pooled PSNR's pixel weighting is exercised.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats as scipy_stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.conftest import CONF_DIR
from tests.metric_weights import KnownLevels, known_level_pairs
from vaes4rs.config import MetricConfig
from vaes4rs.metrics import pixel, stats
from vaes4rs.metrics.suite import MetricSuite

CPU = torch.device("cpu")
NO_NETWORKS = dict(lpips=False, fid=False, kid=False)
# Dataset order: sizes change mid-group, and the last group is short (7 images, groups of 3).
SEGMENTS = ((3, 40, 40), (2, 24, 32), (2, 40, 40))
GROUP = 3
# The suite scores float32 pixels (k / 127.5 - 1 carries <= 6e-8 of rounding) against the
# references' exact levels: seen here, 7e-8 of the MSE and 1e-8 of the PSNR. Tolerances are
# 1e-6 of each (3e-5 dB at 31 dB); a range of 2 instead of 1 is +6.02 dB, and a rounding
# that puts 3 pixels in 10 one level off moves PSNR ~0.05 dB.
PSNR_REL = 1e-6


def protocol(name: str, **overrides) -> MetricConfig:
    merged = OmegaConf.merge(
        OmegaConf.structured(MetricConfig), OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml")
    )
    return replace(OmegaConf.to_object(merged), **overrides)


@pytest.fixture(scope="module")
def mixed() -> list[KnownLevels]:
    """One KnownLevels per run of equal-size images, in dataset order."""
    return [known_level_pairs(n, h, w, seed=i) for i, (n, h, w) in enumerate(SEGMENTS)]


def images(segments: list[KnownLevels], field: str) -> list[np.ndarray]:
    """One array per image, in dataset order."""
    return [image.numpy() for part in segments for image in getattr(part, field)]


def run_suite(cfg: MetricConfig, segments: list[KnownLevels], model_dtype: torch.dtype) -> tuple[dict, dict]:
    """The evaluation loop's calls: batches of at most 2 equal-size images, then finalize."""
    suite = MetricSuite(cfg, CPU, model_dtype)
    parts, heights, widths = [], [], []
    for part in segments:
        for start in range(0, len(part.x), 2):
            parts.append(suite.update(part.recon[start : start + 2], part.x[start : start + 2]))
            heights += [part.x.shape[-2]] * len(part.x[start : start + 2])
            widths += [part.x.shape[-1]] * len(part.x[start : start + 2])
    table = {key: np.concatenate([p[key] for p in parts]) for key in suite.columns}
    table["height"], table["width"] = np.array(heights), np.array(widths)
    return table, suite.finalize(table)


def test_rounding_and_truncation_give_the_levels_the_test_chose() -> None:
    pairs = known_level_pairs(4, 16, 24, seed=7)
    assert torch.equal(pixel.to_uint8(pairs.recon, "round"), pairs.rounded)
    assert torch.equal(pixel.to_uint8(pairs.recon, "truncate"), pairs.truncated)
    assert torch.equal(pixel.to_uint8(pairs.x, "round"), pairs.originals)
    # Levels back in [-1, 1] as ToTensor + Normalize(0.5, 0.5) maps them: k / 127.5 - 1.
    torch.testing.assert_close(pixel.quantize(pairs.recon, "round"), pairs.rounded.float() / 127.5 - 1)
    torch.testing.assert_close(pixel.quantize(pairs.recon, "truncate"), pairs.truncated.float() / 127.5 - 1)
    assert pixel.quantize(pairs.recon, "none") is pairs.recon
    # Beyond [-1, 1] (an unclamped decoder) the ends hold; a uint8 cast alone would wrap around.
    beyond = torch.tensor([-1.5, -1.0, 1.0, 1.5])
    for rule in ("round", "truncate"):
        assert pixel.to_uint8(beyond, rule).tolist() == [0, 0, 255, 255]
    with pytest.raises(ValueError, match=r"^unknown quantisation 'floor'; valid: none, round, truncate$"):
        pixel.to_uint8(pairs.recon, "floor")
    with pytest.raises(
        ValueError, match=r"^unknown value range 'bits'; valid: \['minus_one_one', 'zero_one'\]$"
    ):
        pixel.to_value_range(pairs.recon, "bits")


def test_ssim_border_rules_and_their_limits() -> None:
    """``valid`` needs a window that fits: 11 px is the smallest side, 10 px is refused."""
    pairs = known_level_pairs(1, 11, 12, seed=2)
    pred01, target01 = pairs.rounded.double() / 255, pairs.originals.double() / 255
    expected = structural_similarity(
        pred01[0].numpy(),
        target01[0].numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )
    assert pixel.ssim_per_image(pred01, target01, 1.0, "valid").item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(
        ValueError, match=r"^valid-window SSIM needs images over 10 px a side, got \(10, 12\)$"
    ):
        pixel.ssim_per_image(pred01[..., :10, :], target01[..., :10, :], 1.0, "valid")
    with pytest.raises(ValueError, match=r"^unknown SSIM border handling 'same'; valid: reflect, valid$"):
        pixel.ssim_per_image(pred01, target01, 1.0, "same")


def test_standard_protocol_equals_skimage_on_the_8bit_pictures(mixed: list[KnownLevels]) -> None:
    """Per image on [0, 1] (range 1) after rounding: PSNR and valid-window SSIM from skimage
    on the levels the test fixed; the reported PSNR is their plain mean."""
    cfg = protocol("standard", bootstrap=200, **NO_NETWORKS)
    table, metrics = run_suite(cfg, mixed, torch.bfloat16)  # standard keeps ground truth in float32
    originals, rounded = images(mixed, "originals"), images(mixed, "rounded")
    psnr = np.array([peak_signal_noise_ratio(o, r, data_range=255) for o, r in zip(originals, rounded)])
    mse = np.array([np.mean((o / 255.0 - r / 255.0) ** 2) for o, r in zip(originals, rounded)])
    ssim = np.array(
        [
            structural_similarity(
                o / 255.0,
                r / 255.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=0,
            )
            for o, r in zip(originals, rounded)
        ]
    )
    np.testing.assert_allclose(table["psnr"], psnr, rtol=PSNR_REL)
    np.testing.assert_allclose(table["mse"], mse, rtol=PSNR_REL)
    # SSIM of float32 pixels: 2e-9 off seen here, 1e-7 allowed; a level off moves it ~1e-3.
    np.testing.assert_allclose(table["ssim"], ssim, rtol=0, atol=1e-7)
    assert metrics["psnr"] == pytest.approx(psnr.mean(), rel=PSNR_REL)
    assert metrics["ssim"] == pytest.approx(ssim.mean(), abs=1e-7)
    for name, values in (("psnr", psnr), ("ssim", ssim)):
        assert metrics[f"{name}_ci95_lo"] < values.mean() < metrics[f"{name}_ci95_hi"]
    assert run_suite(cfg, mixed, torch.float32)[1] == metrics  # seeded: the same table, the same digits


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_paper_protocol_on_mixed_sizes_equals_torchmetrics_per_group(
    mixed: list[KnownLevels], model_dtype: torch.dtype
) -> None:
    """The study's reduction: each group of consecutive images (its batch of 64, here 3) gets
    torchmetrics' PSNR of the group's pooled squared errors (data range 2 on [-1, 1]) and its
    mean SSIM; the reported values are means over groups. Ground truth is cast to the model
    dtype first; reconstructions are scored as floats."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    cfg = protocol("paper", pool_size=GROUP, **NO_NETWORKS)
    table, metrics = run_suite(cfg, mixed, model_dtype)
    recon = [torch.from_numpy(r).double()[None] for r in images(mixed, "recon")]
    gt = [torch.from_numpy(x).to(model_dtype).double()[None] for x in images(mixed, "x")]
    psnr_groups, ssim_groups = [], []
    for start in range(0, len(gt), GROUP):
        psnr_ref, ssim_ref = (
            PeakSignalNoiseRatio(data_range=2.0),
            StructuralSimilarityIndexMeasure(data_range=2.0),
        )
        for r, g in zip(recon[start : start + GROUP], gt[start : start + GROUP]):
            psnr_ref.update(r, g)
            ssim_ref.update(r, g)
        psnr_groups.append(psnr_ref.compute().item())
        ssim_groups.append(ssim_ref.compute().item())
    per_image = [
        peak_signal_noise_ratio(g[0].numpy(), r[0].numpy(), data_range=2.0) for r, g in zip(recon, gt)
    ]
    np.testing.assert_allclose(table["psnr"], per_image, rtol=PSNR_REL)
    assert metrics["psnr"] == pytest.approx(np.mean(psnr_groups), rel=PSNR_REL)
    # torchmetrics sums SSIM in a float32 state (~6e-8 of it); a level off moves SSIM ~1e-3.
    assert metrics["ssim"] == pytest.approx(np.mean(ssim_groups), abs=1e-6)
    assert set(metrics) == {"psnr", "ssim"}


def test_pooled_psnr_weighs_each_image_by_its_pixels() -> None:
    """Hand-written: a group's PSNR is 10 log10(R^2 / (sum of squared errors / pixels))."""
    mse = np.array([0.010, 0.040, 0.020, 0.005, 0.030])
    pixels = np.array([100.0, 300.0, 100.0, 50.0, 200.0])
    groups = [slice(0, 2), slice(2, 4), slice(4, 5)]
    expected = np.mean(
        [10 * np.log10(4.0 / (np.sum(mse[g] * pixels[g]) / np.sum(pixels[g]))) for g in groups]
    )
    assert pixel.pooled_psnr(mse, pixels, 2, 2.0) == pytest.approx(expected, rel=1e-12)
    per_image = np.mean(10 * np.log10(1.0 / mse))
    assert pixel.pooled_psnr(mse, pixels, 1, 1.0) == pytest.approx(per_image, rel=1e-12)
    assert pixel.psnr_from_mse(0.01, 1.0) == pytest.approx(20.0, rel=1e-12)
    # float32 columns (a CSV read back narrow) are still scored in float64, to the last digit.
    narrow = mse.astype(np.float32)
    assert (
        pixel.psnr_from_mse(narrow, 1.0).tolist() == (10 * np.log10(1.0 / narrow.astype(np.float64))).tolist()
    )


def test_group_mean_weighs_a_short_last_group_as_a_full_one() -> None:
    values = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 40.0, 7.0])
    assert stats.group_mean(values, 3) == pytest.approx((2.0 + 70.0 / 3 + 7.0) / 3, rel=1e-12)
    assert stats.group_mean(values, 1) == pytest.approx(83.0 / 7, rel=1e-12)
    assert stats.group_mean(values, 64) == pytest.approx(83.0 / 7, rel=1e-12)
    narrow = np.array([0.1, 0.7, 0.3, 0.9, 0.2], dtype=np.float32)  # averaged in float64 all the same
    assert stats.group_mean(narrow, 2) == stats.group_mean(narrow.astype(np.float64), 2)


class ScriptedResamples:
    """A stand-in for numpy's generator that hands out the resample indices the test chose."""

    def __init__(self, indices: np.ndarray) -> None:
        self.indices = indices

    def integers(self, low: int, high: int, size: tuple[int, int]) -> np.ndarray:
        drawn, self.indices = self.indices[: size[0]], self.indices[size[0] :]
        return drawn


def test_bootstrap_interval_is_the_percentile_of_resample_means(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five resamples of five images, each resample one image five times: their means are the
    values, 4, 1, 5, 2, 3. The 25th and 75th percentiles (numpy's default linear interpolation,
    at position (5 - 1) x p of the sorted means) are the 2nd and 4th smallest: 2 and 4."""
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    indices = np.repeat(np.array([3, 0, 4, 1, 2])[:, None], 5, axis=1)
    monkeypatch.setattr(stats.np.random, "default_rng", lambda seed: ScriptedResamples(indices))
    assert stats.bootstrap_ci(values, 5, seed=0, level=0.5) == (2.0, 4.0)


def test_bootstrap_interval_equals_scipy_percentile_bootstrap() -> None:
    """scipy.stats.bootstrap (percentile method) draws its own resamples: the two intervals
    differ by Monte-Carlo error only, ~1% of the interval's width at 20,000 resamples."""
    values = np.random.default_rng(11).gamma(2.0, 3.0, 150)  # skewed: a percentile interval is asymmetric
    low, high = stats.bootstrap_ci(values, 20_000, seed=0)
    ref = scipy_stats.bootstrap(
        (values,), np.mean, n_resamples=20_000, method="percentile", confidence_level=0.95, random_state=1
    ).confidence_interval
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.03 * width)
    assert high == pytest.approx(ref.high, abs=0.03 * width)
    narrow = stats.bootstrap_ci(values, 20_000, seed=0, level=0.5)
    ref50 = scipy_stats.bootstrap(
        (values,), np.mean, n_resamples=20_000, method="percentile", confidence_level=0.5, random_state=1
    ).confidence_interval
    assert narrow == pytest.approx((ref50.low, ref50.high), abs=0.03 * width)
    with pytest.raises(ValueError, match=r"bootstrap needs values and resamples >= 1 \(got 0, 10\)"):
        stats.bootstrap_ci(np.array([]), 10, seed=0)
    with pytest.raises(ValueError, match=r"\(got 150, 0\)"):
        stats.bootstrap_ci(values, 0, seed=0)
    single = stats.bootstrap_ci(values, 1, seed=0)  # one resample: both ends are its mean
    assert single[0] == single[1] and values.min() < single[0] < values.max()
