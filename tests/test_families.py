"""Every VAE family through the adapter, value for value, against direct diffusers calls.

The reference side never calls the adapter or a family: it pads with numpy's reflect mode to
the multiple the test states for the architecture, calls the diffusers API the way its
documentation says (``encode(x).latent_dist`` / ``.latent`` / ``.latents``, ``decode(z).sample``,
a frame axis for Qwen-Image, [0, 1] for our TAESD module), crops the top-left HxW and clamps.
Sizes are chosen so that padding is really needed: 257x300 through 8-multiple models,
600x600 (AID) through a 32-multiple DC-AE, as AID through SANA pads to 608.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from tests.tiny_models import STUDY_MULTIPLE_MODELS, build_study_multiple_model
from vaes4rs.models import families
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.architecture import architecture_config, build_from_config
from vaes4rs.models.taesd import TinyAutoencoder

# Non-multiple sizes per spatial multiple: 257x300 pads to 264x304, 600x600 to 608x608.
SIZES = {8: (257, 300), 32: (600, 600)}
STOCHASTIC = ("KL-f8", "FLUX2-f8", "Qwen-f8")
# The same float32 kernels run on the same padded tensor on both sides, so the outputs agree
# to the last bit on one machine; 1e-6 of the [-1, 1] range only absorbs a BLAS that picks
# another kernel for another call. A crop one pixel off moves outputs by ~1e-1.
ATOL = 1e-6


def reflect_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """numpy's reflect padding (no edge repeat) at the bottom and right up to ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    return torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect"))


def noise_generators(seed: int, image_ids: list[str]) -> list[torch.Generator]:
    """The adapter's documented noise rule written out: image i's generator is seeded with the
    first 8 bytes (little-endian, top bit cleared) of sha256('<seed>:<image_id>')."""
    digests = [hashlib.sha256(f"{seed}:{image_id}".encode()).digest() for image_id in image_ids]
    return [
        torch.Generator("cpu").manual_seed(int.from_bytes(d[:8], "little") & (2**63 - 1)) for d in digests
    ]


def direct(
    module: nn.Module, padded: torch.Tensor, latent: str, generators: list[torch.Generator] | None
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(reconstruction, per-image latent shape) of padded [-1, 1] input, diffusers' API by hand."""
    kind = type(module).__name__
    with torch.no_grad():
        if kind in ("AutoencoderKL", "AutoencoderKLFlux2"):
            dist = module.encode(padded).latent_dist
            z = dist.mode() if latent == "mode" else dist.sample(generator=generators)
            return module.decode(z).sample, tuple(z.shape[1:])
        if kind == "AutoencoderKLQwenImage":  # video VAE: (B, C, T=1, H, W) in and out
            dist = module.encode(padded[:, :, None]).latent_dist
            z = dist.mode() if latent == "mode" else dist.sample(generator=generators)
            return module.decode(z).sample[:, :, 0], (z.shape[1], *z.shape[3:])
        if kind == "AutoencoderDC":
            z = module.encode(padded).latent
            return module.decode(z).sample, tuple(z.shape[1:])
        if kind == "AutoencoderTiny":  # scales [-1, 1] <-> [0, 1] inside, as diffusers documents
            z = module.encode(padded).latents
            return module.decode(z).sample, tuple(z.shape[1:])
        if kind == "TinyAutoencoder":  # the TAESD convention: [0, 1] in, clamp to [0, 1] out
            z = module.encoder((padded + 1) / 2)
            return module.decoder(z).clamp(0, 1) * 2 - 1, tuple(z.shape[1:])
    raise AssertionError(f"no direct call written for {kind}")


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build_study_multiple_model(name) for name in STUDY_MULTIPLE_MODELS}


