"""Perceptual metrics: LPIPS-AlexNet (the study's), and piq's LPIPS-VGG, DISTS and MS-SSIM.

LPIPS-AlexNet is written out here rather than borrowed from torchmetrics or the lpips
package because both load the AlexNet backbone only through torchvision's download path;
owning the module lets the weights come from an explicit file. Its arithmetic follows
torchmetrics (``LearnedPerceptualImagePatchSimilarity(net_type="alex")``, what the study
called): the LPIPS scaling layer, five AlexNet ReLU outputs, unit-normalised channels
(``x / sqrt(sum x^2 + 1e-8)``), squared differences weighted by the official v0.1 linear
heads, spatial means, summed. The tests check it against torchmetrics and the lpips package.

LPIPS is defined on [-1, 1] input; "LPIPS on [0, 1]" in those APIs (``normalize=True``)
only maps [0, 1] back to [-1, 1], so the value range does not change LPIPS.

piq's metrics are built from piq's own classes with weights we load (piq itself only
downloads); their inputs are [0, 1], as piq requires.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import piq
import torch
from piq.perceptual import VGG16_LAYERS, ContentLoss
from torch import nn
from torchvision.models import alexnet, vgg16

from vaes4rs.metrics.weights import load_state

# torchvision AlexNet ``features`` indices ending at each ReLU LPIPS reads (relu1..relu5).
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
# piq's layer choice for both LPIPS-VGG and DISTS, and DISTS' per-layer channel split.
_VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
# MS-SSIM's five scales halve the image four times: (11 - 1) * 2**4 + 1.
MS_SSIM_MIN_SIZE = 161


def _backbone(state: Mapping[str, torch.Tensor], build: Callable[[], nn.Module]) -> nn.Sequential:
    """The ``features`` stack of a torchvision classifier, loaded strictly from its state dict.

    Built on the meta device and filled by assignment: VGG16's classifier alone holds 124M
    parameters that would be randomly initialised only to be thrown away.
    """
    with torch.device("meta"):
        features = build().features
    prefix = "features."
    features.load_state_dict(
        {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, assign=True
    )
    return features


class LPIPSAlex(nn.Module):
    """LPIPS v0.1, AlexNet backbone: per-image distance of two [-1, 1] batches."""

    def __init__(self, backbone: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        features = _backbone(backbone, alexnet)
        self.slices = nn.ModuleList(nn.Sequential(*features[start:stop]) for start, stop in _ALEX_SLICES)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _ALEX_CHANNELS)
        # The official heads are stored as lin<k>.model.1 (index 0 was a dropout layer).
        self.heads.load_state_dict({f"{k}.weight": heads[f"lin{k}.model.1.weight"] for k in range(5)})
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = (pred - self.shift) / self.scale, (target - self.shift) / self.scale
        total = torch.zeros(len(pred), device=pred.device, dtype=pred.dtype)
        for block, head in zip(self.slices, self.heads):
            x, y = block(x), block(y)
            diff = (_unit_channels(x) - _unit_channels(y)) ** 2
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    return features / torch.sqrt(features.pow(2).sum(dim=1, keepdim=True) + 1e-8)


def load_lpips_alex(weights: Mapping[str, str | None], device: torch.device) -> LPIPSAlex:
    """LPIPS-AlexNet with the ImageNet AlexNet and the official v0.1 heads, on ``device``."""
    return LPIPSAlex(load_state("alexnet", weights), load_state("lpips_alex", weights)).to(device)


def load_lpips_vgg(weights: Mapping[str, str | None], device: torch.device) -> piq.LPIPS:
    """piq's LPIPS (VGG16, its published linear weights), built as ``piq.LPIPS()`` builds it."""
    model = piq.LPIPS.__new__(piq.LPIPS)
    ContentLoss.__init__(
        model,
        feature_extractor=_backbone(load_state("vgg16", weights), vgg16),
        layers=[VGG16_LAYERS[name] for name in _VGG_LAYERS],
        weights=load_state("lpips_vgg", weights),
        normalize_features=True,
        reduction="none",
    )
    return model.eval().to(device)


def load_dists(weights: Mapping[str, str | None], device: torch.device) -> piq.DISTS:
    """piq's DISTS (VGG16 with L2 pooling, its published alpha/beta), built as ``piq.DISTS()`` does."""
    state = load_state("dists", weights)
    model = piq.DISTS.__new__(piq.DISTS)
    ContentLoss.__init__(
        model,
        feature_extractor=_backbone(load_state("vgg16", weights), vgg16),
        layers=[VGG16_LAYERS[name] for name in _VGG_LAYERS],
        weights=[
            *torch.split(state["alpha"], _DISTS_CHANNELS, dim=1),
            *torch.split(state["beta"], _DISTS_CHANNELS, dim=1),
        ],
        replace_pooling=True,
        normalize_features=False,
        allow_layers_weights_mismatch=True,
        reduction="none",
    )
    return model.eval().to(device)


def ms_ssim_per_image(pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """piq's MS-SSIM of [0, 1] images (Gaussian 11 / 1.5, five scales, the paper's weights)."""
    height, width = pred01.shape[-2:]
    if min(height, width) < MS_SSIM_MIN_SIZE:
        raise ValueError(
            f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} (five scales of an "
            f"11-px window); got {height}x{width}. Set metric.ms_ssim=false for this dataset."
        )
    return piq.multi_scale_ssim(pred01.double(), target01.double(), data_range=1.0, reduction="none")
