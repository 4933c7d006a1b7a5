"""Reused reference features are keyed by the Inception file too: another file is a miss.

Two byte-identical weight files with the same modification time at two paths, then the first
rewritten (its modification time) and regrown (its size): each must recompute the originals'
features. Inception is a cheap stand-in in the suites' shared networks (the file is never
loaded); it counts the images it sees, so a hit is observed, not inferred.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vaes4rs.config import MetricConfig
from vaes4rs.metrics.reference_cache import REFERENCE_FEATURES, ReferenceBatch
from vaes4rs.metrics.suite import InceptionDistances, MetricSuite


def test_another_inception_file_is_a_miss(tmp_path: Path) -> None:
    image = tmp_path / "0.png"
    image.write_bytes(b"stand-in: only the file's identity is read")
    first, second = tmp_path / "a" / "inception.pth", tmp_path / "b" / "inception.pth"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"weights")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(1, 3, 4, 4, generator=generator) * 2 - 1
    recon = original.flip(-1)
    seen: list[int] = []  # images the stand-in sees, call by call

    def stand_in(images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return torch.zeros(len(images), 2048)

    def originals_seen(weight_file: Path) -> int:
        """Images Inception sees of the originals (0 on a hit) in a new job's first batch."""
        cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=True, kid=False)
        cfg.weights["inception"] = str(weight_file)
        suite = MetricSuite(
            cfg,
            torch.device("cpu"),
            torch.float32,
            {InceptionDistances.__name__: stand_in},
            feature_cache_mib=64,
        )
        seen.clear()
        source = ReferenceBatch.of("dataset config", [("c/0.png", image)], "clean", original.shape)
        suite.update(recon, original, source=source)
        return sum(seen) - len(recon)

    REFERENCE_FEATURES.clear()
    try:
        assert originals_seen(first) == 1  # computed and stored
        assert originals_seen(first) == 0  # the same file: reused
        assert originals_seen(second) == 1  # the same bytes and time at another path
        assert originals_seen(second) == 0
        os.utime(first, ns=(1_000_000_000, 2_000_000_000))  # rewritten
        assert originals_seen(first) == 1
        with first.open("ab") as file:  # regrown, its modification time put back
            file.write(b"!")
        os.utime(first, ns=(1_000_000_000, 2_000_000_000))
        assert originals_seen(first) == 1
        assert originals_seen(first) == 0
    finally:
        REFERENCE_FEATURES.clear()


def test_reused_features_come_back_on_the_metrics_device(tmp_path: Path) -> None:
    """The meta device stands in for an accelerator: kept features live on the host and must be
    moved to the device the running statistics are on (the key names the device, too)."""
    image = tmp_path / "0.png"
    image.write_bytes(b"stand-in")
    meta = torch.device("meta")
    cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=True, kid=True)
    cfg.weights["inception"] = str(image)  # any file: the stand-in network never reads it
    suite = MetricSuite(
        cfg,
        meta,
        torch.float32,
        {InceptionDistances.__name__: lambda x: torch.zeros(len(x), 2048, device=x.device)},
        feature_cache_mib=64,
    )
    metric = suite.metrics[0]
    assert metric.input_settings()[2] == "meta"
    source = ReferenceBatch.of("dataset config", [("c/0.png", image)], "clean", (1, 3, 4, 4))
    REFERENCE_FEATURES.clear()
    try:
        # what an earlier job on this device would have kept (a meta tensor cannot be copied out)
        # gt_dtype=model, networks not compiled
        key = ((source, str(cfg.gt_dtype), str(torch.float32), False), *metric.input_settings())
        REFERENCE_FEATURES.put(key, torch.ones(1, 2048), budget_mib=1)
        pred = torch.zeros(1, 3, 4, 4, device=meta)
        suite.update(pred, pred, source=source)
        assert REFERENCE_FEATURES.hits == 1
        assert metric.real.count == 1 and metric.kept[0][0].device == meta
        # a checkpoint (host tensors) resumed on this device: its sums are moved here too
        host_state = InceptionDistances(cfg, torch.device("cpu"), {"InceptionDistances": None}).state()
        metric.load_state(host_state)
        assert {
            t.device for t in (metric.real.total, metric.real.outer, metric.fake.total, metric.fake.outer)
        } == {meta}
        metric.merge_states([host_state, host_state], [[], []])  # and so are several ranks' merged
        assert {
            t.device for t in (metric.real.total, metric.real.outer, metric.fake.total, metric.fake.outer)
        } == {meta}
    finally:
        REFERENCE_FEATURES.clear()
