"""Each metric definition against its reference implementation, on the same image pairs.

Pretrained networks cannot be downloaded here (no internet), so the fixture (tests/conftest.py)
``planted_home`` writes *randomly initialised* weights of the right architectures into a
temporary TORCH_HOME under the file names the libraries look for (torchvision's
``alexnet-owt-7be5be79.pth`` and ``vgg16-397923af.pth``, torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``, piq's ``lpips_weights.pt`` and
``dists_weights.pt``). Our code and every reference then load the very same files, so the
comparisons check definitions and arithmetic, not the trained networks' values. The
LPIPS-AlexNet heads are the real v0.1 ones that torchmetrics and lpips ship (identical).
Convolutions are He-initialised so activations keep their scale through deep stacks.

The reference side never calls vaes4rs: reconstructions sit off the 8-bit grid by offsets
the test chose (tests/metric_weights.py ``known_level_pairs``), so the rounded and truncated
pictures a protocol must score are known without the project's quantisation. Each
tolerance is stated relative to its quantity, with where the remaining error comes from.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CONF_DIR
from tests.metric_weights import KnownLevels, known_level_pairs
from vaes4rs.config import MetricConfig
from vaes4rs.metrics import fid, perceptual
from vaes4rs.metrics.suite import MetricSuite

N_IMAGES = 5
N_FID = 3  # InceptionV3 at 299x299 is slow on a shared CPU: FID/KID tests use the first three
BATCH = 3  # compute batches cut across the pooling groups on purpose
GROUP = 2  # pool size standing in for the study's 64
OFF = dict(psnr=False, ssim=False, lpips=False, fid=False, kid=False)


@pytest.fixture(scope="module")
def pairs() -> KnownLevels:
    """5 images 64x64: uint8 originals, [-1, 1] tensors, reconstructions and their 8-bit pictures."""
    return known_level_pairs(N_IMAGES, 64, 64, seed=1)


def levels_to_unit(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels as [0, 1] floats, k / 255."""
    return levels.double() / 255


