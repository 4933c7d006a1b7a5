"""MS-SSIM against the definition written out here in numpy (Wang, Simoncelli & Bovik 2003, with
piq's choices: 11x11 Gaussian window of sigma 1.5 without padding, K1 0.01, K2 0.03 on [0, 1]
data, 2x2 mean downsampling between the five scales, the paper's scale weights, contrast-structure
terms at the four finer scales and SSIM at the coarsest, each channel's product then the mean
over channels), on images whose sides stay even down to the coarsest scale so no padding rule is
involved; and the size limit of five scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from vaes4rs.metrics import perceptual

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Table 1 / Eq. 7
C1, C2 = 0.01**2, 0.03**2


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def local_mean(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Valid (unpadded) weighted mean over every 11x11 window of a 2-D image."""
    return np.einsum("ijkl,kl->ij", sliding_window_view(image, window.shape), window)


def ms_ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """MS-SSIM of two (3, H, W) float64 images in [0, 1]."""
    window = gaussian_window()
    per_channel = []
    for a, b in zip(x, y):
        value = 1.0
        for level, weight in enumerate(WEIGHTS):
            if level:
                a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
                b = b.reshape(b.shape[0] // 2, 2, b.shape[1] // 2, 2).mean(axis=(1, 3))
            mu_a, mu_b = local_mean(a, window), local_mean(b, window)
            var_a = local_mean(a * a, window) - mu_a**2
            var_b = local_mean(b * b, window) - mu_b**2
            cov = local_mean(a * b, window) - mu_a * mu_b
            cs = (2 * cov + C2) / (var_a + var_b + C2)
            if level < len(WEIGHTS) - 1:
                term = cs.mean()
            else:
                term = ((2 * mu_a * mu_b + C1) / (mu_a**2 + mu_b**2 + C1) * cs).mean()
            value *= max(term, 0.0) ** weight
        per_channel.append(value)
    return float(np.mean(per_channel))


def test_ms_ssim_per_image_is_the_five_scale_definition():
    rng = np.random.default_rng(0)
    # 176 x 192 halves to 11 x 12 at the fifth scale without an odd side on the way
    coarse = rng.uniform(0, 1, (2, 3, 23, 25))
    target = np.kron(coarse, np.ones((1, 1, 8, 8)))[..., :176, :192]
    target = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
    pred = np.clip(target + rng.normal(0, 0.08, target.shape), 0, 1)
    pred[1] = np.clip(0.7 * pred[1] + 0.2, 0, 1)  # the second pair also differs in contrast
    got = perceptual.ms_ssim_per_image(torch.from_numpy(pred).float(), torch.from_numpy(target).float())
    expected = [ms_ssim_by_hand(pred[i].astype(np.float32).astype(np.float64), target[i]) for i in range(2)]
    # both sides in float64 on the same float32 inputs: summation order only, ~1e-14
    assert got.dtype == torch.float64 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert expected[0] < 0.99 and abs(expected[0] - expected[1]) > 0.01  # distinct, not saturated


def test_ms_ssim_takes_161_pixels_a_side_and_refuses_160():
    rng = np.random.default_rng(1)
    smallest = torch.from_numpy(rng.uniform(0, 1, (1, 3, 161, 161)))
    assert perceptual.ms_ssim_per_image(smallest, smallest).item() == pytest.approx(1.0, abs=1e-12)
    message = (
        r"^MS-SSIM needs images of at least 161x161 \(five scales of an 11-px window\); got {}\. "
        r"Set metric\.ms_ssim=false for this dataset\.$"
    )
    for height, width in ((160, 200), (200, 160)):
        image = torch.zeros(1, 3, height, width)
        with pytest.raises(ValueError, match=message.format(f"{height}x{width}")):
            perceptual.ms_ssim_per_image(image, image)


def write_network_files(folder: Path) -> dict[str, str]:
    """Random AlexNet/VGG16 feature stacks and LPIPS-VGG/DISTS head weights, as metric.weights files."""
    from torchvision.models import alexnet, vgg16

    generator = torch.Generator().manual_seed(0)
    files = {}
    for key, build in (("alexnet", alexnet), ("vgg16", vgg16)):
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build().state_dict().items() if k.startswith("features.")}
        files[key] = str(folder / f"{key}.pth")
        torch.save(
            {k: 0.05 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}, files[key]
        )
    files["lpips_vgg"] = str(folder / "lpips_vgg.pt")
    torch.save(
        [torch.rand(1, c, 1, 1, generator=generator) for c in (64, 128, 256, 512, 512)], files["lpips_vgg"]
    )
    files["dists"] = str(folder / "dists.pt")
    alpha, beta = torch.rand(2, 1, 1475, 1, 1, generator=generator)
    torch.save({"alpha": alpha, "beta": beta}, files["dists"])
    return files


@pytest.fixture(scope="module")
def network_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_network_files(tmp_path_factory.mktemp("networks"))


def test_perceptual_networks_go_to_the_device_asked_frozen_in_eval_mode(network_files):
    """The meta device stands in for an accelerator: every parameter and buffer must land there."""
    meta = torch.device("meta")
    for load in (perceptual.load_lpips_alex, perceptual.load_lpips_vgg, perceptual.load_dists):
        network = load(network_files, meta)
        tensors = [*network.parameters(), *network.buffers()]
        assert tensors and {t.device.type for t in tensors} == {"meta"}, load.__name__
        assert not network.training, load.__name__
    lpips = perceptual.load_lpips_alex(network_files, meta)
    assert not any(p.requires_grad for p in lpips.parameters())
    images = torch.zeros(2, 3, 64, 64, device=meta)
    distance = lpips(images, images)  # shapes only: the sum starts on the images' device
    assert distance.shape == (2,) and distance.device.type == "meta"
    assert lpips.to(torch.bfloat16)(images.bfloat16(), images.bfloat16()).dtype == torch.bfloat16


def test_lpips_alex_of_all_zero_activations_is_zero_not_nan():
    """A feature vector of zeros (a ReLU that never fires, common on flat dark areas) normalises to
    zeros: x / sqrt(sum x^2 + 1e-8) = 0. A backbone whose convolutions all output -1 before the ReLU
    makes every activation zero, so LPIPS is exactly 0 for any pair."""
    from torchvision.models import alexnet

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in alexnet().state_dict().items() if k.startswith("features.")}
    dead = {
        k: (torch.zeros(shape) if k.endswith("weight") else -torch.ones(shape)) for k, shape in shapes.items()
    }
    heads = {f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}
    lpips = perceptual.LPIPSAlex(dead, heads)
    generator = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 2, 3, 64, 64, generator=generator) * 2 - 1
    assert torch.equal(lpips(x, y), torch.zeros(2))
