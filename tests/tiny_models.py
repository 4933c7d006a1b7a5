"""Tiny random-init VAEs of every supported diffusers class, for tests without the hub."""

from __future__ import annotations

from pathlib import Path

import torch

# Subfolder names as in the study's hub repo BiliSakura/VAEs.
TINY_MODELS = {
    "SD21-VAE": (
        "AutoencoderKL",
        dict(
            block_out_channels=(8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=32,
        ),
    ),
    "FLUX2-VAE": (
        "AutoencoderKLFlux2",
        dict(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=8,
            sample_size=32,
        ),
    ),
    "SANA-VAE": (
        "AutoencoderDC",
        dict(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            encoder_qkv_multiscales=((), (5,), (5,)),
            decoder_qkv_multiscales=((), (5,), (5,)),
            encoder_layers_per_block=(1, 1, 1),
            decoder_layers_per_block=(1, 1, 1),
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        ),
    ),
    "Qwen-VAE": (
        "AutoencoderKLQwenImage",
        dict(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False]),
    ),
}


def save_tiny_models(root: Path, seed: int = 0) -> Path:
    """Write each tiny model with save_pretrained into ``root/<subfolder>`` (hub layout)."""
    import diffusers

    for subfolder, (class_name, kwargs) in TINY_MODELS.items():
        torch.manual_seed(seed)
        model = getattr(diffusers, class_name)(**kwargs)
        model.save_pretrained(root / subfolder)
    return root


# Models whose spatial multiple is the study's (8: the KL VAEs, FLUX.2, Qwen-Image, the tiny
# autoencoders; 32: SANA's DC-AE), so AID's 600 and odd sizes such as 257x300 really need
# padding. Built in memory (tests/test_families.py compares them with direct diffusers calls).
STUDY_MULTIPLE_MODELS: dict[str, tuple[str, dict, int]] = {
    "KL-f8": (
        "AutoencoderKL",
        dict(
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=32,
        ),
        8,
    ),
    "FLUX2-f8": (
        "AutoencoderKLFlux2",
        dict(
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=8,
            sample_size=32,
        ),
        8,
    ),
    "Qwen-f8": (
        "AutoencoderKLQwenImage",
        dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 2, 2], num_res_blocks=1, temperal_downsample=[False] * 3),
        8,
    ),
    "Tiny-f8": (
        "AutoencoderTiny",
        dict(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        ),
        8,
    ),
    "DC-AE-f32": (
        "AutoencoderDC",
        dict(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=2,
            encoder_block_types=("ResBlock",) * 4 + ("EfficientViTBlock",) * 2,
            decoder_block_types=("ResBlock",) * 4 + ("EfficientViTBlock",) * 2,
            encoder_block_out_channels=(4, 4, 8, 8, 8, 8),
            decoder_block_out_channels=(4, 4, 8, 8, 8, 8),
            encoder_qkv_multiscales=((), (), (), (), (5,), (5,)),
            decoder_qkv_multiscales=((), (), (), (), (5,), (5,)),
            encoder_layers_per_block=(1,) * 6,
            decoder_layers_per_block=(1,) * 6,
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
        ),
        32,
    ),
}


def build_study_multiple_model(name: str, seed: int = 0) -> torch.nn.Module:
    """One model of STUDY_MULTIPLE_MODELS, random-init from ``seed``, float32, eval mode."""
    import diffusers

    class_name, kwargs, _ = STUDY_MULTIPLE_MODELS[name]
    torch.manual_seed(seed)
    return getattr(diffusers, class_name)(**kwargs).eval()
