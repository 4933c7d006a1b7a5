"""FID's reference features kept across the jobs of one process (``run.feature_cache_mb``).

The claim is that reuse changes nothing but time: a job whose originals' features come from an
earlier job writes the same per-image rows and metrics, to the last bit, as the same job with the
cache off; and anything that changes Inception's input (a rewritten file, the degraded input as
reference, another ground-truth cast) is a miss. Inception counts the images it sees through a
forward hook, so a hit is observed, not inferred.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import evaluate_job, read_per_image, write_rgb
from vaes4rs import files
from vaes4rs.config import MetricConfig
from vaes4rs.metrics.reference_cache import REFERENCE_FEATURES, FeatureCache, ReferenceBatch
from vaes4rs.metrics.suite import InceptionDistances, MetricSuite

FEATURE_BYTES = 2048 * 4  # one image's float32 pool features


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    REFERENCE_FEATURES.clear()
    yield
    REFERENCE_FEATURES.clear()


def run_job(compose_conf: Callable, model_dir: Path, root: Path, out_dir: Path, *overrides: str) -> dict:
    protocol = [
        "metric=paper",
        "metric.lpips=false",
        "metric.kid=true",
        "run.batch_size=1",
        "run.n_samples=0",
    ]
    return evaluate_job(compose_conf, model_dir, root, out_dir, *protocol, *overrides)


def test_a_job_that_reuses_the_originals_features_scores_the_same(
    compose_conf, planted_home: Path, tiny_models: Path, tmp_path: Path
) -> None:
    """Two jobs of one process on the same images: the first computes and keeps, the second reuses.

    The same model twice, so every number must match: the first job's features were computed,
    the second's came from the cache (a sweep's second model differs only in its reconstructions).
    """
    image_folder = tmp_path / "images"  # 2 images, a batch each: Inception at 299 px is the cost
    for i in range(2):
        write_rgb(image_folder / f"class{i}" / f"{i}.png", 32, 32, seed=i)
    model = tiny_models / "FLUX2-VAE"
    computed = run_job(compose_conf, model, image_folder, tmp_path / "computed")
    assert REFERENCE_FEATURES.bytes == 2 * FEATURE_BYTES
    assert (len(REFERENCE_FEATURES.entries), REFERENCE_FEATURES.hits) == (2, 0)

    reused = run_job(compose_conf, model, image_folder, tmp_path / "reused")
    assert REFERENCE_FEATURES.hits == 2  # both batches found
    assert REFERENCE_FEATURES.bytes == 2 * FEATURE_BYTES  # and nothing stored twice
    assert {"fid", "kid"} <= set(computed["metrics"])
    assert reused["metrics"] == computed["metrics"]  # FID, KID, PSNR, SSIM: equal to the last bit
    rows = [read_per_image(tmp_path / name / files.PER_IMAGE_FILE) for name in ("computed", "reused")]
    assert rows[0].keys() == rows[1].keys()
    for key in rows[0]:
        assert np.array_equal(rows[0][key], rows[1][key]), key


def test_anything_that_changes_inceptions_input_is_a_miss(planted_home: Path, tmp_path: Path) -> None:
    cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=True, kid=False)
    paths = [tmp_path / f"{i}.png" for i in range(2)]  # two files, so their order can change
    for path in paths:
        path.write_bytes(b"stand-in: only the file's identity is read")
    ids = [(f"c/{path.name}", path) for path in paths]
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    recon = (original + 0.1 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(-1, 1)

    # What is looked up, not Inception's values, is under test: a cheap stand-in with Inception's
    # output shape takes its place in the suites' shared networks (the first test runs the real one).
    stand_in = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2048))
    seen: list[int] = []  # images it sees, call by call
    stand_in.register_forward_hook(lambda _module, args, _out: seen.append(len(args[0])))
    networks = {InceptionDistances.__name__: lambda images: stand_in(images.float())}

    def originals_seen(source: ReferenceBatch | None, model_dtype=torch.float32, budget_mib: int = 64) -> int:
        """Images Inception sees of the originals (0 on a hit) in a new job's first batch."""
        suite = MetricSuite(cfg, torch.device("cpu"), model_dtype, networks, feature_cache_mib=budget_mib)
        seen.clear()
        suite.update(recon, original, source=source)
        return sum(seen) - len(recon)

    clean = ReferenceBatch.of("dataset config", ids, "clean", original.shape)
    assert originals_seen(clean) == 2  # first job: computed and stored
    assert originals_seen(ReferenceBatch.of("dataset config", ids, "clean", original.shape)) == 0
    assert originals_seen(ReferenceBatch.of("dataset config", ids, "input", original.shape)) == 2
    assert originals_seen(ReferenceBatch.of("another config", ids, "clean", original.shape)) == 2
    assert originals_seen(ReferenceBatch.of("dataset config", ids[::-1], "clean", original.shape)) == 2
    # gt_dtype=model casts the originals to the model's dtype: another dtype is another input
    assert originals_seen(clean, model_dtype=torch.bfloat16) == 2
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file rewritten
    assert originals_seen(ReferenceBatch.of("dataset config", ids, "clean", original.shape)) == 2

    # the same ids and file stats at another path (a copy with the same modification time)
    (tmp_path / "copy").mkdir()
    copies = [tmp_path / "copy" / path.name for path in paths]
    for path, copy in zip(paths, copies):
        copy.write_bytes(path.read_bytes())
        os.utime(copy, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    moved = [(image_id, copy) for (image_id, _), copy in zip(ids, copies)]
    assert originals_seen(ReferenceBatch.of("dataset config", moved, "clean", original.shape)) == 2
    # the same files at another shape (which only another config could give, but the key says so)
    assert originals_seen(ReferenceBatch.of("dataset config", ids, "clean", (2, 3, 32, 33))) == 2

    # a job with the cache off neither reads what others kept nor keeps anything itself
    assert originals_seen(clean, budget_mib=0) == 2
    # the smallest budget, 1 MiB, holds these 2 images' features (16 KiB)
    small = ReferenceBatch.of("small budget", ids, "clean", original.shape)
    assert originals_seen(small, budget_mib=1) == 2 and originals_seen(small, budget_mib=1) == 0
    # a batch whose source the loop does not say is never looked up or kept
    assert originals_seen(None) == 2 and originals_seen(None) == 2

    REFERENCE_FEATURES.clear()
    assert originals_seen(clean, budget_mib=0) == 2
    assert REFERENCE_FEATURES.bytes == 0
    assert originals_seen(clean) == 2  # a zero budget stored nothing
    assert REFERENCE_FEATURES.bytes == 2 * FEATURE_BYTES


def test_a_new_cache_starts_empty_counts_hits_and_keeps_its_budget() -> None:
    cpu = torch.device("cpu")
    cache = FeatureCache()
    assert (cache.bytes, cache.hits, cache.entries) == (0, 0, {})
    features = torch.arange(6, dtype=torch.float64).reshape(2, 3)  # kept in their own dtype
    expected = features.clone()
    cache.put("a", features, budget_mib=1)
    features.add_(100)  # the caller's tensor changes afterwards: the kept features are a copy
    assert cache.bytes == 48
    assert cache.get("b", cpu) is None
    assert cache.get("a", cpu).dtype == torch.float64
    assert torch.equal(cache.get("a", cpu), expected)
    assert torch.equal(cache.get("a", cpu), expected)
    assert cache.hits == 3
    assert cache.get("a", torch.device("meta")).device.type == "meta"  # moved to the device asked
    cache.put("a", expected * 2, budget_mib=1)  # a key already kept keeps its first features
    assert torch.equal(cache.get("a", cpu), expected) and cache.bytes == 48
    full = torch.zeros(2**20 // 4 - 11)  # with the 48 bytes kept, 4 bytes over 1 MiB
    cache.put("full", full, budget_mib=1)
    assert "full" not in cache.entries and cache.bytes == 48
    cache.put("fits", full[:-1], budget_mib=1)  # exactly 1 MiB in all
    assert cache.bytes == 2**20
