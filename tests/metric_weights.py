"""Randomly initialised metric networks, planted where the libraries look for their weights.

Pretrained networks cannot be downloaded here, so tests write weights of the right
architectures into a temporary TORCH_HOME under the file names torchvision,
torch-fidelity and piq use. Our code and every reference then load the very same files.
Convolutions are He-initialised so activations keep their scale through deep stacks.
"""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

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
