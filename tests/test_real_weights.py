"""End to end with a real pretrained autoencoder (TAEF2) on real remote-sensing images.

Random weights cannot reveal a wrong input range, channel order, padding or crop; a real
model does. Expected numbers come from a path that shares nothing with the pipeline but
the TAEF2 module itself (checked on its own in test_taesd.py): PIL decodes the files, the
encoder and decoder stacks run on [0, 1] input, numpy pads and rounds, skimage scores.
Needs ../shared (weights and images); skipped with the reason when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.conftest import RS_SAMPLES, SHARED, needs_shared, read_per_image
from tests.test_cli import run_cli
from vaes4rs.config import MetricConfig
from vaes4rs.data import list_images, read_image
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.metrics.suite import MetricSuite
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.taesd import TinyAutoencoder, load_tiny_autoencoder

TAEF2 = SHARED / "weights" / "taef2"
RESISC45 = RS_SAMPLES / "resisc45"
AID150 = RS_SAMPLES / "aid150"
NO_PRETRAINED_METRIC_NETS = ["metric.lpips=false", "metric.fid=false", "metric.kid=false"]
# A folder of both sizes: RESISC45's 256x256 (a multiple of 8) and the 150x150 AID
# downscales, which TAEF2 only takes reflect-padded to 152x152.
MIXED = {
    "airplane": [RESISC45 / "airplane" / f"airplane_00{i}.jpg" for i in (1, 2, 3)],
    "beach": [AID150 / "Beach" / "beach_1.jpg"],
    "bridge": [AID150 / "Bridge" / "bridge_1.jpg"],
    "desert": [AID150 / "Desert" / "desert_1.jpg"],
}


@pytest.fixture(scope="module")
def taef2() -> TinyAutoencoder:
    needs_shared(TAEF2 / "taef2_encoder.pth")
    return load_tiny_autoencoder("taef2", str(TAEF2))


def reference_reconstruction(model: TinyAutoencoder, original: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> TAEF2's reconstruction as [0, 1] float64: numpy reflect padding to 8,
    encoder and decoder stacks on [0, 1], clamp, top-left crop."""
    height, width = original.shape[:2]
    padded = np.pad(original, ((0, -height % 8), (0, -width % 8), (0, 0)), mode="reflect")
    x01 = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y01 = model.decoder(model.encoder(x01)).clamp(0, 1)
    return y01[0, :, :height, :width].permute(1, 2, 0).double().numpy()


def standard_scores(original: np.ndarray, recon01: np.ndarray) -> tuple[float, float]:
    """The standard protocol's PSNR and SSIM, by skimage: the reconstruction rounded to 8 bits
    (numpy's round half to even), scored on [0, 1] with range 1, SSIM over valid windows."""
    rounded = np.rint(recon01 * 255).astype(np.uint8)
    psnr = peak_signal_noise_ratio(original, rounded, data_range=255)
    ssim = structural_similarity(
        original / 255.0,
        rounded / 255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
    )
    return psnr, ssim


@pytest.mark.slow
def test_taef2_standard_protocol_on_mixed_sizes(tmp_path: Path, taef2: TinyAutoencoder) -> None:
    """The CLI on 256 px and 150 px scenes: every row and the mean against the reference.

    The pipeline maps uint8 through [-1, 1] and back in float32, so its reconstruction can
    differ from the reference's by ~1e-7, flipping the rounding of the odd pixel that sits
    on a half level: up to 5e-5 dB of PSNR and 6e-7 of SSIM seen. Tolerances are 3e-4 dB
    (1e-5 of the value) and 5e-6; a range of 2 for 1 is +6.02 dB, rounding 0.3 of a level
    high moves these rows by 0.004 to 0.09 dB, a crop off by the 2 padded pixels 4 to 10 dB.
    """
    needs_shared(RESISC45)
    needs_shared(AID150)
    root = tmp_path / "scenes"
    for label, paths in MIXED.items():
        (root / label).mkdir(parents=True)
        for path in paths:
            (root / label / path.name).symlink_to(path)
    out = tmp_path / "run"
    result = run_cli(
        [
            "model=taef2",
            f"model.path={TAEF2}",
            "dataset=folder",
            f"dataset.root={root}",
            "metric=standard",
            *NO_PRETRAINED_METRIC_NETS,
            "logger=none",
            "run.device=cpu",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "metrics.json").read_text())
    table = read_per_image(out / "per_image.csv")
    expected_ids = [f"{label}/{path.name}" for label in sorted(MIXED) for path in MIXED[label]]
    assert list(table["image_id"]) == expected_ids and payload["n_images"] == len(expected_ids)
    psnr, ssim = [], []
    for image_id in expected_ids:
        label, name = image_id.split("/")
        original = np.asarray(Image.open(root / label / name).convert("RGB"))
        scores = standard_scores(original, reference_reconstruction(taef2, original))
        psnr.append(scores[0])
        ssim.append(scores[1])
    assert list(table["height"]) == [256] * 3 + [150] * 3
    np.testing.assert_allclose(table["psnr"], psnr, rtol=0, atol=3e-4)
    np.testing.assert_allclose(table["ssim"], ssim, rtol=0, atol=5e-6)
    metrics = payload["metrics"]
    assert metrics["psnr"] == pytest.approx(np.mean(psnr), abs=3e-4)  # standard: mean of images
    assert metrics["ssim"] == pytest.approx(np.mean(ssim), abs=5e-6)
    assert metrics["psnr_ci95_lo"] < np.mean(psnr) < metrics["psnr_ci95_hi"]
    assert min(psnr) > 24.0, psnr  # a real natural-image VAE on real scenes, not a plumbing failure
    assert payload["model_stats"]["latent_shape"]["256x256"] == [32, 32, 32]
    assert payload["protocol"]["name"] == "standard" and payload["protocol"]["latent"] == "mode"
    assert "lpips" not in metrics and "fid" not in metrics  # switched off: missing, never zero


class RangeMixupAdapter(VAEAdapter):
    """The bug the test above must catch: [-1, 1] pixels fed to a [0, 1] model, output read as [-1, 1]."""

    def encode(self, x, module=None, image_ids=()):
        return (module or self.module).encode(x)

    def decode(self, z, module=None):
        return (module or self.module).decode(z)


@pytest.mark.parametrize(("adapter_cls", "correct"), [(VAEAdapter, True), (RangeMixupAdapter, False)])
def test_range_mixup_fails_the_quality_bar(adapter_cls: type[VAEAdapter], correct: bool) -> None:
    needs_shared(TAEF2 / "taef2_encoder.pth")
    needs_shared(RESISC45)
    records = list_images(RESISC45, None, limit_per_class=4)
    images = torch.stack([torch.from_numpy(read_image(r.path)).permute(2, 0, 1) for r in records])
    original = to_minus_one_one(images)
    adapter = adapter_cls(load_tiny_autoencoder("taef2", str(TAEF2)), name="taef2", latent="mode")
    suite = MetricSuite(
        MetricConfig(protocol="standard", value_range="zero_one", pool_size=1, lpips=False, fid=False),
        torch.device("cpu"),
        torch.float32,
    )
    psnr = float(np.mean(suite.update(adapter.reconstruct(original), original)["psnr"]))
    assert (psnr > 29.0) == correct, f"mean PSNR {psnr:.2f} dB"
