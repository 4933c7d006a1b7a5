"""Runs that survive a crash: schedule-free latent noise, checkpoints, exact resume, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from tests.conftest import write_rgb
from tests.metric_weights import plant_random_metric_weights
from tests.tiny_models import TINY_MODELS
from vaes4rs import checkpoint, files, rundir
from vaes4rs.models.adapter import VAEAdapter

N_IMAGES = 12


def tiny(name: str) -> torch.nn.Module:
    class_name, kwargs = TINY_MODELS[name]
    torch.manual_seed(0)
    return getattr(diffusers, class_name)(**kwargs).eval()


def test_latent_noise_belongs_to_the_image_not_the_batch() -> None:
    """Image i's noise is drawn from its own (seed, id) generator, wherever it sits in a batch."""
    adapter = VAEAdapter(tiny("SD21-VAE"), name="sd", latent="sample", seed=42)
    ids = [f"c/{i}.png" for i in range(9)]
    shape = (9, 4, 8, 8)
    together = randn_tensor(shape, generator=adapter.noise_generators(ids, 9))
    alone = torch.cat([randn_tensor((1, 4, 8, 8), generator=adapter.noise_generators([i], 1)) for i in ids])
    assert torch.equal(together, alone)
    shuffled = randn_tensor(shape, generator=adapter.noise_generators(ids[::-1], 9))
    assert torch.equal(shuffled, together.flip(0))
    other_seed = VAEAdapter(tiny("SD21-VAE"), name="sd", latent="sample", seed=7)
    assert not torch.equal(randn_tensor(shape, generator=other_seed.noise_generators(ids, 9)), together)
    assert VAEAdapter(tiny("SD21-VAE"), name="sd", latent="mode").noise_generators(ids, 9) is None


@pytest.mark.parametrize("name", ["SD21-VAE", "Qwen-VAE"])
def test_batch_sizes_1_7_and_64_give_the_same_reconstructions(name: str) -> None:
    """Equal up to CPU kernels, whose float32 sums depend on the batch shape (~1e-6 here);
    another seed's noise moves them by orders of magnitude more."""
    x = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ids = [f"c/{i}.png" for i in range(9)]

    def run(adapter: VAEAdapter, batch: int) -> torch.Tensor:
        return torch.cat(
            [adapter.reconstruct(x[i : i + batch], ids[i : i + batch]) for i in range(0, 9, batch)]
        )

    adapter = VAEAdapter(tiny(name), name=name, latent="sample", seed=42)
    one, seven, all_at_once = run(adapter, 1), run(adapter, 7), run(adapter, 64)
    torch.testing.assert_close(seven, one, rtol=0, atol=1e-4)
    torch.testing.assert_close(all_at_once, one, rtol=0, atol=1e-4)
    other = run(VAEAdapter(tiny(name), name=name, latent="sample", seed=7), 64)
    assert (other - one).abs().max() > 100 * (all_at_once - one).abs().max()


@pytest.fixture(scope="module")
def planted_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    plant_random_metric_weights(home / "hub" / "checkpoints")
    return home


@pytest.fixture(scope="module")
def twelve_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("twelve")
    for i in range(N_IMAGES):
        write_rgb(root / f"c{i % 2}" / f"{i:02d}.png", 32, 32, seed=i)
    return root


def command(tiny_models: Path, images: Path, run_dir: Path, protocol: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vaes4rs.run",
        "model=local",
        f"model.path={tiny_models}",
        "model.subfolder=SD21-VAE",
        "dataset=folder",
        f"dataset.root={images}",
        f"metric={protocol}",
        "metric.kid=true",
        "metric.lpips=false",
        "metric.kid_subset_size=8",
        "metric.kid_subsets=5",
        "logger=none",
        "run.device=cpu",
        "run.batch_size=1",
        "run.checkpoint_every=2",
        "run.progress=false",
        "dataset.num_workers=0",
        f"hydra.run.dir={run_dir}",
    ]


