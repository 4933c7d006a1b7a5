"""Downstream probe: does a frozen backbone still recognise the scene classes in reconstructions?

A timm backbone (``metric.probe``, e.g. ``resnet50`` or ``vit_small_patch14_dinov2.lvd142m``)
gives pooled features (``num_classes=0``) of every original and its reconstruction. Each class's
images are split by a seeded draw (``probe_train_fraction`` of them to train, at least one, and
at least one held out when the class has two or more images). Two classifiers are fit:

- on the originals' training features, scored on the held-out originals (``probe_acc``) and on
  the held-out images' reconstructions (``probe_acc_recon``): how much a classifier built on
  real imagery loses on decoded imagery (``probe_drop = probe_acc - probe_acc_recon``);
- on the reconstructions' training features, scored on the held-out originals
  (``probe_acc_fit_recon``, ``probe_drop_fit_recon = probe_acc - probe_acc_fit_recon``): how
  well decoded imagery stands in for real imagery as training data.

Classifiers (``probe_classifier``): ``linear``, ridge regression onto one-hot classes on
features standardised by the training set's mean and std (penalty 0.01 per unit variance),
solved in closed form, the class being the highest score: one exact solution, no optimiser
settings or iterations to report, and cheap (5 s on a shared 2-core CPU for 4,000 images of
2,048 features in 45 classes, where an L-BFGS logistic regression took 140 s); ``knn``, the
k = 20 nearest training features by cosine similarity, votes weighted by exp(similarity / 0.07)
(the k-NN protocol of DINO). Accuracies are fractions of held-out images, over all of them and per class.

The split is drawn per class, from a generator seeded by (``probe_seed``, CRC-32 of the class
label), over the class's images in the order they were scored: dataset order when all images
share a size (otherwise the batch order, which groups sizes).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vaes4rs.metrics.features import FrozenFeatures
from vaes4rs.metrics.weights import load_timm

RIDGE = 1e-2  # relative to the standardised features' unit variance
KNN_K = 20
KNN_TEMPERATURE = 0.07
# (name, fit on originals?, scored on originals?) of each accuracy, and the drops from probe_acc.
ACCURACIES = (
    ("probe_acc", True, True),
    ("probe_acc_recon", True, False),
    ("probe_acc_fit_recon", False, True),
)
DROPS = (("probe_drop", "probe_acc_recon"), ("probe_drop_fit_recon", "probe_acc_fit_recon"))


class ProbeUnavailable(ValueError):
    """The scored images cannot make a probe (one class, or no image to hold out); recorded, not fatal."""


def load_probe(
    name: str, weights: Mapping[str, str | None], device: torch.device, **overrides: Any
) -> FrozenFeatures:
    """The backbone's pooled features; ``overrides`` (timm model arguments) are for the tests' stand-ins."""
    model = load_timm(
        name,
        "probe",
        weights,
        setting="metric.probe",
        used_by=f"the probe (metric.probe={name})",
        switch="metric.probe=null",
        num_classes=0,
        **overrides,
    )
    return FrozenFeatures(model, device)


def split(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the training images: per class, a seeded draw of fraction x n of its n images
    (rounded half up, at least 1, at most n - 1; a class of one image only trains)."""
    labels_array = np.asarray(labels)
    train = np.zeros(len(labels_array), dtype=bool)
    for label in sorted(set(labels_array.tolist())):
        members = np.flatnonzero(labels_array == label)
        n = len(members)
        n_train = n if n < 2 else min(max(math.floor(fraction * n + 0.5), 1), n - 1)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        train[members[rng.permutation(n)[:n_train]]] = True
    return train


