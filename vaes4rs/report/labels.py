"""How the reports name and order models and datasets: the study's labels and table order.

The names, labels and order come from ``vaes4rs.catalog``, which the profiler reads too. A
result names its model as its config did: ``sd21`` from a sweep, or a label-style name such as
``SD21-VAE`` from a local run of BiliSakura/VAEs; both print, sort and compare with the study's
numbers as the same model. A name the study does not know prints as it is, after the study's.

A dataset's label says what was scored, so a few local images never pass for the study's set:
the study's label only for its full set from the hub (or a result that does not say);
``RESISC45 (subset, 60 images)`` for part of it (``dataset.classes`` or ``limit_per_class``);
``resisc45 (folder, 24 images)`` for a local folder, by its own name, whatever that name is.
"""

from __future__ import annotations

from vaes4rs.catalog import STUDY_DATASETS, STUDY_MODELS

# name -> label, in table order
_MODEL_LABELS = {model.name: model.label for model in STUDY_MODELS}
_DATASET_LABELS = {dataset.name: dataset.label for dataset in STUDY_DATASETS}


def _canonical(name: str, labels: dict[str, str]) -> str:
    """A study name for a label-style name too: a local run of BiliSakura/VAEs' SD21-VAE is sd21."""
    aliases = {label.lower(): key for key, label in labels.items()}
    return name if name in labels else aliases.get(name.lower(), name)


def canonical_model(name: str) -> str:
    return _canonical(name, _MODEL_LABELS)


def canonical_dataset(name: str) -> str:
    return _canonical(name, _DATASET_LABELS)


def _ordered(names: set[str], labels: dict[str, str]) -> list[str]:
    """Names in the study's order, unknown ones after them alphabetically."""
    rank = {key: i for i, key in enumerate(labels)}
    return sorted(names, key=lambda name: (rank.get(_canonical(name, labels), len(rank)), name))


def order_models(names: set[str]) -> list[str]:
    return _ordered(names, _MODEL_LABELS)


def order_datasets(names: set[str]) -> list[str]:
    return _ordered(names, _DATASET_LABELS)


def model_label(name: str) -> str:
    return _MODEL_LABELS.get(canonical_model(name), name)


def dataset_label(name: str) -> str:
    return _DATASET_LABELS.get(canonical_dataset(name), name)


FOLDER = "folder"  # dataset kinds that are not the named set as a whole
SUBSET = "subset"


def scored_dataset_label(name: str, kind: str, n_images: int) -> str:
    """The label of what a dataset's jobs scored; ``kind`` is "", ``SUBSET`` or ``FOLDER``."""
    if not kind:
        return dataset_label(name)
    return f"{name if kind == FOLDER else dataset_label(name)} ({kind}, {n_images:,} images)"
