"""FID and KID between originals and reconstructions, streamed batch by batch.

Features are torch-fidelity's InceptionV3 (TF 2015-12-05 weights) 2048-d pool features of
uint8 images, through torchmetrics' subclass of that extractor, which adds the one switch
the protocols differ in: how an image reaches 299x299.

- ``tf1``: torch-fidelity's TF1-compatible bilinear resize, what published (classic) FIDs use.
- ``antialias``: ``F.interpolate(bilinear, antialias=True)``, torchmetrics' default since
  1.8 and so the study's (torchmetrics 1.8.2); not the classic FID of the same images.

FID keeps only running sums (features and their outer products) per set, as torchmetrics
does, but in fixed point, so they add exactly in any order, and takes the Frechet distance
from eigenvalues (torch-fidelity and torchmetrics both do; piq's Newton-Schulz square root is
approximate). KID is
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


# Fixed point for the running sums: each batch's float64 sum is split into two int64 limbs
# counting 2^-22 and 2^-60. Inception's pool features are non-negative and under ~20, so sums
# stay far below the hi limb's 2^41 and the lo limb (under 2^37 per batch) holds 2^26 batches.
HI_UNIT = 2.0**22
LO_UNIT = 2.0**60


def add_fixed(limbs: torch.Tensor, values: torch.Tensor) -> None:
    """Add float64 ``values`` into int64 ``limbs`` (hi, lo): hi 2^-22 + lo 2^-60 ~= values.

    Every step is exact except the last rounding, which drops under 2^-61 per value, and
    depends on the value alone: integers then add the same in any order (ranks, resumes).
    """
    hi = torch.round(values * HI_UNIT)
    limbs[0] += hi.long()
    limbs[1] += torch.round((values - hi / HI_UNIT) * LO_UNIT).long()


def from_fixed(limbs: torch.Tensor) -> torch.Tensor:
    return limbs[0].double() / HI_UNIT + limbs[1].double() / LO_UNIT


class FeatureStats:
    """Running sum and sum of outer products of one set's features, as fixed-point int64 limbs.

    Plain sums, as torchmetrics keeps them, so two partial states (shards, resumed runs) merge
    by adding, and in integers the merge is exact: N processes give one process's FID to the
    last bit. Float64 sums would differ in the last bits with the order of the batches, which
    a rank-deficient covariance (few images) amplifies to 1e-9..1e-7 in FID. The one-pass
    covariance loses about (mean/std)^2 x 1e-16 relative to a two-pass one: far below FID's
    reported digits.
    """

    def __init__(self, dim: int, device: torch.device) -> None:
        self.count = 0
        self.total = torch.zeros(2, dim, dtype=torch.int64, device=device)
        self.outer = torch.zeros(2, dim, dim, dtype=torch.int64, device=device)

    def update(self, features: torch.Tensor) -> None:
        features = features.double()
        self.count += len(features)
        add_fixed(self.total, features.sum(dim=0))
        add_fixed(self.outer, features.T @ features)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (divisor n - 1, as np.cov and torchmetrics use)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        mean = from_fixed(self.total) / self.count
        cov = (from_fixed(self.outer) - self.count * torch.outer(mean, mean)) / (self.count - 1)
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
