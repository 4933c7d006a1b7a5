"""A sweep's next job takes over the last job's LPIPS and Inception instead of loading them again.

Loads are counted where the suite calls them; the claim is that taking them over changes no
number, and that anything which builds the networks differently (the protocol, the weight
files, the compile backend) loads them anew.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import evaluate_job, write_rgb
from vaes4rs.config import MetricConfig
from vaes4rs.metrics import fid, perceptual, weights
from vaes4rs.metrics.suite import CMMD, LPIPS, SHARED_NETWORKS, InceptionDistances, MetricSuite


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counted: Counter = Counter()
    for module, name in ((perceptual, "load_lpips_alex"), (fid, "load_inception")):
        load = getattr(module, name)

        def counting(*args, _load: Callable = load, _name: str = name, **kwargs):
            counted[_name] += 1
            return _load(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    return counted


def test_the_next_job_of_a_sweep_takes_over_the_networks_and_scores_the_same(
    compose_conf, planted_home: Path, tiny_models: Path, tmp_path: Path, loads: Counter
) -> None:
    images = tmp_path / "images"
    for i in range(2):
        write_rgb(images / f"class{i}" / f"{i}.png", 64, 64, seed=i)
    model = tiny_models / "SD21-VAE"
    overrides = ("metric=paper", "run.batch_size=2", "run.n_samples=0", "run.feature_cache_mb=0")

    def job(name: str, *more: str) -> dict:
        return evaluate_job(compose_conf, model, images, tmp_path / name, *overrides, *more)

    first = job("first")
    assert loads == {"load_lpips_alex": 1, "load_inception": 1}
    second = job("second")
    assert loads == {"load_lpips_alex": 1, "load_inception": 1}  # taken over, not loaded
    assert second["metrics"] == first["metrics"]

    job("other_protocol", "metric.ssim=false")  # another protocol: loaded anew
    assert loads == {"load_lpips_alex": 2, "load_inception": 2}
    inception = weights.default_path("inception")
    stat = inception.stat()
    os.utime(inception, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file replaced
    job("new_file", "metric.ssim=false")
    assert loads == {"load_lpips_alex": 3, "load_inception": 3}


def test_only_networks_built_from_the_metric_weight_files_outlive_a_job(planted_home: Path) -> None:
    """CLIP and the probe's backbone come from timm's hub cache, which the key does not cover."""
    cfg = MetricConfig(psnr=False, ssim=False, lpips=True, fid=True, kid=False, cmmd=True)
    stand_in_clip = object()  # never called: only where it ends up is under test
    shared: dict = {}
    suite = MetricSuite(
        cfg, torch.device("cpu"), torch.float32, {CMMD.__name__: stand_in_clip}, shared=shared
    )
    assert set(suite.networks) == {LPIPS.__name__, InceptionDistances.__name__, CMMD.__name__}
    assert set(shared) == {LPIPS.__name__, InceptionDistances.__name__}
    again = MetricSuite(
        cfg, torch.device("cpu"), torch.float32, {CMMD.__name__: stand_in_clip}, shared=shared
    )
    assert again.networks[LPIPS.__name__] is suite.networks[LPIPS.__name__]

    key = SHARED_NETWORKS.job_key(cfg, torch.device("cpu"), None)
    assert SHARED_NETWORKS.for_job(key) is SHARED_NETWORKS.for_job(key)
    assert (
        SHARED_NETWORKS.job_key(cfg, torch.device("cpu"), "inductor") != key
    )  # compiled: not the eager ones
    assert SHARED_NETWORKS.job_key(cfg, torch.device("meta"), None) != key
    store = SHARED_NETWORKS.for_job(key)
    store["x"] = 1
    assert (
        SHARED_NETWORKS.for_job(("another",)) == {} and SHARED_NETWORKS.for_job(key) == {}
    )  # one job's kept
