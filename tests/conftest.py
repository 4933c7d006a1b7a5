"""Shared fixtures: tiny random-init models in the hub's layout, image folders, paths."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from tests.metric_weights import plant_random_metric_weights
from tests.tiny_models import save_tiny_models

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
RS_SAMPLES = SHARED / "data" / "rs-samples"
CONF_DIR = REPO_ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def needs_shared(path: Path) -> None:
    """Skip (with the reason) when ../shared or a file in it is absent."""
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only laid out for developers and CI)")


@pytest.fixture(scope="module")
def planted_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TORCH_HOME with randomly initialised metric networks under the libraries' file names
    (tests/metric_weights.py), for one test module."""
    home = tmp_path_factory.mktemp("torch_home")
    plant_random_metric_weights(home / "hub" / "checkpoints")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def fresh_metric_networks() -> Iterator[None]:
    """Each test starts as a new process would: no metric networks left by an earlier job."""
    from vaes4rs.metrics.suite import SHARED_NETWORKS

    SHARED_NETWORKS.clear()
    yield
    SHARED_NETWORKS.clear()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like BiliSakura/VAEs: SD21-VAE/, FLUX2-VAE/, SANA-VAE/, Qwen-VAE/."""
    return save_tiny_models(tmp_path_factory.mktemp("VAEs"))


def write_rgb(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth-ish random RGB image (PNG unless the suffix says otherwise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Two classes, one of them with mixed sizes (150x150 and 96x96)."""
    root = tmp_path / "scenes"
    for i in range(3):
        write_rgb(root / "forest" / f"forest_{i}.png", 64, 64, seed=i)
    write_rgb(root / "harbor" / "harbor_0.png", 150, 150, seed=10)
    write_rgb(root / "harbor" / "harbor_1.png", 96, 96, seed=11)
    write_rgb(root / "harbor" / "harbor_2.png", 150, 150, seed=12)
    return root


@pytest.fixture(scope="session")
def compose_conf() -> Callable[..., DictConfig]:
    """Compose ``conf/<config_name>.yaml`` with overrides through Hydra's compose API, as the CLIs do."""

    from vaes4rs.config import register_configs

    register_configs()

    def compose_with(overrides: Sequence[str], config_name: str = "config") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return compose_with


def local_job_overrides(model_dir: Path, root: Path) -> list[str]:
    """A local diffusers model on an image folder, on the CPU, without workers or a progress bar."""
    return [
        "model=local",
        f"model.path={model_dir}",
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "run.device=cpu",
        "run.progress=false",
    ]


def evaluate_job(compose_conf: Callable, model_dir: Path, root: Path, out_dir: Path, *overrides: str) -> dict:
    """One ``vaes4rs.run`` job in this process (``evaluate``, after the pre-flight check), no logger."""
    from vaes4rs import preflight
    from vaes4rs.config import validate
    from vaes4rs.evaluate import evaluate

    cfg = validate(compose_conf([*local_job_overrides(model_dir, root), "logger=none", *overrides]))
    out_dir.mkdir(parents=True)
    payload = evaluate(cfg, out_dir, preflight.check(cfg))
    assert payload is not None
    return payload


def read_per_image(path: Path) -> dict[str, np.ndarray]:
    """per_image.csv as columns (numeric columns as float64)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    table: dict[str, np.ndarray] = {}
    for name in rows[0].keys() if rows else []:
        values = [row[name] for row in rows]
        try:
            table[name] = np.asarray(values, dtype=np.float64)
        except ValueError:
            table[name] = np.asarray(values)
    return table