def run_suite(
    cfg: MetricConfig, x: torch.Tensor, recon: torch.Tensor, model_dtype: torch.dtype = torch.float32
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Drive the suite as the evaluation loop does: batches in order, then finalize."""
    suite = MetricSuite(cfg, torch.device("cpu"), model_dtype)
    parts = [suite.update(recon[i : i + BATCH], x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    table = {key: np.concatenate([part[key] for part in parts]) for key in suite.columns}
    table["height"] = np.full(len(x), x.shape[-2])
    table["width"] = np.full(len(x), x.shape[-1])
    return table, suite.finalize(table)


def protocol(name: str, **overrides) -> MetricConfig:
    """conf/metric/<name>.yaml merged into the schema, as a run composes it."""
    merged = OmegaConf.merge(
        OmegaConf.structured(MetricConfig), OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml")
    )
    return replace(OmegaConf.to_object(merged), **overrides)


def paper_cfg(**overrides) -> MetricConfig:
    return protocol("paper", pool_size=GROUP, **overrides)


def standard_cfg(**overrides) -> MetricConfig:
    return protocol("standard", bootstrap=0, **overrides)


def groups(n: int) -> list[slice]:
    return [slice(start, start + GROUP) for start in range(0, n, GROUP)]


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_paper_psnr_ssim_equal_torchmetrics_called_per_batch(pairs, model_dtype) -> None:
    """The study called PeakSignalNoiseRatio / StructuralSimilarityIndexMeasure(data_range=2.0)
    on each batch (ground truth cast to the model dtype) and averaged the batch values."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    _, ours = run_suite(paper_cfg(lpips=False, fid=False), pairs.x, pairs.recon, model_dtype)
    psnr_ref, ssim_ref = (
        PeakSignalNoiseRatio(data_range=2.0),
        StructuralSimilarityIndexMeasure(data_range=2.0),
    )
    recon, gt = pairs.recon.double(), pairs.x.to(model_dtype).double()
    psnr = np.mean([psnr_ref(recon[g], gt[g]).item() for g in groups(N_IMAGES)])
    ssim = np.mean([ssim_ref(recon[g], gt[g]).item() for g in groups(N_IMAGES)])
    # The same float64 tensors, but torchmetrics sums squared errors and SSIM values in
    # float32 states: ~3e-8 of PSNR and ~1e-8 of SSIM seen.
    assert ours["psnr"] == pytest.approx(psnr, rel=1e-6)
    assert ours["ssim"] == pytest.approx(ssim, abs=1e-7)


def test_paper_lpips_equals_torchmetrics_alex_per_batch(planted_home, pairs) -> None:
    """Batch means of torchmetrics' LPIPS-AlexNet, averaged over batches. Both run float32
    AlexNet on the same input (~1e-7 of LPIPS apart); the input scaling 0.448 for 0.458 moves
    this mean by 8e-4 of itself, so 1e-5 relative leaves a margin of ~75."""
    from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

    _, ours = run_suite(paper_cfg(psnr=False, ssim=False, fid=False), pairs.x, pairs.recon)
    reference = LearnedPerceptualImagePatchSimilarity(net_type="alex")
    expected = np.mean([reference(pairs.recon[g], pairs.x[g]).item() for g in groups(N_IMAGES)])
    assert ours["lpips"] == pytest.approx(expected, rel=1e-5)


def test_lpips_alex_per_image_equals_lpips_package(planted_home, pairs) -> None:
    """The standard protocol rounds reconstructions first: the lpips package gets the rounded
    levels the test fixed. In float64 the only difference left is where the two put the
    normalisation's epsilon (sqrt(s + 1e-8) against sqrt(s) + 1e-10): 7e-11 of LPIPS seen."""
    import lpips

    table, _ = run_suite(standard_cfg(**{**OFF, "lpips": True}), pairs.x, pairs.recon)
    reference = lpips.LPIPS(net="alex", version="0.1", verbose=False)
    rounded = pairs.rounded.float() / 127.5 - 1
    with torch.no_grad():
        expected = reference(rounded, pairs.x).flatten().numpy()
        ours64 = perceptual.load_lpips_alex({}, torch.device("cpu")).double()(
            rounded.double(), pairs.x.double()
        )
        expected64 = reference.double()(rounded.double(), pairs.x.double()).flatten()
    np.testing.assert_allclose(table["lpips"], expected, rtol=1e-5)  # float32 AlexNet, as above
    np.testing.assert_allclose(ours64.numpy(), expected64.numpy(), rtol=1e-8)


def test_standard_ssim_equals_skimage(pairs) -> None:
    """skimage (gaussian_weights, sigma 1.5, population covariance) averages only windows
    that fit inside the image, as the standard protocol's ``ssim_border=valid`` does. The
    study's torchmetrics SSIM also averages the reflect-padded border; on these 64x64 images
    (29% of pixels within 5 px of a border) that moves SSIM by more than 1e-3, which is why
    the protocols name their border handling."""
    from skimage.metrics import structural_similarity
    from torchmetrics.functional.image import structural_similarity_index_measure

    table, _ = run_suite(standard_cfg(**{**OFF, "ssim": True}), pairs.x, pairs.recon)
    pred01, target01 = levels_to_unit(pairs.rounded), levels_to_unit(pairs.originals)
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0)
    expected = np.array(
        [structural_similarity(p.numpy(), t.numpy(), **kwargs) for p, t in zip(pred01, target01)]
    )
    # Ours scores float32 pixels (k / 127.5 - 1 carries 6e-8): ~1e-9 of SSIM seen.
    np.testing.assert_allclose(table["ssim"], expected, atol=1e-7, rtol=0)
    reflect = structural_similarity_index_measure(pred01, target01, data_range=1.0, reduction="none").numpy()
    assert np.abs(reflect - expected).min() > 1e-3


