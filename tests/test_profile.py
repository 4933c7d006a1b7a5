"""GFLOPs, parameters, latent shapes (`models.cost`, `vaes4rs.profiler`) against the study and fvcore."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR
from tests.tiny_models import TINY_MODELS
from vaes4rs.catalog import STUDY_MODELS as STUDY_CATALOG
from vaes4rs.catalog import study_model_names
from vaes4rs.config import ModelConfig
from vaes4rs.models import zoo
from vaes4rs.models.architecture import (
    architecture_config,
    build_architecture,
    build_from_config,
    shipped_architectures,
)
from vaes4rs.models.cost import _as_meta, fvcore_breakdown, profile_module
from vaes4rs.models.families import family_for
from vaes4rs.models.taesd import TinyAutoencoder
from vaes4rs.profiler import run_profile, validate

STUDY_MODELS = study_model_names()

# The study's table (paper.md): GFLOPs of one encode+decode at 1x3x256x256, latent shape.
PUBLISHED = {
    "sd21": (894.91, (4, 32, 32)),
    "sdxl": (894.91, (4, 32, 32)),
    "sd35": (895.25, (16, 32, 32)),
    "flux1": (895.25, (16, 32, 32)),
    "flux2": (895.71, (32, 32, 32)),
    "sana": (846.76, (32, 8, 8)),
    "qwen": (1143.88, (16, 32, 32)),
}


def count_gflops(module: torch.nn.Module, height: int, width: int) -> float:
    """GFLOPs of one encode+decode at HxW, for any supported model (loaded or meta) in the study's way."""
    return profile_module(module, height, width).gflops


def model_summary(module: torch.nn.Module) -> dict:
    """Class and parameter counts (encoder side, decoder side, total) of a supported model."""
    meta = _as_meta(module)
    multiple = family_for(meta).spatial_multiple(meta)
    # A small input (latent 4x4, so no norm sees a single value): parameters do not depend on it.
    profile = profile_module(meta, 4 * multiple, 4 * multiple)
    return {
        "class": profile.class_name,
        "params": profile.params,
        "params_encoder": profile.params_encoder,
        "params_decoder": profile.params_decoder,
    }


@pytest.fixture()
def compose_profile(compose_conf):
    return lambda overrides: compose_conf(overrides, config_name="profile")


