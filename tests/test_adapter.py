from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny_models import TINY_MODELS
from vaes4rs.config import ModelConfig
from vaes4rs.models.adapter import NonFiniteOutputError, VAEAdapter
from vaes4rs.models.zoo import load_vae

CPU = torch.device("cpu")


def load(tiny_models: Path, subfolder: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return load_vae(ModelConfig(name=subfolder, path=str(tiny_models), subfolder=subfolder), CPU, dtype)


@pytest.mark.parametrize("subfolder", sorted(TINY_MODELS))
@pytest.mark.parametrize("size", [(150, 150), (64, 96)])
def test_every_class_reconstructs_full_size(tiny_models: Path, subfolder: str, size: tuple[int, int]) -> None:
    adapter = VAEAdapter(load(tiny_models, subfolder), name=subfolder)
    x = torch.rand(2, 3, *size) * 2 - 1
    recon = adapter.reconstruct(x)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    assert recon.min() >= -1 and recon.max() <= 1
    (latent_shape,) = adapter.latent_shapes.values()
    assert len(latent_shape) == 3  # (C, h, w): Qwen's frame axis removed
    padded = [-(-s // adapter.multiple) * adapter.multiple for s in size]
    expected_ratio = {"SD21-VAE": 4, "FLUX2-VAE": 2, "SANA-VAE": 4, "Qwen-VAE": 2}[subfolder]
    assert adapter.multiple == expected_ratio
    assert list(latent_shape[1:]) == [p // expected_ratio for p in padded]


@pytest.mark.parametrize("subfolder", ["SD21-VAE", "SANA-VAE"])
def test_aid_sized_image_comes_back_whole(tiny_models: Path, subfolder: str) -> None:
    """600x600 (AID); the tiny FLUX2/Qwen models' 2x latents make their attention too slow here."""
    adapter = VAEAdapter(load(tiny_models, subfolder), name=subfolder)
    x = torch.rand(1, 3, 600, 600) * 2 - 1
    assert adapter.reconstruct(x).shape == x.shape
    assert adapter.latent_shapes[(600, 600)][1:] == (150, 150)


def test_padding_is_reflect_and_cropped_back(tiny_models: Path) -> None:
    adapter = VAEAdapter(load(tiny_models, "SD21-VAE"), name="sd")
    x = torch.arange(6.0).reshape(1, 1, 1, 6).expand(1, 3, 6, 6)
    padded, size = adapter.pad(x)
    assert size == (6, 6) and padded.shape[-2:] == (8, 8)
    assert padded[0, 0, 0, 6:].tolist() == [4.0, 3.0]  # reflect, not zeros or replicate


def test_sampled_latent_is_seeded_and_mode_differs(tiny_models: Path) -> None:
    module = load(tiny_models, "FLUX2-VAE")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    first = VAEAdapter(module, name="f", seed=42).reconstruct(x)
    again = VAEAdapter(module, name="f", seed=42).reconstruct(x)
    other = VAEAdapter(module, name="f", seed=7).reconstruct(x)
    mode = VAEAdapter(module, name="f", latent="mode").reconstruct(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, mode)
    assert VAEAdapter(load(tiny_models, "SANA-VAE"), name="s").deterministic


def test_non_finite_output_is_an_error_or_upcast(tiny_models: Path) -> None:
    module = load(tiny_models, "SD21-VAE", torch.bfloat16)
    with torch.no_grad():
        module.decoder.conv_out.bias.fill_(float("inf"))  # what an fp16 overflow looks like
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.raises(NonFiniteOutputError, match=r"model 'sd21' in torch.bfloat16.*\['img_1'\]"):
        VAEAdapter(module, name="sd21").reconstruct(x, ["img_1"])
    ids = [f"img_{i}" for i in range(9)]  # the message names the first eight
    with pytest.raises(NonFiniteOutputError, match=r"'img_7'\]; run with"):
        VAEAdapter(module, name="sd21").reconstruct(x.expand(9, -1, -1, -1), ids)
    adapter = VAEAdapter(module, name="sd21", upcast_on_overflow=True)
    with pytest.raises(NonFiniteOutputError, match="torch.float32"):  # inf in float32 too: no number
        adapter.reconstruct(x, ["img_1"])


def test_half_precision_overflow_is_rerun_in_float32(tiny_models: Path) -> None:
    module = load(tiny_models, "SD21-VAE", torch.float16)
    with torch.no_grad():
        module.encoder.conv_in.weight.mul_(1e5)  # activations beyond float16's 65504
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.raises(NonFiniteOutputError, match="torch.float16"):
        VAEAdapter(module, name="sdxl").reconstruct(x)
    ids = ["scenes/a.png"]  # a sampled latent: the rerun draws the same image's noise
    recon = VAEAdapter(module, name="sdxl", upcast_on_overflow=True).reconstruct(x, ids)
    assert all(p.dtype == torch.float16 for p in module.parameters())  # the rerun works on a copy
    expected = VAEAdapter(module.float(), name="sdxl").reconstruct(x.half().float(), ids)
    assert torch.isfinite(recon).all() and torch.allclose(recon, expected, atol=1e-5)


def test_safetensors_only_unless_pickle_allowed(tmp_path: Path, tiny_models: Path) -> None:
    module = load(tiny_models, "SD21-VAE")
    module.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    cfg = ModelConfig(name="pickled", path=str(tmp_path / "pickled"))
    with pytest.raises(RuntimeError, match="only .safetensors are read unless model.allow_pickle=true"):
        load_vae(cfg, CPU, torch.float32)
    cfg.allow_pickle = True
    assert type(load_vae(cfg, CPU, torch.float32)).__name__ == "AutoencoderKL"


def test_missing_weights_offline_names_repo_and_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(name="sd21", repo="BiliSakura/VAEs", subfolder="SD21-VAE")
    with pytest.raises(
        RuntimeError, match=r"BiliSakura/VAEs \(subfolder SD21-VAE\).*hf download BiliSakura/VAEs"
    ):
        load_vae(cfg, CPU, torch.float32)