def batch(size: tuple[int, int], n: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth [-1, 1] images: 8x8-pixel random blocks, bilinearly blended."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size[0] // 8 + 2, size[1] // 8 + 2, generator=generator) * 2 - 1
    return nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", sorted(STUDY_MULTIPLE_MODELS))
def test_padded_reconstruction_equals_direct_call(models: dict[str, nn.Module], name: str) -> None:
    """Pad, encode, decode, crop the top-left, clamp: two batches through one seeded adapter.

    A sampled latent draws image i's noise from a generator seeded by (42, its id), so the
    same image gets the same noise in any batch; deterministic encoders (DC-AE, tiny) ignore
    the latent policy.
    """
    module, multiple = models[name], STUDY_MULTIPLE_MODELS[name][2]
    size = SIZES[multiple]
    adapter = VAEAdapter(module, name=name)  # the defaults: a sampled latent, seed 42 (the study's)
    for seed, image_ids in ((0, ["forest/a.png", "harbor/b.png"]), (1, ["harbor/e.png", "forest/a.png"])):
        x = batch(size, n=2, seed=seed)
        recon = adapter.reconstruct(x, image_ids)
        expected, latent_shape = direct(
            module, reflect_pad(x, multiple), "sample", noise_generators(42, image_ids)
        )
        assert recon.shape == x.shape and recon.dtype == torch.float32
        torch.testing.assert_close(recon, expected[..., : size[0], : size[1]].clamp(-1, 1), rtol=0, atol=ATOL)
        assert adapter.latent_shapes[size] == tuple(latent_shape)
    assert adapter.deterministic == (name not in STOCHASTIC)


def test_noise_without_ids_follows_the_position_in_the_batch(models: dict[str, nn.Module]) -> None:
    """Direct calls (no image ids) seed image i's noise with '<seed>:<i>'; ids must match the batch."""
    module = models["KL-f8"]
    x = batch((64, 64), n=2, seed=4)
    expected, _ = direct(module, x, "sample", noise_generators(7, ["0", "1"]))
    recon = VAEAdapter(module, name="kl", seed=7).reconstruct(x)
    torch.testing.assert_close(recon, expected.clamp(-1, 1), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match=r"^1 image ids for a batch of 2$"):
        VAEAdapter(module, name="kl").reconstruct(x, ["forest/a.png"])


def test_one_side_short_is_padded_on_that_side_only(models: dict[str, nn.Module]) -> None:
    """256x300 through an 8-multiple model: the width pads to 304, the height stays."""
    module = models["Tiny-f8"]
    x = batch((256, 300), seed=6)
    expected, latent_shape = direct(module, reflect_pad(x, 8), "mode", None)
    adapter = VAEAdapter(module, name="tiny")
    torch.testing.assert_close(adapter.reconstruct(x), expected[..., :300].clamp(-1, 1), rtol=0, atol=ATOL)
    assert adapter.latent_shapes[(256, 300)] == latent_shape == (4, 32, 38)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_mode_latent_equals_direct_mode(models: dict[str, nn.Module], name: str) -> None:
    module, multiple = models[name], STUDY_MULTIPLE_MODELS[name][2]
    x = batch(SIZES[multiple], n=2, seed=3)
    adapter = VAEAdapter(module, name=name, latent="mode")
    expected, _ = direct(module, reflect_pad(x, multiple), "mode", None)
    height, width = x.shape[-2:]
    torch.testing.assert_close(
        adapter.reconstruct(x), expected[..., :height, :width].clamp(-1, 1), rtol=0, atol=ATOL
    )
    assert adapter.deterministic


@pytest.mark.parametrize("name", sorted(STUDY_MULTIPLE_MODELS))
def test_spatial_multiple_is_the_measured_downsampling(models: dict[str, nn.Module], name: str) -> None:
    """The multiple is the encoder's downsampling, measured on a 64x64 input by a direct call."""
    module = models[name]
    _, latent_shape = direct(module, batch((64, 64)), "mode", None)
    adapter = VAEAdapter(module, name=name)
    assert adapter.multiple == 64 // latent_shape[-1] == STUDY_MULTIPLE_MODELS[name][2]


def test_tiny_autoencoder_module_equals_direct_call() -> None:
    """Our TAESD module (taesana layout: 32-multiple, [0, 1] input) on a 40x70 batch: 64x96 padded."""
    torch.manual_seed(0)
    module = TinyAutoencoder("taesana").eval()
    x = batch((40, 70), n=2, seed=5)
    adapter = VAEAdapter(module, name="taesana", latent="sample")
    expected, latent_shape = direct(module, reflect_pad(x, 32), "mode", None)
    torch.testing.assert_close(adapter.reconstruct(x), expected[..., :40, :70], rtol=0, atol=ATOL)
    assert adapter.multiple == 32 and adapter.latent_shapes[(40, 70)] == tuple(latent_shape) == (32, 2, 3)
    assert adapter.deterministic


# The study's latent shape at 256x256 (paper.md's table): its side gives the downsampling.
PUBLISHED_LATENT_SIDE = {"sd21": 32, "sdxl": 32, "sd35": 32, "flux1": 32, "flux2": 32, "sana": 8, "qwen": 32}


@pytest.mark.parametrize("arch", sorted(PUBLISHED_LATENT_SIDE))
def test_study_architectures_pad_to_their_published_downsampling(arch: str) -> None:
    """8 for every study VAE but SANA's DC-AE (32), read from each shipped config on meta."""
    with torch.device("meta"):
        module = build_from_config(architecture_config(arch))
    assert families.family_for(module).spatial_multiple(module) == 256 // PUBLISHED_LATENT_SIDE[arch]


def test_a_new_family_is_one_registered_subclass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))

    @families.register_family("AutoencoderNew", "AutoencoderNewer")
    class NewFamily(families.VAEFamily):
        pass

    assert isinstance(families.family_for("AutoencoderNew"), NewFamily)
    assert isinstance(families.family_for("AutoencoderNewer"), NewFamily)
    assert {"AutoencoderNew", "AutoencoderNewer"} <= set(families.diffusers_class_names())


