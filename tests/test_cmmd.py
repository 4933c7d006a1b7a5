"""CMMD: the MMD estimators against the formula written out here, and the CLIP embeddings of the
suite against CLIP's preprocessing done by hand, through weights planted in a temporary hub cache.

A ViT-L/14 forward costs about 350 GFLOPs an image, too slow for a CPU test: the suite's tests
plant a one-block CLIP ViT-B/32 of the same family (QuickGELU, OpenAI preprocessing), set on the
CMMD metric class; one test builds the study's CLIP_MODEL itself, one block deep, to check its
preprocessing, activation and embedding width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.timm_weights import offline_cache, one_thread, plant_timm, repo_of
from vaes4rs.config import MetricConfig
from vaes4rs.errors import ConfigError
from vaes4rs.metrics import cmmd, suite, weights
from vaes4rs.metrics.suite import MetricSuite

CPU = torch.device("cpu")
SMALL_CLIP = "vit_base_patch32_clip_quickgelu_224.openai"
ONLY_CMMD = dict(psnr=False, ssim=False, lpips=False, fid=False, cmmd=True)
# CLIP's published normalisation (openai/CLIP clip.py, _transform)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    yield from one_thread()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, nn.Module]]:
    """An offline hub cache holding a random one-block CLIP ViT-B/32; yields (cache, that model)."""
    cache = tmp_path_factory.mktemp("hub")
    model = plant_timm(cache, SMALL_CLIP, depth=1)
    yield from ((path, model) for path in offline_cache(cache))


@pytest.fixture()
def small_clip(monkeypatch: pytest.MonkeyPatch, hub: tuple[Path, nn.Module]) -> nn.Module:
    """The suite's CMMD reads the planted small CLIP; returns the planted model."""
    monkeypatch.setattr(suite.CMMD, "clip_model", SMALL_CLIP)
    monkeypatch.setattr(suite.CMMD, "clip_overrides", {"depth": 1})
    return hub[1]


