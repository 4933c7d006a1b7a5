"""``vaes4rs.models.compile`` and the throughput benchmark (``benchmarks/throughput.py``) on a CPU.

Speed is never asserted here: the benchmark prints its figures, and its README records them.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import throughput
from benchmarks.throughput import tiny_config
from tests.conftest import REPO_ROOT
from tests.tiny_models import build_study_multiple_model
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.architecture import architecture_config, build_from_config
from vaes4rs.models.compile import compile_vae
from vaes4rs.models.families import family_for


def test_compile_vae_compiles_encoder_and_decoder_and_keeps_the_model() -> None:
    """The compiled parts run through the backend; class, state dict and results stay; a copy runs eager."""
    traced: list[int] = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        traced.append(len(example_inputs))
        return graph.forward

    module = build_study_multiple_model("KL-f8")
    keys = list(module.state_dict())
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    eager = VAEAdapter(module, name="kl", latent="mode").reconstruct(x)
    assert compile_vae(module, backend=counting_backend, channels_last=True) is module
    compiled = VAEAdapter(module, name="kl", latent="mode").reconstruct(x)
    assert len(traced) >= 2  # at least one graph each for the encoder and the decoder
    assert type(module).__name__ == "AutoencoderKL" and family_for(module) is family_for("AutoencoderKL")
    assert list(module.state_dict()) == keys
    assert module.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
    calls = len(traced)
    VAEAdapter(copy.deepcopy(module), name="kl", latent="mode").reconstruct(x)
    assert len(traced) == calls  # the adapter's float32 fallback copies the VAE: it must not reuse the graphs


def test_compile_vae_names_what_a_module_lacks() -> None:
    with pytest.raises(ValueError, match="no encoder / decoder submodule"):
        compile_vae(nn.Linear(2, 2), backend="eager")


@pytest.mark.parametrize("arch", ["sd21", "flux2", "sana", "qwen"])
def test_tiny_configs_keep_class_and_spatial_multiple(arch: str) -> None:
    """The benchmark's CPU variant runs the real family code path at the real padding."""
    config = architecture_config(arch)
    with torch.device("meta"):
        real, tiny = build_from_config(config), build_from_config(tiny_config(config))
    assert type(tiny) is type(real)
    assert family_for(tiny).spatial_multiple(tiny) == family_for(real).spatial_multiple(real)
    assert sum(p.numel() for p in tiny.parameters()) < sum(p.numel() for p in real.parameters()) / 100


@pytest.mark.slow
def test_benchmark_runs_on_cpu_and_prints_its_tables(tmp_path: Path) -> None:
    """Tiny configs, one size, FID off (minutes of CPU otherwise): every phase runs and every table prints."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--tiny",
        "--device=cpu",
        "--models=sd21",
        "--sizes=32",
        "--images=4",
        "--batch-size=2",
        "--compile-backend=eager",
        "--loader-workers=0",
        "--pipeline-override=metric.fid=false",
        f"--workdir={tmp_path / 'work'}",
        f"--out={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "FAILED" not in printed, printed[-3000:]
    for heading in (
        "## Eager: pipeline against the bare encode+decode (CPU)",
        "## Outside the loop",
        "## Where a batch goes: sd21 at img32",
        "## Compiled (torch.compile of encoder and decoder)",
        "## Paper-protocol metrics, compiled minus eager, same images and weights",
        "## Projected full study",
        "## Targets",
    ):
        assert heading in printed, heading
    row = next(line for line in printed.splitlines() if line.startswith("| sd21 | 32 | 2 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert all(cell != "n/a" for cell in cells[4:10]), row  # pipeline, floor and their ratios were measured
    saved = json.loads((out / "throughput.json").read_text())
    case = saved["cases"][0]
    assert case["pipeline"]["n_images"] == 4 and case["compiled_pipeline"]["n_images"] == 4
    assert set(saved["metric_shift_compiled_minus_eager"]["sd21 img32"]) >= {"psnr", "ssim", "lpips"}
    assert (out / "throughput.md").read_text().count("|") > 50
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--report", str(out / "throughput.json")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert row in again.stdout and "## Targets" in again.stdout  # the saved run prints the same table


def test_implicit_waits_for_the_gpu_are_noted_and_counted_per_steady_batch(monkeypatch) -> None:
    """The benchmark's sync counter, fed the warning torch's sync debug mode gives (no GPU here)."""
    modes: list[str] = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(throughput, "_JOB", {"host_waits": []})
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        throughput._note_host_waits()
        assert modes == ["warn"]
        warnings.warn("unrelated", stacklevel=1)  # passed on, not counted
        warnings.warn(
            f"{throughput.SYNC_WARNING} (before the loop)", stacklevel=1
        )  # not counted: no loop yet
        throughput._JOB["loop_start"] = 0.0
        for _ in range(3):  # the same line each time: "always", not once per line
            warnings.warn(f"{throughput.SYNC_WARNING} (Triggered internally)", stacklevel=1)
    assert shown == ["unrelated"]
    noted = throughput._JOB["host_waits"]
    assert len(noted) == 3 and {site for _, site in noted} == {noted[0][1]}
    assert noted[0][1].startswith(f"{__file__}:")  # the line that waited

    job = throughput.JobTrace(
        model="sd21",
        dataset="img256",
        n_images=6,
        loop_s=3.0,
        job_s=4.0,
        start=0.0,
        batches=[(0.0, 1.0, 2), (0.5, 2.0, 2), (1.5, 3.0, 2)],  # (submit start, finish end, images)
        calls={},
        peak_mib=None,
        out_dir="x",
        host_waits=[(0.5, "a.py:1"), (1.5, "b.py:2"), (1.6, "b.py:2"), (2.5, "b.py:2"), (3.5, "c.py:3")],
    )
    per_batch, sites = job.steady_host_waits()
    assert per_batch == 1.5 and sites == {"b.py:2": 3}  # within the two steady batches only
    table = throughput.host_waits_table(throughput.PipelineRun([job], wall_s=5.0, startup_s=1.0))
    assert table[-1].replace(" ", "") == "|sd21img256|1.50|b.py:2x3|"
    assert throughput.JobTrace(**{**job.__dict__, "host_waits": None}).steady_host_waits() is None