def environment(torch_home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(torch_home)}


def interrupt_after_a_checkpoint(cmd: list[str], run_dir: Path, env: dict[str, str], sig: int) -> None:
    # A shell's background job (`pytest ... &`) ignores SIGINT, and its children inherit that: the
    # run must get the signal with its default meaning, as from a terminal's Ctrl-C.
    process = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not (run_dir / files.CHECKPOINT_FILE).exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(timeout=120)
    assert not (run_dir / files.RESULT_FILE).exists(), "the run finished before it was interrupted"


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "protocol"), [(signal.SIGKILL, "paper"), (signal.SIGINT, "standard")])
def test_an_interrupted_run_resumes_to_the_uninterrupted_numbers(
    tiny_models: Path, twelve_images: Path, planted_torch_home: Path, tmp_path: Path, sig: int, protocol: str
) -> None:
    env = environment(planted_torch_home)
    whole_cmd = command(tiny_models, twelve_images, tmp_path / "whole", protocol)
    whole = subprocess.run(whole_cmd, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed_dir = tmp_path / "resumed"
    cmd = command(tiny_models, twelve_images, resumed_dir, protocol)
    interrupt_after_a_checkpoint(cmd, resumed_dir, env, sig)
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after batch" in resumed.stdout + resumed.stderr
    assert not (resumed_dir / files.CHECKPOINT_FILE).exists()
    for name in (files.PER_IMAGE_FILE, files.PER_CLASS_FILE):
        assert (resumed_dir / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    ours = json.loads((resumed_dir / files.RESULT_FILE).read_text())
    theirs = json.loads((tmp_path / "whole" / files.RESULT_FILE).read_text())
    assert ours["metrics"].keys() == theirs["metrics"].keys() >= {"psnr", "ssim", "fid", "kid"}
    for key, value in theirs["metrics"].items():
        assert ours["metrics"][key] == pytest.approx(value, rel=1e-12, abs=0), key
    for key in ("n_images", "model_stats", "skipped", "protocol"):
        assert ours[key] == theirs[key], key


def test_a_corrupt_checkpoint_is_named_and_nothing_is_overwritten(tmp_path: Path) -> None:
    path = tmp_path / files.CHECKPOINT_FILE
    checkpoint.save(path, checkpoint.Progress(batches_done=2, columns=["index", "psnr"]))
    assert checkpoint.load(path, ["index", "psnr"]).batches_done == 2
    with pytest.raises(checkpoint.CheckpointError, match="holds columns"):
        checkpoint.load(path, ["index", "ssim"])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {path} cannot be read"):
        checkpoint.load(path, ["index", "psnr"])


def test_resume_keeps_what_it_needs_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    config = {"metric": {"protocol": "paper"}}
    with rundir.claim(tmp_path, config):
        (tmp_path / files.PER_IMAGE_FILE).write_text("index\n0\n")
        (tmp_path / files.CHECKPOINT_FILE).write_bytes(b"state")
    with rundir.claim(tmp_path, config) as held:
        assert held.resume and (tmp_path / files.PER_IMAGE_FILE).read_text() == "index\n0\n"
    with rundir.claim(tmp_path, config, resume="never") as held:
        assert not held.resume and not (tmp_path / files.CHECKPOINT_FILE).exists()
    with pytest.raises(rundir.RunDirectoryError, match=r"run.resume=require but there is no .*checkpoint.pt"):
        with rundir.claim(tmp_path, config, resume="require"):
            pass
    (tmp_path / files.RESULT_FILE).write_text("{}")
    with rundir.claim(tmp_path, config, skip_finished=True) as held:
        assert held.finished and (tmp_path / files.RESULT_FILE).read_text() == "{}"
    with pytest.raises(rundir.RunDirectoryError, match="another config"):
        with rundir.claim(tmp_path, {"metric": {"protocol": "standard"}}, skip_finished=True):
            pass
