"""fid.py's arithmetic against formulas written here, on features the tests make.

- ``FeatureStats``: running float64 sums against numpy's two-pass mean and ``np.cov``.
- ``frechet_distance``: the closed form for commuting (diagonal) covariances, and for any
  covariances the trace of the symmetric root (S1^1/2 S2 S1^1/2)^1/2, which has the same
  eigenvalues as (S1 S2)^1/2 and is computed here with ``eigh``.
- ``kid``: a hand-written unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over
  subsets drawn as torch-fidelity documents it (``RandomState(2020)``, one draw per set).

No network is loaded: Inception features are stood in for by random vectors.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from vaes4rs.metrics import fid

CPU = torch.device("cpu")


def streamed(data: np.ndarray, cuts: tuple[int, ...]) -> fid.FeatureStats:
    """FeatureStats fed ``data`` as float32 batches (as Inception returns features), split at ``cuts``."""
    running = fid.FeatureStats(data.shape[1], CPU)
    for start, stop in zip((0, *cuts), (*cuts, len(data))):
        running.update(torch.from_numpy(data[start:stop]).float())
    return running


# ---- FeatureStats ----------------------------------------------------------------------------------


def test_a_new_set_is_empty_and_held_in_fixed_point_limbs() -> None:
    running = fid.FeatureStats(5, CPU)
    assert running.count == 0
    assert running.total.dtype == running.outer.dtype == torch.int64
    assert running.total.shape == (2, 5) and running.outer.shape == (2, 5, 5)  # (hi, lo) limbs
    assert not running.total.any() and not running.outer.any()


def test_fixed_point_sums_are_exact_in_any_batch_order() -> None:
    """Integers add exactly: the same batches in another order give the same limbs, bit for bit,
    and read back as float64 they hold the sum to float64's own rounding (a few ulps)."""
    rng = np.random.default_rng(2)
    batches = [rng.uniform(0.0, 20.0, (n, 4)) for n in (3, 1, 5, 2)]
    forward, backward = fid.FeatureStats(4, CPU), fid.FeatureStats(4, CPU)
    for batch in batches:
        forward.update(torch.from_numpy(batch))
    for batch in reversed(batches):
        backward.update(torch.from_numpy(batch))
    assert torch.equal(forward.total, backward.total) and torch.equal(forward.outer, backward.outer)
    exact = sum(float(np.sum(batch[:, 0])) for batch in batches)
    assert float(fid.from_fixed(forward.total)[0]) == pytest.approx(exact, rel=2.0**-50, abs=0)


def test_the_sums_live_on_the_device_asked_for() -> None:
    """The meta device stands in for a GPU: a tensor left on the default device would show as cpu."""
    running = fid.FeatureStats(3, torch.device("meta"))
    assert running.total.device.type == running.outer.device.type == "meta"


def test_running_sums_give_numpys_mean_and_unbiased_covariance() -> None:
    """Features far from zero (mean / std = 100): float32 sums or a divisor of n would show."""
    rng = np.random.default_rng(0)
    data = rng.normal(50.0, 0.5, (23, 6)).astype(np.float32).astype(np.float64)  # float32-exact values
    running = streamed(data, (1, 9))
    assert running.count == 23
    mean, cov = running.mean_cov()
    assert isinstance(mean, np.ndarray) and mean.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-14)
    # one-pass sums lose about (mean/std)^2 x 1e-16 = 1e-12 of the variance (0.25)
    np.testing.assert_allclose(cov, np.cov(data, rowvar=False), rtol=0, atol=1e-9)
    assert np.diag(cov) == pytest.approx(data.var(axis=0, ddof=1), rel=1e-8)


