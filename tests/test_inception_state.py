"""FID/KID's running state through MetricSuite: checkpoint round trips and several ranks merged.

Inception itself is not under test: a fixed linear stand-in with Inception's 2048-d output takes
its place in the suites' shared networks, and its features are recorded as it makes them. The
expected statistics are numpy's on those recorded features; the expected FID is the Frechet
distance written out here with scipy's sqrtm on the few dimensions the stand-in fills.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg
import torch

from vaes4rs.config import MetricConfig
from vaes4rs.metrics.suite import InceptionDistances, MetricSuite

CPU = torch.device("cpu")
FILLED = 4  # the stand-in's features are zero beyond their first 4 dimensions
KID_MAX = 2048  # the documented limit: KID only for sets under 2,048 images (config.py)


def stand_in_network(seen: list[np.ndarray]):
    weight = torch.zeros(3 * 4 * 4, 2048, dtype=torch.float64)
    weight[:, :FILLED] = torch.rand(
        3 * 4 * 4, FILLED, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    weight /= 8  # features in [0, 6]: Inception's pool features are non-negative and small too

    def net(images: torch.Tensor) -> torch.Tensor:
        features = ((images.double() / 255).flatten(1) @ weight).float()
        seen.append(features.double().numpy())
        return features

    return net


def batches(n_batches: int, size: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n_batches):
        original = torch.rand(size, 3, 4, 4, generator=generator) * 2 - 1
        recon = (original + 0.3 * torch.randn(size, 3, 4, 4, generator=generator)).clamp(-1, 1)
        out.append((recon, original))
    return out


def frechet_by_hand(real: np.ndarray, fake: np.ndarray) -> float:
    real, fake = real[:, :FILLED], fake[:, :FILLED]
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def suite_of(cfg: MetricConfig, seen: list[np.ndarray]) -> MetricSuite:
    return MetricSuite(cfg, CPU, torch.float32, {InceptionDistances.__name__: stand_in_network(seen)})


def test_two_ranks_merged_give_one_process_fid_and_kid_and_the_set_order():
    cfg = MetricConfig(
        psnr=False, ssim=False, lpips=False, fid=True, kid=True, kid_subsets=5, kid_subset_size=4
    )
    data = batches(3)
    seen: list[np.ndarray] = []
    whole = suite_of(cfg, seen)
    for recon, original in data:
        assert whole.update(recon, original) == {}  # set-level only: no per-image columns
    real = np.concatenate(seen[0::2])  # the stand-in sees each batch's originals, then its recons
    fake = np.concatenate(seen[1::2])
    state = whole.state_dict()["fid"]
    assert state["real"][0] == state["fake"][0] == 9 and state["not_computed"] == {}
    # fixed-point sums: within 2^-40 of numpy's float64 sums (rounding under 2^-61 per value)
    for name, features in (("real", real), ("fake", fake)):
        _, total, outer = state[name]
        assert total.dtype == torch.int64 and total.shape == (2, 2048)
        recovered = total[0].double().numpy() / 2.0**22 + total[1].double().numpy() / 2.0**60
        np.testing.assert_allclose(recovered, features.sum(0), rtol=0, atol=1e-10)
        gram = outer[0].double().numpy() / 2.0**22 + outer[1].double().numpy() / 2.0**60
        np.testing.assert_allclose(gram, features.T @ features, rtol=0, atol=1e-9)
    assert [len(r) for r, _ in state["kept"]] == [3] * 3
    np.testing.assert_array_equal(torch.cat([r for r, _ in state["kept"]]).numpy(), real.astype(np.float32))
    expected = whole.finalize({})
    assert expected["fid_n"] == 9
    # one-pass fixed-point covariance vs numpy's two-pass on features ~1: ~1e-12 absolute
    assert expected["fid"] == pytest.approx(frechet_by_hand(real, fake), rel=1e-7, abs=1e-9)
    assert expected["fid"] > 1e-3 and expected["kid"] != 0

    # ranks scored batches {0, 2} and {1}, each in its own order (rank 0 out of order)
    plans = [[2, 0], [1]]
    states = []
    for plan in plans:
        rank = suite_of(cfg, [])
        for number in plan:
            rank.update(*data[number])
        states.append(rank.state_dict())
    merged = suite_of(cfg, [])
    merged.merge_state_dicts(states, plans)
    kept = merged.metrics[0].kept
    np.testing.assert_array_equal(torch.cat([r for r, _ in kept]).numpy(), real.astype(np.float32))
    np.testing.assert_array_equal(torch.cat([f for _, f in kept]).numpy(), fake.astype(np.float32))
    assert merged.finalize({}) == expected  # integer sums merge exactly; KID's subsets see the set order

    # a checkpoint round trip: a fresh suite loads the state and holds the same
    resumed = suite_of(cfg, [])
    resumed.load_state_dict(whole.state_dict())
    got = resumed.state_dict()["fid"]
    for name in ("real", "fake"):
        assert got[name][0] == state[name][0]
        assert torch.equal(got[name][1], state[name][1]) and torch.equal(got[name][2], state[name][2])
    assert len(got["kept"]) == 3
    for (r1, f1), (r2, f2) in zip(got["kept"], state["kept"]):
        assert torch.equal(r1, r2) and torch.equal(f1, f2)
    with pytest.raises(ValueError, match="checkpoint holds metrics"):
        resumed.load_state_dict({"psnr": {}})


def test_merge_drops_kid_at_the_limit_or_when_a_rank_dropped_it():
    cfg = MetricConfig(
        psnr=False, ssim=False, lpips=False, fid=True, kid=True, kid_subsets=2, kid_subset_size=2
    )
    data = batches(2)
    states = []
    for batch in data:
        rank = suite_of(cfg, [])
        rank.update(*batch)
        states.append(rank.state_dict())

    def merged_kept(counts, kept_none=False, kid=True):
        parts = []
        for state, count in zip(states, counts):
            fid_state = dict(state["fid"])
            fid_state["real"] = (count, *fid_state["real"][1:])
            if kept_none:
                fid_state["kept"] = None
            parts.append({"fid": fid_state})
        suite = suite_of(dataclasses.replace(cfg, kid=kid), [])
        suite.merge_state_dicts(parts, [[0], [1]])
        return suite.metrics[0]

    under = merged_kept([KID_MAX // 2, KID_MAX // 2 - 1])
    assert under.kept is not None and under.real.count == KID_MAX - 1 and "kid" not in under.not_computed
    at = merged_kept([KID_MAX // 2, KID_MAX // 2])
    assert at.kept is None and "2048 images or more" in at.not_computed["kid"]
    dropped = merged_kept([3, 3], kept_none=True)
    assert dropped.kept is None and "kid" in dropped.not_computed
    fid_only = merged_kept([3, 3], kept_none=True, kid=False)
    assert fid_only.kept is None and fid_only.not_computed == {}
    assert fid_only.fake.count == 6 and fid_only.real.count == 6


def test_observing_past_the_limit_drops_kid_and_update_is_observe_without_reuse():
    cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=True, kid=True)
    recon, original = batches(1)[0]
    metric = suite_of(cfg, []).metrics[0]
    metric.real.count = KID_MAX - 4  # as if 2,044 images had been scored: 2,047 after this batch
    assert metric.update(recon, original) == {}
    assert len(metric.kept) == 1 and metric.not_computed == {}
    assert metric.real.count == metric.fake.count + KID_MAX - 4 == KID_MAX - 1
    at_limit = suite_of(cfg, []).metrics[0]
    at_limit.real.count = KID_MAX - 3  # 2,048 after this batch: KID is dropped, its features freed
    at_limit.observe(recon, original, None)
    assert at_limit.kept is None and "2048 images or more" in at_limit.not_computed["kid"]
    assert at_limit.state()["kept"] is None  # a checkpoint then holds no features


def test_a_missing_inception_file_skips_fid_and_kid_loudly(tmp_path, caplog):
    missing = tmp_path / "inception.pth"
    for kid, keys in ((True, {"fid", "kid"}), (False, {"fid"})):
        cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=True, kid=kid)
        cfg.weights["inception"] = str(missing)
        caplog.clear()
        suite = MetricSuite(cfg, CPU, torch.float32)
        assert suite.metrics == [] and set(suite.skipped) == keys
        assert set(suite.not_computed()) == keys
        for reason in suite.skipped.values():
            assert (
                reason.startswith("network weights missing (metric.missing_weights=skip): ")
                and str(missing) in reason
            )
        assert f"{'/'.join(sorted(keys))} skipped, the job goes on without it: " in caplog.text
        assert str(missing) in caplog.text
