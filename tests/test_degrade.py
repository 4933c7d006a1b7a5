"""Degradations against independent numpy / scipy / Pillow computations, and their seeding."""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from vaes4rs.config import DegradeConfig
from vaes4rs.degrade import degrade, describe, label


def smooth_image(seed: int, height: int = 48, width: int = 40) -> np.ndarray:
    """HxWx3 uint8 with edges and gradients (blocks of random colour, lightly smoothed)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float64)
    blocks = np.kron(coarse, np.ones((4, 4, 1)))[:height, :width]
    return np.clip(np.round(ndimage.uniform_filter(blocks, size=(3, 3, 1))), 0, 255).astype(np.uint8)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def run_one(image: np.ndarray, cfg: DegradeConfig, image_id: str = "forest/forest_0.jpg") -> np.ndarray:
    """Degrade one HxWx3 image; HxWx3 uint8 back."""
    return degrade(as_batch(image), [image_id], cfg)[0].permute(1, 2, 0).numpy()


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def assert_close_levels(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal except where a value within float error of a .5 rounds the other way: 1 level, rarely."""
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= 1
    assert (diff != 0).mean() < 1e-3


def gaussian_blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's separable Gaussian on HxWxC, radius ceil(3 sigma), mirrored borders (d c b | a b c d)."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="mirror", radius=math.ceil(3 * sigma))


def pillow_down_up(x: np.ndarray, factor: int) -> np.ndarray:
    """Pillow's bicubic resize of each channel (float mode) to floor(side / factor) and back."""
    height, width = x.shape[:2]
    channels = []
    for c in range(3):
        plane = Image.fromarray(x[..., c].astype(np.float32), mode="F")
        small = plane.resize((width // factor, height // factor), Image.Resampling.BICUBIC)
        channels.append(np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)))
    return np.stack(channels, axis=-1).astype(np.float64)


def standard_normals(seed: int, image_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """The documented noise rule, written out: sha256('degrade:<seed>:<id>') -> a CPU generator."""
    digest = hashlib.sha256(f"degrade:{seed}:{image_id}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(shape, generator=generator, dtype=torch.float32).numpy().astype(np.float64)


def test_inactive_settings_return_the_input_unchanged() -> None:
    images = as_batch(smooth_image(0), smooth_image(1))
    out = degrade(images, ["a/0.png", "a/1.png"], DegradeConfig())
    assert out is images


def test_haze_by_hand_and_against_numpy() -> None:
    flat = np.full((16, 16, 3), 101, dtype=np.uint8)
    # 101/255 * 0.5 + 1 * 0.5 = 178/255
    assert (run_one(flat, DegradeConfig(haze_t=0.5)) == 178).all()
    image = smooth_image(3)
    t, airlight = 0.7, 0.9
    expected = to_uint8(t * (image / 255.0) + (1 - t) * airlight)
    assert_close_levels(run_one(image, DegradeConfig(haze_t=t, haze_airlight=airlight)), expected)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.3])
def test_blur_matches_scipy_gaussian_with_mirrored_borders(sigma: float) -> None:
    image = smooth_image(4)
    expected = to_uint8(gaussian_blur_reference(image / 255.0, sigma))
    assert_close_levels(run_one(image, DegradeConfig(blur_sigma=sigma)), expected)


def test_blur_wider_than_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="blur_sigma"):
        run_one(smooth_image(0, 12, 12), DegradeConfig(blur_sigma=5.0))


@pytest.mark.parametrize("factor", [2, 4])
def test_down_then_up_matches_pillow_bicubic(factor: int) -> None:
    image = smooth_image(5, 50, 37)  # sides that do not divide: floor(side / factor)
    expected = to_uint8(pillow_down_up(image / 255.0, factor))
    actual = run_one(image, DegradeConfig(downsample=factor))
    assert actual.shape == image.shape
    assert_close_levels(actual, expected)


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_noise_on_flat_grey_has_the_requested_std(sigma: float) -> None:
    # 128x128x3 = 49,152 draws: the std estimate's standard error is sigma / sqrt(2 N) ~ 0.3 %,
    # rounding to 8 bit adds 1/12 level^2 (0.006 % at sigma 0.05), and 128/255 +- 5 sigma stays
    # inside [0, 1] for sigma <= 0.1, so nothing is clipped: 2 % is over 6 standard errors.
    grey = np.full((128, 128, 3), 128, dtype=np.uint8)
    values = run_one(grey, DegradeConfig(noise_sigma=sigma)) / 255.0
    assert values.std() == pytest.approx(sigma, rel=0.02)
    assert values.mean() == pytest.approx(128 / 255, abs=5 * sigma / math.sqrt(values.size))