def test_batches_add_up_to_one_pass_over_all_features() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 1.0, (12, 4)).astype(np.float32).astype(np.float64)
    whole, parts = streamed(data, ()), streamed(data, (3, 4, 10))
    assert whole.count == parts.count == 12
    total, outer = fid.from_fixed(parts.total), fid.from_fixed(parts.outer)
    torch.testing.assert_close(total, torch.from_numpy(data.sum(axis=0)), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(outer, torch.from_numpy(data.T @ data), rtol=1e-14, atol=1e-13)
    torch.testing.assert_close(fid.from_fixed(whole.outer), outer, rtol=1e-14, atol=1e-13)


def test_two_images_are_enough_for_a_covariance_one_is_not() -> None:
    data = np.array([[1.0, 2.0, 0.0], [3.0, -2.0, 1.0]])
    mean, cov = streamed(data, ()).mean_cov()
    np.testing.assert_allclose(mean, [2.0, 0.0, 0.5], rtol=1e-15)
    difference = data[1] - data[0]  # two points: cov = d d^T / 2 with d their difference
    np.testing.assert_allclose(cov, np.outer(difference, difference) / 2, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match=r"^a covariance needs at least 2 images, got 1$"):
        streamed(data[:1], ()).mean_cov()
    with pytest.raises(ValueError, match=r"got 0$"):
        fid.FeatureStats(3, CPU).mean_cov()


# ---- frechet_distance ------------------------------------------------------------------------------


def symmetric_root_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1^1/2 S2 S1^1/2)^1/2 from two symmetric eigen-decompositions (negative round-off clipped)."""
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def reference_fid(mu1, sigma1, mu2, sigma2) -> float:
    return float(
        np.sum((mu1 - mu2) ** 2)
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2 * symmetric_root_trace(sigma1, sigma2)
    )


def test_frechet_distance_of_diagonal_covariances_is_the_closed_form() -> None:
    """Commuting covariances: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    a, b = np.array([4.0, 1.0, 0.25, 9.0]), np.array([1.0, 1.0, 1.0, 16.0])
    mu1, mu2 = np.array([1.0, 0.0, -2.0, 0.5]), np.array([0.0, 0.0, 1.0, 0.5])
    expected = 1.0 + 9.0 + (2 - 1) ** 2 + 0.0 + (0.5 - 1) ** 2 + (3 - 4) ** 2
    value = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert type(value) is float
    assert value == pytest.approx(expected, rel=1e-12)
    # the mean term alone, and the covariance term alone
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(a)) == pytest.approx(10.0, rel=1e-12)
    assert fid.frechet_distance(mu1, np.diag(a), mu1, np.diag(b)) == pytest.approx(expected - 10, rel=1e-12)


