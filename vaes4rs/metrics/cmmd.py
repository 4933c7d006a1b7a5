"""CMMD (Jayasumana et al., 2024, "Rethinking FID"): MMD between CLIP embeddings of two image sets.

Embeddings are those of the CMMD reference (google-research/cmmd): OpenAI's CLIP ViT-L/14 at
336 px, the 768-d projected image embedding, L2-normalised. timm's
``vit_large_patch14_clip_quickgelu_336.openai`` holds those weights (hub repo
``timm/vit_large_patch14_clip_336.openai``) with OpenAI's QuickGELU activation, as the
reference's transformers model has it (timm's ``vit_large_patch14_clip_336.openai`` reads the
same file into GELU blocks, which timm notes is not the original network). Input: [0, 1] images
through the model's eval preprocessing (bicubic, antialiased resize of the shorter side to 336,
centre crop, CLIP mean/std), which for square images is the reference's 336x336 bicubic resize.

Distance: Gaussian RBF kernel ``exp(-||x - y||^2 / (2 sigma^2))`` with sigma 10, MMD^2 scaled by
1000. ``cmmd`` is the unbiased estimator of the paper (Eq. 3: self-similarities over i != j);
``cmmd_biased`` is what the reference code computes (means over all pairs, the diagonal's
k(x, x) = 1 included), so a number can be compared with either. Sums run in float64 in blocks,
so memory stays bounded for sets of any size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vaes4rs.metrics.features import FrozenFeatures
from vaes4rs.metrics.weights import load_timm

CLIP_MODEL = "vit_large_patch14_clip_quickgelu_336.openai"
SIGMA = 10.0
SCALE = 1000.0
_BLOCK_VALUES = 1 << 24  # kernel entries computed at once (128 MB in float64)


def load_clip(
    weights: Mapping[str, str | None], device: torch.device, *, model_name: str = CLIP_MODEL, **overrides: Any
) -> FrozenFeatures:
    """CMMD's embedder: the CLIP model's unit-length image embeddings of [-1, 1] images.

    ``model_name`` and ``overrides`` are for the tests only, which plant a one-block CLIP of the
    same family (a ViT-L/14 forward costs about 350 GFLOPs an image); runs use ``CLIP_MODEL``.
    """
    model = load_timm(
        model_name,
        "clip",
        weights,
        setting="cmmd.CLIP_MODEL",
        used_by="CMMD's CLIP ViT-L/14-336",
        switch="metric.cmmd=false",
        **overrides,
    )
    return FrozenFeatures(model, device, unit=True)


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, skip_diagonal: bool) -> float:
    """Sum of exp(-gamma ||a_i - b_j||^2) over all pairs (i != j when ``a`` is ``b``), float64."""
    total = 0.0
    b_norms = (b * b).sum(dim=1)
    rows = max(1, _BLOCK_VALUES // max(len(b), 1))
    for start in range(0, len(a), rows):
        block = a[start : start + rows]
        squared = ((block * block).sum(dim=1)[:, None] + b_norms[None, :] - 2 * block @ b.T).clamp_min(0)
        kernel = torch.exp(-gamma * squared)
        if skip_diagonal:
            inside = torch.arange(len(block), device=kernel.device)
            kernel[inside, start + inside] = 0
        total += float(kernel.sum())
    return total


def mmd2(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA) -> tuple[float, float]:
    """(unbiased, biased) MMD^2 x ``SCALE`` of two sets of unit-length embeddings (rows)."""
    m, n = len(x), len(y)
    if min(m, n) < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 embeddings per set, got {m} and {n}")
    x, y = x.double(), y.double()
    gamma = 1 / (2 * sigma**2)
    xx = _kernel_sum(x, x, gamma, skip_diagonal=True)
    yy = _kernel_sum(y, y, gamma, skip_diagonal=True)
    xy = _kernel_sum(x, y, gamma, skip_diagonal=False)
    unbiased = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
    biased = (xx + m) / m**2 + (yy + n) / n**2 - 2 * xy / (m * n)  # k(x, x) = 1 on the diagonal
    return SCALE * unbiased, SCALE * biased
