"""Each metric definition against its reference implementation, on the same image pairs.

Pretrained networks cannot be downloaded here (no internet), so the module fixture
``planted_home`` writes *randomly initialised* weights of the right architectures into a
temporary TORCH_HOME under the file names the libraries look for (torchvision's
``alexnet-owt-7be5be79.pth`` and ``vgg16-397923af.pth``, torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``, piq's ``lpips_weights.pt`` and
``dists_weights.pt``). Our code and every reference then load the very same files, so the
comparisons check definitions and arithmetic, not the trained networks' values. The
LPIPS-AlexNet heads are the real v0.1 ones that torchmetrics and lpips ship (identical).
Convolutions are He-initialised so activations keep their scale through deep stacks.

Tolerance 1e-5 throughout (absolute, or relative for FID whose scale is arbitrary here),
float64 where the reference accepts it; the observed differences are far smaller.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CONF_DIR
from tests.metric_weights import plant_random_metric_weights
from vaes4rs.config import MetricConfig
from vaes4rs.metrics import fid, pixel
from vaes4rs.metrics.suite import MetricSuite

N_IMAGES = 5
N_FID = 3  # InceptionV3 at 299x299 is slow on a shared CPU: FID/KID tests use the first three
BATCH = 3  # compute batches cut across the pooling groups on purpose
GROUP = 2  # pool size standing in for the study's 64
OFF = dict(psnr=False, ssim=False, lpips=False, fid=False, kid=False)


@pytest.fixture(scope="module")
def planted_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("torch_home")
    plant_random_metric_weights(home / "hub" / "checkpoints")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 originals, their [-1, 1] tensors, [-1, 1] 'reconstructions'), 5 images 64x64."""
    generator = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, 256, (N_IMAGES, 3, 8, 8), generator=generator).float()
    smooth = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bicubic", align_corners=False)
    originals = smooth.round().clamp(0, 255).to(torch.uint8)
    x = (originals.float() / 255 - 0.5) / 0.5
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    recon = (blurred + 0.05 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    return originals, x, recon


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

    _, x, recon = pairs
    _, ours = run_suite(paper_cfg(lpips=False, fid=False), x, recon, model_dtype)
    psnr_ref, ssim_ref = (
        PeakSignalNoiseRatio(data_range=2.0),
        StructuralSimilarityIndexMeasure(data_range=2.0),
    )
    gt = x.to(model_dtype).double()
    psnr = np.mean([psnr_ref(recon[g].double(), gt[g]).item() for g in groups(N_IMAGES)])
    ssim = np.mean([ssim_ref(recon[g].double(), gt[g]).item() for g in groups(N_IMAGES)])
    assert ours["psnr"] == pytest.approx(psnr, abs=1e-5)
    assert ours["ssim"] == pytest.approx(ssim, abs=1e-5)


def test_paper_lpips_equals_torchmetrics_alex_per_batch(planted_home, pairs) -> None:
    from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

    _, x, recon = pairs
    _, ours = run_suite(paper_cfg(psnr=False, ssim=False, fid=False), x, recon)
    reference = LearnedPerceptualImagePatchSimilarity(net_type="alex")
    expected = np.mean([reference(recon[g], x[g]).item() for g in groups(N_IMAGES)])
    assert ours["lpips"] == pytest.approx(expected, abs=1e-5)


def test_lpips_alex_per_image_equals_lpips_package(planted_home, pairs) -> None:
    import lpips

    _, x, recon = pairs
    table, _ = run_suite(standard_cfg(**{**OFF, "lpips": True}), x, recon)
    reference = lpips.LPIPS(net="alex", version="0.1", verbose=False)
    with torch.no_grad():
        expected = reference(pixel.quantize(recon, "round"), x).flatten().numpy()
    np.testing.assert_allclose(table["lpips"], expected, atol=1e-5, rtol=0)


def test_standard_ssim_equals_skimage(pairs) -> None:
    """skimage (gaussian_weights, sigma 1.5, population covariance) averages only windows
    that fit inside the image, as the standard protocol's ``ssim_border=valid`` does: equal
    to float64 rounding. The study's torchmetrics SSIM also averages the reflect-padded
    border; on these 64x64 images (29% of pixels within 5 px of a border) that moves SSIM
    by more than 1e-3, which is why the protocols name their border handling."""
    from skimage.metrics import structural_similarity

    _, x, recon = pairs
    table, _ = run_suite(standard_cfg(**{**OFF, "ssim": True}), x, recon)
    pred01, target01 = (pixel.quantize(recon, "round") + 1) / 2, (x + 1) / 2
    expected = np.array(
        [
            structural_similarity(
                p.double().numpy(),
                t.double().numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=0,
            )
            for p, t in zip(pred01, target01)
        ]
    )
    np.testing.assert_allclose(table["ssim"], expected, atol=1e-10, rtol=0)
    reflect = pixel.ssim_per_image(pred01, target01, 1.0, "reflect").numpy()
    assert np.abs(reflect - expected).min() > 1e-3


def test_paper_fid_equals_torchmetrics_fid_on_same_uint8(planted_home, pairs) -> None:
    """torchmetrics FrechetInceptionDistance(feature=2048), antialiased resize, fed per batch
    with the study's truncated uint8 of bf16-cast originals and of the reconstructions."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _, x, recon = (t[:N_FID] for t in pairs)
    _, ours = run_suite(paper_cfg(psnr=False, ssim=False, lpips=False), x, recon, torch.bfloat16)
    reference = FrechetInceptionDistance(feature=2048, antialias=True)
    gt = x.to(torch.bfloat16).float()
    for g in groups(N_FID):
        reference.update((((gt[g] + 1) / 2).clamp(0, 1) * 255).to(torch.uint8), real=True)
        reference.update((((recon[g] + 1) / 2).clamp(0, 1) * 255).to(torch.uint8), real=False)
    assert ours["fid_n"] == N_FID
    assert ours["fid"] == pytest.approx(reference.compute().item(), abs=1e-5)


def test_standard_fid_kid_equal_torch_fidelity_on_folders(planted_home, pairs, tmp_path) -> None:
    """torch-fidelity's calculate_metrics on two PNG folders: the originals and the
    reconstructions as a PNG writer stores them (rounded uint8), named in dataset order."""
    from torch_fidelity import calculate_metrics

    originals, x, recon = (t[:N_FID] for t in pairs)
    kid_args = dict(kid_subsets=10, kid_subset_size=2)
    _, ours = run_suite(standard_cfg(psnr=False, ssim=False, lpips=False, **kid_args), x, recon)
    for name, images in (("real", originals), ("fake", pixel.to_uint8(recon, "round"))):
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
    assert ours["fid"] == pytest.approx(expected["frechet_inception_distance"], abs=1e-5)
    assert ours["kid"] == pytest.approx(expected["kernel_inception_distance_mean"], abs=1e-5)
    assert ours["kid_std"] == pytest.approx(expected["kernel_inception_distance_std"], abs=1e-5)


def test_fid_resize_switch_picks_torch_fidelity_or_antialias(planted_home, pairs) -> None:
    """``tf1`` gives torch-fidelity's own extractor's features exactly; ``antialias`` others."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    image = pairs[0][:1]
    weights = MetricConfig().weights
    with torch.no_grad():
        tf1 = fid.load_inception(weights, "tf1", torch.device("cpu"))(image)
        antialias = fid.load_inception(weights, "antialias", torch.device("cpu"))(image)
        reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])(image)[0]
    torch.testing.assert_close(tf1, reference, atol=1e-6, rtol=0)
    assert (antialias - tf1).abs().max() > 1e-3


def test_piq_lpips_vgg_and_dists_equal_piq_classes(planted_home, pairs) -> None:
    import piq

    _, x, recon = pairs
    table, _ = run_suite(standard_cfg(**{**OFF, "lpips_vgg": True, "dists": True}), x, recon)
    pred01, target01 = (pixel.quantize(recon, "round") + 1) / 2, (x + 1) / 2
    with torch.no_grad():
        lpips_vgg = piq.LPIPS(reduction="none")(pred01, target01).numpy()
        dists = piq.DISTS(reduction="none")(pred01, target01).numpy()
    np.testing.assert_allclose(table["lpips_vgg"], lpips_vgg, atol=1e-5, rtol=0)
    np.testing.assert_allclose(table["dists"], dists, atol=1e-5, rtol=0)
