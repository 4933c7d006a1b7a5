"""torchrun inside a job (gloo on CPU): the same files as one process, whatever the number of ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_rgb
from tests.metric_weights import plant_random_metric_weights
from vaes4rs import files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_and_more_ranks_than_images_write_what_one_process_writes(
    tiny_models: Path, tmp_path: Path
) -> None:
    for i in range(2):
        write_rgb(tmp_path / "set" / f"c{i}" / f"{i}.png", 32, 32, seed=i)
    plant_random_metric_weights(tmp_path / "torch_home" / "hub" / "checkpoints")
    # One thread per process, as torchrun sets it: CPU kernels then sum in the same order everywhere.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "-m",
        "vaes4rs.run",
        "model=local",
        f"model.path={tiny_models}",
        "model.subfolder=SD21-VAE",
        "dataset=folder",
        f"dataset.root={tmp_path / 'set'}",
        "metric.lpips=false",
        "metric.kid=true",
        "metric.kid_subset_size=2",
        "logger=none",
        "run.device=cpu",
        "run.batch_size=1",
        "run.progress=false",
        "dataset.num_workers=0",
    ]
    single = subprocess.run(
        [sys.executable, *args, f"hydra.run.dir={tmp_path / 'one'}"], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads((tmp_path / "one" / files.RESULT_FILE).read_text())
    for n in (2, 3):  # 3 ranks for 2 one-image batches: one rank scores nothing
        run_dir = tmp_path / f"ranks{n}"
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={n}",
            f"--master_port={free_port()}",
        ]
        result = subprocess.run(
            [*torchrun, *args, f"hydra.run.dir={run_dir}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        for name in (files.PER_IMAGE_FILE, files.PER_CLASS_FILE):
            assert (run_dir / name).read_text() == (tmp_path / "one" / name).read_text(), (n, name)
        merged = json.loads((run_dir / files.RESULT_FILE).read_text())
        assert merged["metrics"].keys() == reference["metrics"].keys() >= {"psnr", "fid", "kid"}
        for key, value in reference["metrics"].items():
            # FID: float64 sums added in another order; 2 images make a rank-1 covariance in 2048
            # dimensions, whose matrix square root can turn 1e-16 differences into ~1e-9.
            tolerance = 1e-8 if key == "fid" else 0
            assert merged["metrics"][key] == pytest.approx(value, rel=tolerance, abs=0), (n, key)
        assert merged["timing"]["processes"] == n and merged["n_images"] == 2
        assert not list(run_dir.glob(".per_image.rank*.csv"))