def fit_linear(features: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.nn.Linear:
    """Ridge regression onto one-hot classes, in closed form; a layer of raw features to class scores.

    Minimises ``mean ||(x - mean) / std @ W.T + b - onehot||^2 + RIDGE * ||W||^2`` over the
    training rows: a unique solution, found by one float64 solve, so every run and device agrees.
    """
    features = features.double()
    mean, std = features.mean(dim=0), features.std(dim=0, unbiased=False).clamp_min(1e-12)
    scaled = (features - mean) / std
    onehot = torch.nn.functional.one_hot(targets, n_classes).double()
    centred = onehot - onehot.mean(dim=0)
    gram = scaled.T @ scaled / len(scaled) + RIDGE * torch.eye(
        scaled.shape[1], dtype=torch.float64, device=scaled.device
    )
    weight = torch.linalg.solve(gram, scaled.T @ centred / len(scaled)).T
    layer = torch.nn.Linear(features.shape[1], n_classes, dtype=torch.float64, device=features.device)
    with torch.no_grad():  # fold the standardisation into the layer
        layer.weight.copy_(weight / std)
        layer.bias.copy_(onehot.mean(dim=0) - (weight / std) @ mean)
    return layer.requires_grad_(False)


def knn_predict(
    train: torch.Tensor, targets: torch.Tensor, test: torch.Tensor, n_classes: int, k: int = KNN_K
) -> torch.Tensor:
    """Class of each test feature by its k nearest training features (cosine), weighted votes."""
    train_unit = torch.nn.functional.normalize(train.double(), dim=1)
    test_unit = torch.nn.functional.normalize(test.double(), dim=1)
    similarity, nearest = (test_unit @ train_unit.T).topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), n_classes, dtype=torch.float64, device=test.device)
    votes.scatter_add_(1, targets[nearest], torch.exp(similarity / KNN_TEMPERATURE))
    return votes.argmax(dim=1)


def _predictor(
    classifier: str, train: torch.Tensor, targets: torch.Tensor, n_classes: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from features to predicted class indices, fit on ``train``."""
    if classifier == "linear":
        layer = fit_linear(train, targets, n_classes)
        return lambda features: layer(features.double()).argmax(dim=1)
    if classifier == "knn":
        return lambda features: knn_predict(train, targets, features, n_classes)
    raise ValueError(f"metric.probe_classifier={classifier}: valid: linear, knn")


def scores(
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: Sequence[str],
    classifier: str,
    fraction: float,
    seed: int,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The probe's numbers over all held-out images and per class (classes with a held-out image).

    ``real`` and ``fake`` are the features of originals and reconstructions, row i of each the
    image labelled ``labels[i]``. Raises ProbeUnavailable when the labels cannot make a probe.
    """
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ProbeUnavailable(f"a probe needs at least 2 classes, got {len(classes)}")
    train_mask = split(labels, fraction, seed)
    if train_mask.all():
        raise ProbeUnavailable("a probe needs a held-out image: every class has a single image")
    number = {label: i for i, label in enumerate(classes)}
    targets = torch.tensor([number[label] for label in labels], device=real.device)
    train = torch.from_numpy(train_mask).to(real.device)
    test_targets = targets[~train]
    fits = {True: _predictor(classifier, real[train], targets[train], len(classes))}
    fits[False] = _predictor(classifier, fake[train], targets[train], len(classes))
    correct = {
        name: (fits[fit_real]((real if test_real else fake)[~train]) == test_targets).double()
        for name, fit_real, test_real in ACCURACIES
    }
    test_labels = np.asarray(labels)[~train_mask]

    def summary(mask: np.ndarray) -> dict[str, float]:
        rows = torch.from_numpy(mask).to(real.device)
        values = {name: float(hits[rows].mean()) for name, hits in correct.items()}
        values.update({drop: values["probe_acc"] - values[name] for drop, name in DROPS})
        return {**values, "probe_n_test": int(mask.sum())}

    overall = {**summary(np.ones(len(test_labels), dtype=bool)), "probe_n_train": int(train.sum())}
    per_class = {label: summary(test_labels == label) for label in classes if (test_labels == label).any()}
    return overall, per_class
