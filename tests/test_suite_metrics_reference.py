"""Suite-level metrics against definitions written out in the tests, on images the tests make.

MS-SSIM through MetricSuite: the [-1, 1] batch goes to [0, 1] and the per-image values are the
five-scale definition of tests/test_perceptual_reference.py (numpy, written from the paper).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_perceptual_reference import ms_ssim_by_hand, write_network_files
from vaes4rs.config import MetricConfig
from vaes4rs.metrics.suite import MetricSuite

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def network_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_network_files(tmp_path_factory.mktemp("networks"))


def test_suite_ms_ssim_column_is_the_definition_on_0_1_images():
    rng = np.random.default_rng(5)
    coarse = rng.uniform(-1, 1, (2, 3, 23, 25))  # 176 x 192: even sides down to the fifth scale
    original = np.clip(
        np.kron(coarse, np.ones((1, 1, 8, 8)))[..., :176, :192] + rng.normal(0, 0.1, (2, 3, 176, 192)), -1, 1
    )
    recon = np.clip(original + rng.normal(0, 0.15, original.shape), -1, 1)
    recon[0] = np.clip(0.8 * recon[0] - 0.1, -1, 1)  # the first also loses contrast and brightness
    cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=False, ms_ssim=True, pool_size=1)
    suite = MetricSuite(cfg, CPU, torch.float32)
    recon32, original32 = torch.from_numpy(recon).float(), torch.from_numpy(original).float()
    columns = suite.update(recon32, original32)
    assert set(columns) == {"ms_ssim"}
    # the same float32 pixels mapped to [0, 1] in float32, then float64 on both sides: ~1e-14
    pred01, target01 = (((x + 1) / 2).double().numpy() for x in (recon32, original32))
    expected = [ms_ssim_by_hand(pred01[i], target01[i]) for i in range(2)]
    np.testing.assert_allclose(columns["ms_ssim"], expected, rtol=1e-9)
    assert abs(expected[0] - expected[1]) > 0.01
    values = suite.finalize({"ms_ssim": columns["ms_ssim"]})
    assert values["ms_ssim"] == pytest.approx(np.mean(expected), rel=1e-9)  # the per-image mean


def test_suite_networks_load_on_the_device_asked_and_a_second_suite_shares_them(network_files):
    """The meta device stands in for an accelerator; the degraded-input baseline is a second suite
    that must reuse the first one's networks rather than load its own."""
    cfg = MetricConfig(
        psnr=False, ssim=False, lpips=True, lpips_vgg=True, dists=True, fid=False, weights=network_files
    )
    meta = torch.device("meta")
    first = MetricSuite(cfg, meta, torch.float32)
    assert [m.name for m in first.metrics] == ["lpips", "lpips_vgg", "dists"] and not first.skipped
    for metric in first.metrics:
        assert {p.device.type for p in metric.net.parameters()} == {"meta"}, metric.name
    second = MetricSuite(cfg, meta, torch.float32, networks=first.networks)
    alone = MetricSuite(cfg, meta, torch.float32)
    for a, b, c in zip(first.metrics, second.metrics, alone.metrics):
        assert b.net is a.net and c.net is not a.net, a.name


def test_the_protocol_record_holds_each_setting_once() -> None:
    """metrics.json's "protocol": its name under "name", every other setting under its own key."""
    from dataclasses import fields

    cfg = MetricConfig(psnr=True, ssim=False, lpips=False, fid=False, kid=False)
    record = MetricSuite(cfg, torch.device("cpu"), torch.float32).protocol()
    settings = {f.name for f in fields(MetricConfig)} - {"protocol"}
    assert set(record) == {"name", "definitions", "not_computed", *settings}
    assert record["name"] == cfg.protocol