@pytest.fixture(scope="module")
def study_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The real CLI once, as `make flops-table` runs it: seven study models at 256x256 and 600x600."""
    tmp = tmp_path_factory.mktemp("profile")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaes4rs.profiler",
            "profile.table=true",
            f"profile.out={tmp / 'table'}",
            f"hydra.run.dir={tmp / 'run'}",
        ],
        cwd=tmp,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, tmp / "table"


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "flops_table.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_study_gflops_and_latents_match_the_paper(study_table: tuple[str, Path]) -> None:
    rows = {row["model"]: row for row in read_rows(study_table[1]) if row["height"] == "256"}
    assert tuple(rows) == STUDY_MODELS
    for model, (gflops, latent) in PUBLISHED.items():
        assert round(int(rows[model]["flops"]) / 1e9, 2) == gflops, model
        assert rows[model]["latent_shape"] == "(" + ",".join(map(str, latent)) + ")", model


def test_table_files_hold_both_sizes(study_table: tuple[str, Path]) -> None:
    stdout, out = study_table
    rows = read_rows(out)
    assert {"model", "height", "width", "gflops", "params", "latent_shape"} <= set(rows[0])
    assert len(rows) == 2 * len(STUDY_MODELS)
    big = {row["model"]: row for row in rows if row["height"] == "600"}
    assert big["sana"]["padded"] == "608x608" and big["sana"]["latent_shape"] == "(32,19,19)"
    assert big["sd21"]["gflops"] == "5021.89" and big["qwen"]["latent_shape"] == "(16,75,75)"
    assert "| sana | 600x600 | 608x608 | 4776.27 |" in (out / "flops_table.md").read_text()
    assert "profiled 7 models x 2 sizes in" in stdout


def test_one_model_writes_profile_json(compose_profile, tmp_path: Path) -> None:
    payload = run_profile(compose_profile(["model=sd21"]), tmp_path)
    profile = json.loads((tmp_path / "profile.json").read_text())["profile"]
    assert profile == payload["profile"] and profile["gflops"] == 894.9094
    assert (profile["params"], profile["latent_shape"]) == (83653863, [4, 32, 32])
    assert (profile["spatial_ratio"], profile["compression_ratio"]) == (8, 48.0)


def _study_sized(name: str) -> torch.nn.Module:
    return build_architecture(ModelConfig(name=name, arch=name))


def _tiny(subfolder: str) -> torch.nn.Module:
    class_name, kwargs = TINY_MODELS[subfolder]
    with torch.device("meta"):
        return build_from_config({"_class_name": class_name, **kwargs})


def _tiny_diffusers_taesd() -> torch.nn.Module:
    with torch.device("meta"):
        return build_from_config({"_class_name": "AutoencoderTiny"})


@pytest.mark.parametrize(
    "make",
    [
        lambda: _study_sized("sd21"),  # convolutions, linear layers, SDPA attention, group norm, upsampling
        lambda: _tiny("SANA-VAE"),  # linear attention (matmul), RMS norm, pixel (un)shuffle
        lambda: _tiny("Qwen-VAE"),  # 5-D input, causal 3-D convolutions
        lambda: TinyAutoencoder("taef2").to("meta"),  # our TAESD module, [0, 1] I/O
        lambda: _tiny_diffusers_taesd(),
    ],
    ids=["sd21", "dc", "qwen", "taef2", "AutoencoderTiny"],
)
def test_twice_fvcore_macs_without_its_extra_ops_is_our_count(make) -> None:
    model = make()
    ours = profile_module(model, 16, 32)
    theirs = fvcore_breakdown(model, 16, 32)
    assert theirs["study_gflops"] == pytest.approx(ours.gflops, rel=1e-12)
    assert theirs["study_gflops_by_module"] == pytest.approx(
        {part: flops / 1e9 for part, flops in ours.flops_by_module.items()}, rel=1e-12
    )
    assert sum(ours.flops_by_module.values()) == ours.flops == ours.encode_flops + ours.decode_flops


def test_fvcore_adds_norms_and_upsampling_that_the_study_leaves_out() -> None:
    theirs = fvcore_breakdown(_tiny("SD21-VAE"), 32, 32)
    by_operator = theirs["macs_by_operator"]
    assert by_operator["group_norm"] > 0 and by_operator["upsample_nearest2d"] > 0
    assert 2 * theirs["macs"] / 1e9 > theirs["study_gflops"]


def test_loaded_models_are_counted_on_meta_and_left_alone(tiny_models: Path) -> None:
    cfg = ModelConfig(name="SD21-VAE", path=str(tiny_models), subfolder="SD21-VAE")
    loaded = zoo.load_vae(cfg, torch.device("cpu"), torch.float32)
    before = next(loaded.parameters()).clone()
    assert count_gflops(loaded, 64, 96) == profile_module(build_architecture(cfg), 64, 96).gflops > 0
    assert torch.equal(next(loaded.parameters()), before)
    summary = model_summary(loaded)
    assert summary["params"] == sum(p.numel() for p in loaded.parameters())
    assert summary["params_encoder"] + summary["params_decoder"] == summary["params"]


def test_parameters_split_into_encoder_and_decoder_sides() -> None:
    assert model_summary(_study_sized("sd21")) == {
        "class": "AutoencoderKL",
        "params": 83653863,
        "params_encoder": 34163664,  # encoder + quant_conv
        "params_decoder": 49490199,  # decoder + post_quant_conv
    }
    tiny = model_summary(TinyAutoencoder("taesana"))
    assert tiny["params_encoder"] + tiny["params_decoder"] == tiny["params"]


@pytest.mark.parametrize("random_weights", [False, True])
def test_measure_times_encode_and_decode(
    compose_profile, tiny_models: Path, tmp_path: Path, random_weights: bool
) -> None:
    cfg = compose_profile(
        [
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=Qwen-VAE",
            "profile.size=[15,15]",
            "profile.measure=true",
            f"profile.random_weights={str(random_weights).lower()}",
            "profile.device=cpu",
            "profile.warmup=0",
            "profile.repeats=1",
        ]
    )
    payload = run_profile(cfg, tmp_path)
    measured = payload["measure"]
    assert measured["encode_ms_per_image"] > 0 and measured["decode_ms_per_image"] > 0
    assert (measured["device"], measured["peak_memory_mib"], measured["dtype"]) == ("cpu", "n/a", "float32")
    assert measured["weights"] == ("RANDOM INIT (timing only)" if random_weights else "pretrained")
    assert payload["profile"]["model"] == "Qwen-VAE" and payload["profile"]["padded_height"] == 16
    assert json.loads((tmp_path / "profile.json").read_text())["measure"] == measured


def test_tiny_loader_models_are_counted_from_their_variant(compose_profile, tmp_path: Path) -> None:
    profile = run_profile(compose_profile(["model=taef2"]), tmp_path)["profile"]
    assert (profile["class_name"], profile["latent_shape"], profile["spatial_ratio"]) == (
        "TinyAutoencoder",
        [32, 32, 32],
        8,
    )


def test_bad_settings_are_clear_errors(compose_profile, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"model 'empty': counting needs its config.json"):
        run_profile(compose_profile(["model=local", f"model.path={tmp_path}", "model.name=empty"]), tmp_path)
    with pytest.raises(ValueError, match=r"profile.size must be \[H, W\]"):
        validate(compose_profile(["profile.size=[256]"]))
    with pytest.raises(Exception, match=r"Error merging override profile.dtype=float64") as error:
        compose_profile(["profile.dtype=float64"])
    assert "Invalid value 'float64', expected one of [auto, float32" in str(error.value.__cause__)
    with pytest.raises(Exception, match=r"Could not override 'profile.sizes'"):
        compose_profile(["profile.sizes=[1,1]"])


def test_catalog_models_are_the_shipped_configs_their_yaml_names() -> None:
    """The one list of study models agrees with conf/model/<name>.yaml and the shipped architectures."""
    for model in STUDY_CATALOG:
        conf = OmegaConf.load(CONF_DIR / "model" / f"{model.name}.yaml")
        assert (conf.name, conf.arch) == (model.name, model.arch)
        assert (
            architecture_config(model.arch)["_class_name"]
            == build_architecture(ModelConfig(name=model.name, arch=model.arch)).__class__.__name__
        )
    assert sorted(m.arch for m in STUDY_CATALOG) == shipped_architectures()