def test_noise_follows_the_documented_seed_rule() -> None:
    image, image_id, seed = smooth_image(6), "harbor/harbor_3.tif", 7
    normals = standard_normals(seed, image_id, (3, *image.shape[:2])).transpose(1, 2, 0)
    expected = to_uint8(image / 255.0 + 0.1 * normals)
    actual = run_one(image, DegradeConfig(noise_sigma=0.1, seed=seed), image_id)
    assert_close_levels(actual, expected)
    other_id = run_one(image, DegradeConfig(noise_sigma=0.1, seed=seed), "harbor/harbor_4.tif")
    other_seed = run_one(image, DegradeConfig(noise_sigma=0.1, seed=seed + 1), image_id)
    assert (other_id != actual).mean() > 0.5 and (other_seed != actual).mean() > 0.5


def test_steps_compose_in_the_documented_order() -> None:
    """haze -> blur -> down/up -> noise, one rounding at the end."""
    image, image_id = smooth_image(7, 48, 48), "beach/beach_1.jpg"
    cfg = DegradeConfig(haze_t=0.6, blur_sigma=1.0, downsample=2, noise_sigma=0.05, seed=3)
    x = 0.6 * (image / 255.0) + 0.4
    x = pillow_down_up(gaussian_blur_reference(x, 1.0), 2)
    x = x + 0.05 * standard_normals(3, image_id, (3, 48, 48)).transpose(1, 2, 0)
    assert_close_levels(run_one(image, cfg, image_id), to_uint8(x))


@pytest.mark.parametrize("quality", [30, 90])
def test_jpeg_equals_pillow_encode_decode(quality: int) -> None:
    image = smooth_image(8, 64, 56)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    actual = run_one(image, DegradeConfig(jpeg_quality=quality))
    assert np.array_equal(actual, expected)
    assert not np.array_equal(actual, image)


def test_an_image_degrades_the_same_alone_or_in_any_batch() -> None:
    images = [smooth_image(10 + i) for i in range(5)]
    ids = [f"class_{i % 2}/img_{i}.png" for i in range(5)]
    cfg = DegradeConfig(haze_t=0.8, blur_sigma=0.7, downsample=2, noise_sigma=0.1, jpeg_quality=80, seed=1)
    batch = degrade(as_batch(*images), ids, cfg)
    reversed_batch = degrade(as_batch(*images[::-1]), ids[::-1], cfg)
    for i in range(5):
        alone = degrade(as_batch(images[i]), [ids[i]], cfg)[0]
        assert torch.equal(batch[i], alone)
        assert torch.equal(reversed_batch[4 - i], alone)
    assert batch.dtype == torch.uint8 and batch.shape == (5, 3, 48, 40)


def test_bad_input_is_refused() -> None:
    images = as_batch(smooth_image(0))
    with pytest.raises(ValueError, match="image ids"):
        degrade(images, ["a/0.png", "a/1.png"], DegradeConfig(noise_sigma=0.1))
    with pytest.raises(ValueError, match="uint8"):
        degrade(images.float(), ["a/0.png"], DegradeConfig(noise_sigma=0.1))


def test_labels_and_description() -> None:
    assert label(DegradeConfig(noise_sigma=0.1)) == "noise σ=0.1"
    assert label(DegradeConfig()) == "none"
    haze = describe(DegradeConfig(haze_t=0.7))
    assert haze["kind"] == "haze" and haze["strength"] == pytest.approx(0.3)
    assert haze["label"] == "haze 0.3 (t=0.7, A=1)" and haze["active"] is True
    both = describe(DegradeConfig(blur_sigma=2.0, jpeg_quality=50))
    assert both["kind"] == "blur+jpeg" and both["strength"] is None
    assert both["label"] == "blur σ=2px + JPEG q=50"
    assert describe(DegradeConfig(downsample=4))["strength"] == 4.0
    assert describe(DegradeConfig())["kind"] == "none"