def test_paper_fid_equals_torchmetrics_fid_on_same_uint8(planted_home, pairs) -> None:
    """torchmetrics FrechetInceptionDistance(feature=2048), antialiased resize, fed per batch
    with the study's truncated uint8: of the bf16-cast originals (its formula written out)
    and of the reconstructions (the truncated levels the test fixed)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, recon, truncated = pairs.x[:N_FID], pairs.recon[:N_FID], pairs.truncated[:N_FID]
    _, ours = run_suite(paper_cfg(psnr=False, ssim=False, lpips=False), x, recon, torch.bfloat16)
    reference = FrechetInceptionDistance(feature=2048, antialias=True)
    gt = x.to(torch.bfloat16).float()
    for g in groups(N_FID):
        reference.update((((gt[g] + 1) / 2).clamp(0, 1) * 255).to(torch.uint8), real=True)
        reference.update(truncated[g], real=False)
    assert ours["fid_n"] == N_FID
    # Same features (float32 Inception); both take the trace term from eigenvalues in float64.
    assert ours["fid"] == pytest.approx(reference.compute().item(), rel=1e-6)


def test_standard_fid_kid_equal_torch_fidelity_on_folders(planted_home, pairs, tmp_path) -> None:
    """torch-fidelity's calculate_metrics on two PNG folders: the originals and the
    reconstructions' rounded levels (what a PNG writer stores), named in dataset order."""
    from torch_fidelity import calculate_metrics

    kid_args = dict(kid_subsets=10, kid_subset_size=2)
    cfg = standard_cfg(psnr=False, ssim=False, lpips=False, **kid_args)
    _, ours = run_suite(cfg, pairs.x[:N_FID], pairs.recon[:N_FID])
    for name, images in (("real", pairs.originals[:N_FID]), ("fake", pairs.rounded[:N_FID])):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    expected = calculate_metrics(
        input1=str(tmp_path / "real"),
        input2=str(tmp_path / "fake"),
        cuda=False,
        fid=True,
        kid=True,
        cache=False,
        verbose=False,
        **kid_args,
    )
    # Same float32 features; FID statistics in float64 on both sides (one-pass sums against
    # np.cov's two-pass centring: ~1e-9 of FID); KID is torch-fidelity's own function.
    assert ours["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-6)
    assert ours["kid"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-6)
    assert ours["kid_std"] == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-6)


def test_fid_resize_switch_picks_torch_fidelity_or_antialias(planted_home, pairs) -> None:
    """``tf1`` gives torch-fidelity's own extractor's features exactly; ``antialias`` others."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    image = pairs.originals[:1]
    weights = MetricConfig().weights
    with torch.no_grad():
        tf1 = fid.load_inception(weights, "tf1", torch.device("cpu"))(image)
        antialias = fid.load_inception(weights, "antialias", torch.device("cpu"))(image)
        reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])(image)[0]
    torch.testing.assert_close(tf1, reference, atol=1e-6, rtol=0)
    assert (antialias - tf1).abs().max() > 1e-3


def test_piq_lpips_vgg_and_dists_equal_piq_classes(planted_home, pairs) -> None:
    """piq's own LPIPS and DISTS classes on the rounded levels, in float32 as ours run. Our
    input is (k / 127.5 - 1 + 1) / 2 in float32, the reference's k / 255: 6e-8 apart, which
    VGG16's depth turns into up to 4e-5 of these small distances; 1e-4 allowed."""
    import piq

    table, _ = run_suite(standard_cfg(**{**OFF, "lpips_vgg": True, "dists": True}), pairs.x, pairs.recon)
    pred01, target01 = levels_to_unit(pairs.rounded).float(), levels_to_unit(pairs.originals).float()
    with torch.no_grad():
        lpips_vgg = piq.LPIPS(reduction="none")(pred01, target01).numpy()
        dists = piq.DISTS(reduction="none")(pred01, target01).numpy()
    np.testing.assert_allclose(table["lpips_vgg"], lpips_vgg, rtol=1e-4)
    np.testing.assert_allclose(table["dists"], dists, rtol=1e-4)
