"""Tests for the TAESD-family tiny autoencoders, mostly against the real TAEF2 weights."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from vaes4rs.models.taesd import (
    TINY_AUTOENCODER_SHA256,
    TINY_AUTOENCODER_URLS,
    TinyAutoencoder,
    load_tiny_autoencoder,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
TAEF2_DIR = SHARED / "weights" / "taef2"
RESISC45_DIR = SHARED / "data" / "rs-samples" / "resisc45"
TAEF2_FILES = ("taef2_encoder.pth", "taef2_decoder.pth")

# Full 256x256 images cost ~1.4 s each through TAEF2 on 2 CPU cores, too slow for 24 images
# in two range settings; the central 128x128 crop keeps native resolution at a quarter of it.
CROP = 128


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test fixtures (../shared) are not available")
    return path


@pytest.fixture(scope="module")
def taef2() -> TinyAutoencoder:
    return load_tiny_autoencoder("taef2", path=str(_require(TAEF2_DIR)))


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if the loader tries to reach the network."""

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _plant_hub_cache(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in TAEF2_FILES:
        shutil.copyfile(_require(TAEF2_DIR / name), checkpoints / name)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return checkpoints


def _psnr(reconstruction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], with a float64 MSE."""
    mse = (reconstruction.double() - reference.double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)


def _resisc45_crops() -> torch.Tensor:
    files = sorted(_require(RESISC45_DIR).glob("*/*.jpg"))
    assert len(files) == 24, f"expected the 24 RESISC45 sample images, found {len(files)}"
    images = [np.array(Image.open(f).convert("RGB")) for f in files]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # one size: 256
    top = (x.shape[2] - CROP) // 2
    left = (x.shape[3] - CROP) // 2
    return x[:, :, top : top + CROP, left : left + CROP]


def test_taef2_strict_load_and_shapes(taef2: TinyAutoencoder) -> None:
    # load_tiny_autoencoder already loaded with strict=True; check the files' keys directly too.
    for name, module in zip(TAEF2_FILES, (taef2.encoder, taef2.decoder)):
        state = torch.load(TAEF2_DIR / name, map_location="cpu", weights_only=True)
        assert set(state) == set(module.state_dict()), name
    assert (taef2.latent_channels, taef2.spatial_multiple) == (32, 8)
    assert taef2.input_range == (0.0, 1.0)
    with torch.no_grad():
        z = taef2.encode(torch.rand(1, 3, 256, 256))
        y = taef2.decode(z)
    assert z.shape == (1, 32, 32, 32)
    assert y.shape == (1, 3, 256, 256)
    assert 0.0 <= y.min() and y.max() <= 1.0


def test_taef2_reconstruction_psnr_and_wrong_range(taef2: TinyAutoencoder) -> None:
    x01 = _resisc45_crops()
    with torch.no_grad():
        right = _psnr(taef2.decode(taef2.encode(x01)), x01).mean().item()
        # A pipeline that assumes [-1, 1]: feed 2x-1, read the raw output back as [-1, 1].
        raw = taef2.decoder(taef2.encoder(x01 * 2 - 1))
        wrong = _psnr(((raw + 1) / 2).clamp(0, 1), x01).mean().item()
    measured = f"[0,1] input: {right:.2f} dB, [-1,1] input: {wrong:.2f} dB"
    assert right > 29.0, measured
    assert wrong < 25.0 and right - wrong > 5.0, measured


def test_load_from_planted_hub_cache(
    taef2: TinyAutoencoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    _plant_hub_cache(tmp_path, monkeypatch)
    cached = load_tiny_autoencoder("taef2")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(cached.encode(x), taef2.encode(x))
        assert torch.equal(cached.decode(cached.encode(x)), taef2.decode(taef2.encode(x)))


def test_corrupted_cache_file_fails_hash_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    checkpoints = _plant_hub_cache(tmp_path, monkeypatch)
    corrupted = checkpoints / "taef2_encoder.pth"
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch") as info:
        load_tiny_autoencoder("taef2")
    message = str(info.value)
    assert "taef2_encoder.pth" in message
    assert TINY_AUTOENCODER_SHA256["taef2"]["taef2_encoder.pth"] in message


def test_missing_file_in_path_names_file_and_url(tmp_path: Path) -> None:
    shutil.copyfile(_require(TAEF2_DIR / "taef2_encoder.pth"), tmp_path / "taef2_encoder.pth")
    with pytest.raises(FileNotFoundError) as info:
        load_tiny_autoencoder("taef2", path=str(tmp_path))
    assert "taef2_decoder.pth" in str(info.value)
    assert TINY_AUTOENCODER_URLS["taef2"][1] in str(info.value)


def test_offline_and_not_cached_explains_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as info:
        load_tiny_autoencoder("taef2")
    message = str(info.value)
    for expected in ("taef2_encoder.pth", TINY_AUTOENCODER_URLS["taef2"][0], "model.path="):
        assert expected in message


def test_unhashed_variant_loads_with_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_download: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert "taesana" not in TINY_AUTOENCODER_SHA256
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    reference = TinyAutoencoder("taesana")
    torch.save(reference.encoder.state_dict(), checkpoints / "taesana_encoder.pth")
    torch.save(reference.decoder.state_dict(), checkpoints / "taesana_decoder.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="vaes4rs.models.taesd"):
        loaded = load_tiny_autoencoder("taesana")
    assert "no sha256 recorded for taesana_encoder.pth" in caplog.text
    assert torch.equal(loaded.decoder[1].weight, reference.decoder[1].weight)


@pytest.mark.parametrize(("variant", "factor"), [("taef2", 8), ("taesana", 32)])
def test_shapes_and_meta_device(variant: str, factor: int) -> None:
    with torch.device("meta"):
        model = TinyAutoencoder(variant)
    assert all(p.is_meta for p in model.parameters())
    assert model.spatial_multiple == factor
    x = torch.empty(1, 3, 256, 256, device="meta")
    z = model.encode(x)
    assert z.shape == (1, model.latent_channels, 256 // factor, 256 // factor)
    assert model.decode(z).shape == (1, 3, 256, 256)
    moved = TinyAutoencoder(variant).to("meta")
    assert all(p.is_meta for p in moved.parameters())


def test_unknown_variant_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="taef2") as info:
        TinyAutoencoder("taesd9")
    assert "taesana" in str(info.value)
    with pytest.raises(ValueError):
        load_tiny_autoencoder("taesd9")
