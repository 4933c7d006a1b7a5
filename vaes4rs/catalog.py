"""The study's models and datasets: names, printed labels and table order, in one torch-free place.

The profiler (which architectures make the GFLOPs table) and the reports (labels and row
order) both read these lists; ``conf/model/<name>.yaml`` loads each model and names the same
shipped architecture config (``vaes4rs/models/configs/<arch>.json``), which a test checks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyModel:
    """One of the study's VAEs: config/CLI name, the label its table prints, its architecture file."""

    name: str
    label: str
    arch: str


@dataclass(frozen=True)
class StudyDataset:
    name: str
    label: str


# In the order of the study's table.
STUDY_MODELS: tuple[StudyModel, ...] = (
    StudyModel("sd21", "SD21-VAE", arch="sd21"),
    StudyModel("sdxl", "SDXL-VAE", arch="sdxl"),
    StudyModel("sd35", "SD35-VAE", arch="sd35"),
    StudyModel("flux1", "FLUX1-VAE", arch="flux1"),
    StudyModel("flux2", "FLUX2-VAE", arch="flux2"),
    StudyModel("sana", "SANA-VAE", arch="sana"),
    StudyModel("qwen", "Qwen-VAE", arch="qwen"),
)
STUDY_DATASETS: tuple[StudyDataset, ...] = (
    StudyDataset("resisc45", "RESISC45"),
    StudyDataset("aid", "AID"),
    StudyDataset("ucmerced", "UC Merced"),
)


def study_model_names() -> tuple[str, ...]:
    return tuple(model.name for model in STUDY_MODELS)
