"""FID and KID between originals and reconstructions, streamed batch by batch.

Features are torch-fidelity's InceptionV3 (TF 2015-12-05 weights) 2048-d pool features of
uint8 images, through torchmetrics' subclass of that extractor, which adds the one switch
the protocols differ in: how an image reaches 299x299.

- ``tf1``: torch-fidelity's TF1-compatible bilinear resize, what published (classic) FIDs use.
- ``antialias``: ``F.interpolate(bilinear, antialias=True)``, torchmetrics' default since
  1.8 and so the study's (torchmetrics 1.8.2); not the classic FID of the same images.

FID keeps only running float64 sums (features and their outer products) per set, as
torchmetrics does, and takes the Frechet distance from eigenvalues (torch-fidelity and
torchmetrics both do; piq's Newton-Schulz square root is approximate). KID is
torch-fidelity's (cubic polynomial kernel, unbiased MMD over random subsets, seed 2020)
and needs the features themselves, so they are kept only while the set is smaller than
``KID_MAX_IMAGES`` (16 MB per set at that size).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torchmetrics.image.fid import NoTrainInceptionV3

from vaes4rs.metrics.weights import weight_path

FEATURE_DIM = 2048
KID_MAX_IMAGES = 2048
KID_SEED = 2020  # torch-fidelity's default rng_seed, so our KID and its calculate_metrics agree


class FeatureStats:
    """Running float64 sum and sum of outer products of one set's features.

    Plain sums, as torchmetrics keeps them, so two partial states (shards, resumed runs) merge
    by adding. The one-pass covariance loses about (mean/std)^2 x 1e-16 relative to a
    two-pass one: far below FID's reported digits.
    """

    def __init__(self, dim: int, device: torch.device) -> None:
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        features = features.double()
        self.count += len(features)
        self.total += features.sum(dim=0)
        self.outer += features.T @ features

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (divisor n - 1, as np.cov and torchmetrics use)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.cpu().numpy(), cov.cpu().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the trace term from eigenvalues of S1 S2."""
    diff = mu1 - mu2
    sqrt_trace = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * sqrt_trace)


def kid(
    features1: torch.Tensor, features2: torch.Tensor, subsets: int, subset_size: int
) -> tuple[float, float]:
    """torch-fidelity's KID (mean, std over subsets); ``subset_size`` is capped at the set size."""
    size = min(subset_size, len(features1), len(features2))
    out = kid_features_to_metric(
        features1.float().cpu(),
        features2.float().cpu(),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=KID_SEED,
        verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def load_inception(
    weights: Mapping[str, str | None], resize: str, device: torch.device
) -> NoTrainInceptionV3:
    """InceptionV3 2048-d pool features of uint8 (B, 3, H, W) images, resized inside by ``resize``."""
    model = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(FEATURE_DIM)],
        feature_extractor_weights_path=str(weight_path("inception", weights)),
        antialias=resize == "antialias",
    )
    return model.to(device)