def reference_mmd(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Unbiased (paper, Eq. 3) and biased (google-research/cmmd distance.py) MMD^2 x 1000, sigma 10."""

    def k(a: list[float], b: list[float]) -> float:
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / (2 * 10.0**2))

    xs, ys = x.double().tolist(), y.double().tolist()
    m, n = len(xs), len(ys)
    xx = sum(k(xs[i], xs[j]) for i, j in itertools.permutations(range(m), 2))
    yy = sum(k(ys[i], ys[j]) for i, j in itertools.permutations(range(n), 2))
    xy = sum(k(a, b) for a in xs for b in ys)
    unbiased = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
    # the reference averages every entry of each kernel matrix, the diagonal's exp(0) = 1 included
    biased = (xx + m) / m**2 + (yy + n) / n**2 - 2 * xy / (m * n)
    return 1000 * unbiased, 1000 * biased


def clip_by_hand(model: nn.Module, images: torch.Tensor, side: int, crop: int) -> torch.Tensor:
    """OpenAI CLIP's eval transform on square [-1, 1] images: bicubic resize to ``side``, centre crop,
    CLIP mean/std; then the model and L2 normalisation (google-research/cmmd embedding.py)."""
    pixels = ((images + 1) / 2).clamp(0, 1)
    resized = nn.functional.interpolate(pixels, size=(side, side), mode="bicubic", antialias=True)
    top = (side - crop) // 2
    cropped = resized[..., top : top + crop, top : top + crop]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        embedding = model((cropped - mean) / std)
    return embedding / embedding.norm(dim=1, keepdim=True)


def image_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Four batches of 40x40 originals, reconstructions (a blurred, noisy copy) and labels; class
    "beach" has 4 images, "forest" 3, "port" 1 (too few for a per-class MMD)."""
    generator = torch.Generator().manual_seed(seed)
    labels = ["beach", "beach", "forest", "beach", "forest", "port", "forest", "beach"]
    coarse = torch.rand(len(labels), 3, 5, 5, generator=generator)
    originals = nn.functional.interpolate(coarse, size=(40, 40), mode="bilinear") * 2 - 1
    recon = nn.functional.avg_pool2d(originals, 3, 1, 1) + 0.05 * torch.randn(
        originals.shape, generator=generator
    )
    return [(recon[i : i + 2], originals[i : i + 2], labels[i : i + 2]) for i in range(0, len(labels), 2)]


def run_suite(batches: list[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> MetricSuite:
    metric_suite = MetricSuite(MetricConfig(**ONLY_CMMD), CPU, torch.float32)
    for recon, original, labels in batches:
        metric_suite.update(recon, original, labels=labels)
    return metric_suite


def test_mmd2_is_the_papers_unbiased_estimator_and_the_reference_codes_biased_one(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    x = nn.functional.normalize(torch.randn(7, 6, generator=generator), dim=1)
    y = nn.functional.normalize(torch.randn(5, 6, generator=generator) + 0.8, dim=1)
    expected = reference_mmd(x, y)
    assert cmmd.mmd2(x, y) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(cmmd, "_BLOCK_VALUES", 6)  # one row of a block at a time: same sums
    assert cmmd.mmd2(x, y) == pytest.approx(expected, rel=1e-10)
    unbiased_same, biased_same = cmmd.mmd2(x, x)
    # one set against itself: the V-statistic is 0, the unbiased one 2 (mean off-diagonal k - 1) / m < 0
    assert biased_same == pytest.approx(0, abs=1e-9)
    assert unbiased_same == pytest.approx(reference_mmd(x, x)[0], rel=1e-10) and unbiased_same < 0
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        cmmd.mmd2(x[:1], y)


def test_mmd2_from_two_embeddings_per_set_the_least_the_unbiased_estimator_takes():
    generator = torch.Generator().manual_seed(2)
    x = nn.functional.normalize(torch.randn(2, 4, generator=generator), dim=1)
    y = nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=1)
    # float64 sums of a handful of exponentials: agreement to ~1e-15 relative
    assert cmmd.mmd2(x, y) == pytest.approx(reference_mmd(x, y), rel=1e-10)
    assert cmmd.mmd2(y, x) == pytest.approx(reference_mmd(y, x), rel=1e-10)
    message = r"^the unbiased MMD needs at least 2 embeddings per set, got 3 and 1$"
    with pytest.raises(ValueError, match=message):
        cmmd.mmd2(y, x[:1])


def test_load_clip_errors_name_the_setting_the_metric_and_its_switch(tmp_path: Path):
    typo = "vit_large_patch14_clip_quickgelu_33"
    with pytest.raises(ConfigError, match=rf"^cmmd\.CLIP_MODEL={typo}: not a timm model"):
        cmmd.load_clip({}, CPU, model_name=typo)
    for _ in offline_cache(tmp_path):  # an empty cache, offline
        with pytest.raises(weights.MissingWeightsError) as err:
            cmmd.load_clip({}, CPU, model_name=SMALL_CLIP, depth=1)
    message = str(err.value)
    assert message.startswith(f"CMMD's CLIP ViT-L/14-336 needs {SMALL_CLIP}'s pretrained weights")
    assert message.endswith(
        "set metric.weights.clip=<file> (a timm state dict, .safetensors or .pth); "
        "or switch it off with metric.cmmd=false"
    )


def test_load_clip_puts_the_network_on_the_device_asked(small_clip):
    """The meta device stands in for an accelerator: parameters must land where the caller said."""
    embed = cmmd.load_clip({}, torch.device("meta"), model_name=SMALL_CLIP, depth=1)
    assert {p.device.type for p in embed.model.parameters()} == {"meta"}
    assert embed.unit
    on_meta = MetricSuite(MetricConfig(**ONLY_CMMD), torch.device("meta"), torch.float32)
    assert {p.device.type for p in on_meta.metrics[0].net.model.parameters()} == {"meta"}


def test_the_study_clip_is_openai_vit_l14_336_with_quickgelu(tmp_path: Path):
    """CLIP_MODEL, built one block deep from planted weights: CLIP's 336-px preprocessing, QuickGELU
    (as OpenAI's network and the reference's transformers model have it), 768-d unit embeddings."""
    from timm.layers import QuickGELU

    for _ in offline_cache(tmp_path):
        planted = plant_timm(tmp_path, cmmd.CLIP_MODEL, depth=1)
        embed = cmmd.load_clip({}, CPU, depth=1)
        assert repo_of(cmmd.CLIP_MODEL) == "timm/vit_large_patch14_clip_336.openai"
        assert embed.config["input_size"] == (3, 336, 336) and embed.config["crop_pct"] == 1.0
        assert embed.config["interpolation"] == "bicubic"
        assert embed.config["mean"] == CLIP_MEAN and embed.config["std"] == CLIP_STD
        assert isinstance(embed.model.blocks[0].mlp.act, QuickGELU)
        images = torch.rand(1, 3, 48, 48) * 2 - 1
        got = embed(images)
        assert got.shape == (1, 768)
        torch.testing.assert_close(got, clip_by_hand(planted, images, 336, 336), rtol=1e-4, atol=1e-5)


def test_suite_cmmd_is_the_formula_on_clip_embeddings_overall_and_per_class(small_clip):
    batches = image_batches()
    metric_suite = run_suite(batches)
    originals = torch.cat([o for _, o, _ in batches])
    recon = torch.cat([r for r, _, _ in batches])
    labels = np.array([label for _, _, batch in batches for label in batch])
    # B/32's OpenAI config: crop_pct 0.9, so the shorter side goes to floor(224 / 0.9) = 248
    real, fake = (clip_by_hand(small_clip, images, 248, 224) for images in (originals, recon))
    values = metric_suite.finalize({"class": labels})
    unbiased, biased = reference_mmd(real, fake)
    assert values["cmmd"] == pytest.approx(unbiased, rel=1e-4, abs=1e-6)
    assert values["cmmd_biased"] == pytest.approx(biased, rel=1e-4, abs=1e-6)
    assert values["cmmd_n"] == len(labels)
    assert abs(values["cmmd"]) > 1e-4  # the reconstructions differ measurably: not a vacuous comparison
    for label in ("beach", "forest"):
        rows = labels == label
        got = metric_suite.summarise({"class": labels[rows]})
        assert got["cmmd"] == pytest.approx(reference_mmd(real[rows], fake[rows])[0], rel=1e-4, abs=1e-6)
    assert metric_suite.summarise({"class": labels[labels == "port"]}) == {}  # one image: no MMD
    assert metric_suite.summarise({"class": labels[labels != "port"]}) == {}  # two classes: not one's
    assert "cmmd" in metric_suite.protocol()["definitions"]


def test_suite_cmmd_needs_two_images_overall_and_per_class(small_clip):
    """One image: no CMMD, with the reason; two images (one class): the formula, overall and for
    the class, the fewest the unbiased estimator takes."""
    recon, original, labels = image_batches(seed=4)[0]
    assert labels == ["beach", "beach"]
    one = run_suite([(recon[:1], original[:1], labels[:1])])
    assert one.finalize({"class": np.array(labels[:1])}) == {}
    assert one.not_computed() == {"cmmd": "needs at least 2 images, got 1"}
    two = run_suite([(recon, original, labels)])
    values = two.finalize({"class": np.array(labels)})
    real, fake = (clip_by_hand(small_clip, images, 248, 224) for images in (original, recon))
    unbiased, biased = reference_mmd(real, fake)
    # float32 embeddings through the same one-block network: ~1e-6 relative on the MMD
    assert values["cmmd"] == pytest.approx(unbiased, rel=1e-4, abs=1e-6) and values["cmmd_n"] == 2
    assert values["cmmd_biased"] == pytest.approx(biased, rel=1e-4, abs=1e-6)
    assert two.summarise({"class": np.array(labels)}) == {"cmmd": values["cmmd"]}
    assert "cmmd" not in two.not_computed()


def test_cmmd_state_survives_a_checkpoint_and_merges_across_processes(small_clip, tmp_path: Path):
    batches = image_batches(seed=3)
    labels = np.array([label for _, _, batch in batches for label in batch])
    uninterrupted = run_suite(batches)
    whole = uninterrupted.finalize({"class": labels})
    beach = {"class": labels[labels == "beach"]}

    first = run_suite(batches[:2])
    torch.save(first.state_dict(), tmp_path / "checkpoint.pt")  # as vaes4rs.checkpoint stores it
    resumed = MetricSuite(MetricConfig(**ONLY_CMMD), CPU, torch.float32)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False))
    for recon, original, batch_labels in batches[2:]:
        resumed.update(recon, original, labels=batch_labels)
    assert resumed.finalize({"class": labels}) == whole

    ranks = [run_suite(batches[0::2]), run_suite(batches[1::2])]
    merged = MetricSuite(MetricConfig(**ONLY_CMMD), CPU, torch.float32)
    merged.merge_state_dicts([rank.state_dict() for rank in ranks], [[0, 2], [1, 3]])
    assert merged.finalize({"class": labels}) == whole
    assert merged.summarise(beach) == resumed.summarise(beach) == uninterrupted.summarise(beach) != {}


def test_missing_clip_weights_name_the_repo_and_every_way_out(small_clip, tmp_path: Path):
    for _ in offline_cache(tmp_path):  # an empty cache, offline
        skipped = MetricSuite(MetricConfig(**ONLY_CMMD), CPU, torch.float32)
        reason = skipped.not_computed()["cmmd"]
        assert f"hf download {repo_of(SMALL_CLIP)}" in reason
        assert "metric.weights.clip=<file>" in reason and "metric.cmmd=false" in reason
        assert skipped.finalize({"class": np.array([])}) == {}
        with pytest.raises(weights.MissingWeightsError, match="hub is offline"):
            MetricSuite(MetricConfig(**ONLY_CMMD, missing_weights="error"), CPU, torch.float32)
    where, fetch = weights.timm_weights_source(cmmd.CLIP_MODEL, "cmmd.CLIP_MODEL")
    assert "timm/vit_large_patch14_clip_336.openai" in where and "hf download" in fetch


def test_clip_weights_from_an_explicit_file(small_clip, tmp_path: Path):
    file = tmp_path / "clip.safetensors"
    save_file(small_clip.state_dict(), file)
    images = torch.rand(2, 3, 40, 40) * 2 - 1
    for _ in offline_cache(tmp_path / "empty"):
        embed = cmmd.load_clip({"clip": str(file)}, CPU, model_name=SMALL_CLIP, depth=1)
        torch.testing.assert_close(
            embed(images), clip_by_hand(small_clip, images, 248, 224), rtol=1e-4, atol=1e-5
        )
        with pytest.raises(
            weights.MissingWeightsError, match=r"metric.weights.clip=.*nowhere.pt: no such file"
        ):
            cmmd.load_clip({"clip": str(tmp_path / "nowhere.pt")}, CPU, model_name=SMALL_CLIP, depth=1)
        with pytest.raises(ConfigError, match="does not hold"):
            cmmd.load_clip({"clip": str(file)}, CPU, model_name=SMALL_CLIP, depth=2)
