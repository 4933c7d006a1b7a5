"""Inputs for the metric references: planted network weights, and images at known 8-bit levels.

Pretrained networks cannot be downloaded here, so tests write weights of the right
architectures into a temporary TORCH_HOME under the file names torchvision,
torch-fidelity and piq use. Our code and every reference then load the very same files.
Convolutions are He-initialised so activations keep their scale through deep stacks.

``known_level_pairs`` builds reconstructions off the 8-bit grid by offsets the test chooses,
so the 8-bit picture that rounding or truncation must give is known by construction: no
reference needs the project's own quantisation to know what the pixels are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import numpy as np
import torch
from torch import nn


def _he_state(shapes: dict[str, torch.Size], generator: torch.Generator, random_prefix: str) -> dict:
    """Random He-normal conv weights for keys under ``random_prefix``; the rest (classifier
    heads the metrics never use) as expanded zeros, which serialise as one number each."""
    state = {}
    for key, shape in shapes.items():
        if not key.startswith(random_prefix):
            state[key] = torch.zeros(1).expand(shape)
        elif key.endswith("weight"):
            state[key] = torch.randn(shape, generator=generator) * math.sqrt(2 / math.prod(shape[1:]))
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


def plant_random_metric_weights(checkpoints: Path) -> None:
    """Random-init AlexNet, VGG16, InceptionV3, LPIPS-VGG and DISTS files under the libraries' names."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
    from torchvision.models import alexnet, vgg16

    generator = torch.Generator().manual_seed(0)
    checkpoints.mkdir(parents=True)
    for build, file_name in ((alexnet, "alexnet-owt-7be5be79.pth"), (vgg16, "vgg16-397923af.pth")):
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build().state_dict().items()}
        torch.save(_he_state(shapes, generator, "features."), checkpoints / file_name)
    # torch-fidelity's extractor loads its weights in __init__; build it empty, then fill it.
    extractor = tf_inception.FeatureExtractorInceptionV3
    with (
        mock.patch.object(tf_inception, "load_state_dict_from_url", return_value=None),
        mock.patch.object(extractor, "load_state_dict", lambda self, state: None),
    ):
        inception = extractor("inception-v3-compat", ["2048"])
    for module in inception.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data = torch.randn(module.weight.shape, generator=generator) * math.sqrt(2 / fan_in)
    torch.save(inception.state_dict(), checkpoints / "weights-inception-2015-12-05-6726825d.pth")
    lpips_vgg = [torch.rand(1, c, 1, 1, generator=generator) for c in (64, 128, 256, 512, 512)]
    torch.save(lpips_vgg, checkpoints / "lpips_weights.pt")
    alpha, beta = torch.rand(2, 1, 1475, 1, 1, generator=generator)
    total = alpha.sum() + beta.sum()
    torch.save({"alpha": alpha / total, "beta": beta / total}, checkpoints / "dists_weights.pt")


class KnownLevels(NamedTuple):
    """Originals and reconstructions whose 8-bit pictures the test fixed itself."""

    originals: torch.Tensor  # uint8 (N, 3, H, W)
    x: torch.Tensor  # the originals in [-1, 1], float32, as ToTensor + Normalize(0.5, 0.5) gives them
    recon: torch.Tensor  # [-1, 1] float32 reconstructions, off the 8-bit grid
    rounded: torch.Tensor  # uint8: what rounding recon to 8 bits must give
    truncated: torch.Tensor  # uint8: what truncating recon to 8 bits must give


def known_level_pairs(n: int, height: int, width: int, seed: int) -> KnownLevels:
    """Smooth originals; reconstructions = a noisy copy's 8-bit level plus an offset d.

    |d| lies in [0.05, 0.45] of a level, so rounding returns the level and truncation the level
    minus one where d < 0, with a margin (0.05 level) far above float32's error on the way from
    [-1, 1] back to levels (~3e-5 level). Pixels pushed outside [0, 255] are clamped at the
    range ends, where both rules give 0 or 255, as a clamped decoder output does.
    """
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, height // 8 + 2, width // 8 + 2)))
    smooth = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )
    originals = smooth.round().clamp(0, 255).numpy().astype(np.int64)
    levels = np.clip(originals + rng.integers(-12, 13, originals.shape), 0, 255)
    offset = rng.uniform(0.05, 0.45, levels.shape) * rng.choice([-1.0, 1.0], levels.shape)
    value = np.clip(levels + offset, 0, 255)
    truncated = np.where(offset < 0, np.maximum(levels - 1, 0), levels)
    truncated = np.where(value >= 255, 255, truncated)
    return KnownLevels(
        originals=torch.from_numpy(originals.astype(np.uint8)),
        x=torch.from_numpy(originals / 127.5 - 1).float(),
        recon=torch.from_numpy(value / 127.5 - 1).float(),
        rounded=torch.from_numpy(levels.astype(np.uint8)),
        truncated=torch.from_numpy(truncated.astype(np.uint8)),
    )