def test_registry_names_supported_classes_and_refuses_others() -> None:
    assert families.diffusers_class_names() == [
        "AutoencoderDC",
        "AutoencoderKL",
        "AutoencoderKLFlux2",
        "AutoencoderKLQwenImage",
        "AutoencoderTiny",
    ]
    assert isinstance(families.family_for("TinyAutoencoder"), families.UnitRangeTinyFamily)
    with pytest.raises(ValueError, match=r"'AutoencoderVQ' is not supported; supported: AutoencoderDC, "):
        families.family_for("AutoencoderVQ")
    with pytest.raises(ValueError, match="AutoencoderKL is already registered to KLFamily"):
        families.register_family("AutoencoderKL")(type("Again", (families.VAEFamily,), {}))


@pytest.mark.parametrize("name", ["KL-f8", "Qwen-f8", "DC-AE-f32"])
def test_meta_copy_is_the_same_architecture_without_touching_the_model(
    models: dict[str, nn.Module], name: str
) -> None:
    module = models[name]
    copy = families.family_for(module).meta_copy(module)
    assert type(copy) is type(module) and not copy.training
    assert {k: v.shape for k, v in copy.state_dict().items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }
    assert all(p.is_meta for p in copy.parameters()) and not any(p.is_meta for p in module.parameters())


def test_meta_copy_of_our_tiny_module_keeps_its_variant() -> None:
    module = TinyAutoencoder("taesana").eval()
    copy = families.family_for(module).meta_copy(module)
    assert type(copy) is TinyAutoencoder and copy.variant == "taesana" and not copy.training
    assert all(p.is_meta for p in copy.parameters()) and not any(p.is_meta for p in module.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# one image, a batch, Qwen-Image's frame axis
@pytest.mark.parametrize("shape", [(1, 8, 5, 6), (3, 8, 5, 6), (2, 8, 1, 5, 6)])
def test_sample_latent_is_diffusers_sample_bit_for_bit(dtype, shape) -> None:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parameters = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    dist = DiagonalGaussianDistribution(parameters)
    ids = [f"class/{i}.png" for i in range(shape[0])]
    ours = families.sample_latent(dist, noise_generators(7, ids))
    theirs = dist.sample(generator=noise_generators(7, ids))
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)
    other_seed = families.sample_latent(dist, noise_generators(8, ids))
    assert not torch.equal(ours, other_seed)