def test_frechet_distance_of_full_covariances_equals_the_symmetric_root() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.normal(0, 1, (40, 8)), rng.normal(0.3, 1.4, (40, 8)) @ rng.normal(0, 1, (8, 8))
    mu1, sigma1 = real.mean(axis=0), np.cov(real, rowvar=False)
    mu2, sigma2 = fake.mean(axis=0), np.cov(fake, rowvar=False)
    expected = reference_fid(mu1, sigma1, mu2, sigma2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)
    assert fid.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-10)
    traces = np.trace(sigma1) + np.trace(sigma1)
    assert abs(fid.frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-10 * traces


def test_frechet_distance_of_fewer_images_than_features_stays_finite() -> None:
    """6 images in 16 dimensions (a small set's FID): S1 S2 has rank 5, and round-off puts some of
    its zero eigenvalues below zero or off the real axis; their square roots must count as 0."""
    rng = np.random.default_rng(3)
    real, fake = rng.normal(0, 1, (6, 16)), rng.normal(0.2, 1.1, (6, 16))
    mu1, sigma1 = real.mean(axis=0), np.cov(real, rowvar=False)
    mu2, sigma2 = fake.mean(axis=0), np.cov(fake, rowvar=False)
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    assert (eigenvalues.real < 0).any()  # the case this test is about
    expected = reference_fid(mu1, sigma1, mu2, sigma2)
    # each zero eigenvalue comes out as ~1e-16 of the traces, whose square root adds ~1e-8: the
    # agreement is to 1e-6 of the traces; a NaN from the square root of a negative fails at any tolerance
    traces = np.trace(sigma1) + np.trace(sigma2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, abs=1e-6 * traces)


# ---- kid -------------------------------------------------------------------------------------------


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3: within-set means off the diagonal, cross mean whole."""
    m, d = x.shape

    def kernel(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / m**2)


def reference_kid(x: np.ndarray, y: np.ndarray, subsets: int, size: int) -> tuple[float, float]:
    """Mean and (population) std of the MMD^2 of ``subsets`` pairs of subsets, drawn with
    torch-fidelity's documented default seed 2020: for each pair, one draw from x, then one from y."""
    rng = np.random.RandomState(2020)
    values = []
    for _ in range(subsets):
        xs = x[rng.choice(len(x), size, replace=False)]
        ys = y[rng.choice(len(y), size, replace=False)]
        values.append(unbiased_mmd2(xs, ys))
    return float(np.mean(values)), float(np.std(values))


def kid_features(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 'features' (11 and 14 images, 10 dims) of two sets that differ in mean and spread."""
    rng = np.random.default_rng(seed)
    real = rng.normal(0.0, 1.0, (11, 10)).astype(np.float32)
    fake = rng.normal(0.4, 1.3, (14, 10)).astype(np.float32)
    return torch.from_numpy(real), torch.from_numpy(fake)


def test_kid_on_subsets_equals_a_hand_written_unbiased_mmd() -> None:
    real, fake = kid_features(4)
    mean, std = fid.kid(real, fake, subsets=7, subset_size=5)
    expected_mean, expected_std = reference_kid(real.double().numpy(), fake.double().numpy(), 7, 5)
    assert std > 0.1 * abs(expected_mean)  # subsets differ, so the draw order matters
    # torch-fidelity computes the kernels in float32: ~1e-6 of the kernel sums
    assert (mean, std) == (pytest.approx(expected_mean, rel=1e-4), pytest.approx(expected_std, rel=1e-3))
    assert type(mean) is float and type(std) is float


def test_kid_subset_size_is_capped_at_the_smaller_set() -> None:
    """A subset size of 1000 on 11 and 14 images scores subsets of 11: all of ``real`` each time."""
    real, fake = kid_features(5)
    mean, std = fid.kid(real, fake, subsets=4, subset_size=1000)
    expected_mean, expected_std = reference_kid(real.double().numpy(), fake.double().numpy(), 4, 11)
    assert (mean, std) == (pytest.approx(expected_mean, rel=1e-4), pytest.approx(expected_std, rel=1e-3))
    # the other way round the cap is the first set's size; equal sets give one MMD for every draw
    swapped = fid.kid(fake, real, subsets=3, subset_size=1000)
    assert swapped[0] == pytest.approx(
        reference_kid(fake.double().numpy(), real.double().numpy(), 3, 11)[0], rel=1e-4
    )
    whole = fid.kid(real, fake[:11], subsets=3, subset_size=11)
    assert whole[0] == pytest.approx(
        unbiased_mmd2(real.double().numpy(), fake[:11].double().numpy()), rel=1e-4
    )
    assert whole[1] < 1e-6 * abs(whole[0])


def test_kid_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """No progress bar or result line from torch-fidelity: a job's log holds the suite's messages only."""
    fid.kid(*kid_features(6), subsets=2, subset_size=4)
    assert capfd.readouterr() == ("", "")


# ---- load_inception --------------------------------------------------------------------------------


def test_inception_weights_come_from_the_configured_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metric.weights.inception names the file; the default location (an empty TORCH_HOME here) is
    not read. The file holds torch-fidelity's InceptionV3 layout with one tensor the test set."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    extractor = tf_inception.FeatureExtractorInceptionV3
    with (
        mock.patch.object(tf_inception, "load_state_dict_from_url", return_value=None),
        mock.patch.object(extractor, "load_state_dict", lambda self, state: None),
    ):
        state = extractor("inception-v3-compat", ["2048"]).state_dict()
    key = next(k for k, v in state.items() if v.dim() == 4)  # the first convolution's weight
    state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(7))
    path = tmp_path / "my_inception.pth"
    torch.save(state, path)
    for resize in ("tf1", "antialias"):
        model = fid.load_inception({"inception": str(path)}, resize, torch.device("cpu"))
        loaded = model.state_dict()
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
        assert model.use_antialias is (resize == "antialias")
    # the meta device stands in for a GPU: the network moves to the device asked for
    on_meta = fid.load_inception({"inception": str(path)}, "tf1", torch.device("meta"))
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
