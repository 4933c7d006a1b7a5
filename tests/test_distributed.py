"""One job over several processes (gloo on CPU), started by torchrun or as the tasks of a SLURM
job: the same files as one process, whatever the number of ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_rgb
from tests.metric_weights import plant_random_metric_weights
from vaes4rs import files

# Launchers' variables the test environment must not leak into a run that sets its own.
RANK_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")


@dataclass(frozen=True)
class Reference:
    """A single-process run, and the command and environment that made it."""

    args: list[str]
    env: dict[str, str]
    out_dir: Path
    metrics: dict[str, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Three one-image batches: two ranks add the sums in another order than one process does."""
    root = tmp_path_factory.mktemp("distributed")
    for i in range(3):
        write_rgb(root / "set" / f"c{i % 2}" / f"{i}.png", 32, 32, seed=i)
    plant_random_metric_weights(root / "torch_home" / "hub" / "checkpoints")
    # One thread per process, as torchrun sets it: CPU kernels then sum in the same order everywhere.
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES and not k.startswith("SLURM_")}
    env.update(HF_HUB_OFFLINE="1", TORCH_HOME=str(root / "torch_home"), OMP_NUM_THREADS="1")
    args = [
        "-m",
        "vaes4rs.run",
        "model=local",
        f"model.path={tiny_models}",
        "model.subfolder=SD21-VAE",
        "dataset=folder",
        f"dataset.root={root / 'set'}",
        "metric.lpips=false",
        "metric.kid=true",
        "metric.kid_subset_size=2",
        "logger=none",
        "run.device=cpu",
        "run.batch_size=1",
        "run.progress=false",
        "dataset.num_workers=0",
    ]
    out_dir = root / "one"
    single = subprocess.run(
        [sys.executable, *args, f"hydra.run.dir={out_dir}"], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    metrics = json.loads((out_dir / files.RESULT_FILE).read_text())["metrics"]
    assert metrics.keys() >= {"psnr", "fid", "kid"}
    return Reference(args, env, out_dir, metrics)


def assert_same_results(run_dir: Path, reference: Reference, processes: int) -> None:
    """Every file one process writes, with every number, FID to the last bit (sums in fixed point)."""
    for name in (files.PER_IMAGE_FILE, files.PER_CLASS_FILE):
        assert (run_dir / name).read_text() == (reference.out_dir / name).read_text(), (processes, name)
    merged = json.loads((run_dir / files.RESULT_FILE).read_text())
    assert merged["metrics"] == reference.metrics, processes
    assert merged["timing"]["processes"] == processes and merged["n_images"] == 3
    assert not list(run_dir.glob(".per_image.rank*.csv"))


@pytest.mark.slow
def test_torchrun_with_two_ranks_and_more_ranks_than_batches_writes_what_one_process_writes(
    reference: Reference, tmp_path: Path
) -> None:
    for n in (2, 4):  # 4 ranks for 3 one-image batches: one rank scores nothing
        run_dir = tmp_path / f"ranks{n}"
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={n}",
            f"--master_port={free_port()}",
        ]
        result = subprocess.run(
            [*torchrun, *reference.args, f"hydra.run.dir={run_dir}"],
            env=reference.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert_same_results(run_dir, reference, n)
    # Rank 0 skips the finished job; rank 1 must hear so instead of waiting in the final gather.
    again = subprocess.run(
        [*torchrun[:3], "--nproc_per_node=2", f"--master_port={free_port()}", *reference.args]
        + [f"hydra.run.dir={tmp_path / 'ranks2'}", "run.skip_finished=true"],
        env=reference.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0
    assert "skipped: its results for this config are complete" in again.stdout + again.stderr


@pytest.mark.slow
def test_slurm_tasks_of_one_job_shard_it_as_torchrun_ranks_do(reference: Reference, tmp_path: Path) -> None:
    """hydra/launcher=slurm with tasks_per_node=2: each task runs the CLI with SLURM's variables
    (as srun sets them and submitit's sbatch script marks them), nothing else: submitit's job
    environment gives the ranks, the first host of the node list and a port from the job id."""
    run_dir = tmp_path / "slurm"
    job = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": str(os.getpid()),  # unique among concurrent runs: so is the port it picks
        "SLURM_ARRAY_JOB_ID": str(os.getpid()),
        "SLURM_ARRAY_TASK_ID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NODELIST": "localhost",
    }
    tasks = [
        subprocess.Popen(
            [sys.executable, *reference.args, f"hydra.run.dir={run_dir}"],
            env={**reference.env, **job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # Hydra logs to stdout
            text=True,
        )
        for rank in range(2)
    ]
    for rank, task in enumerate(tasks):
        output, _ = task.communicate(timeout=600)
        assert task.returncode == 0, (rank, output[-3000:])
        assert f"task {rank} of 2 (local rank {rank}), process group at localhost:" in output
    assert_same_results(run_dir, reference, 2)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob(files.RESULT_FILE)] == [
        Path("slurm", files.RESULT_FILE)
    ]
