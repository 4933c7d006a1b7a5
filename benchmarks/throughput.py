"""``python -m benchmarks.throughput``: how close our evaluation loop runs to the bare encode+decode.

    python -m benchmarks.throughput                 # on a GPU: sd21 flux2 sana qwen at 256 and 600 px
    python -m benchmarks.throughput --tiny --device cpu --models sd21 --sizes 32,48 --images 4,4 \\
        --batch-size 2 --compile-backend eager       # the plumbing, in a minute or two on a CPU
    python -m benchmarks.throughput --report run1/throughput.json run2/throughput.json  # merged, printed

Per model (random-init weights of the real architecture from ``vaes4rs/models/configs``, saved
with ``save_pretrained`` so the pipeline loads the very same weights) and image size (JPEG class
folders written here), it times:

1. the **floor**: the family's bare encode (mode latent) + decode on one batch of the images,
   already on the device, eager; then compiled (``vaes4rs.models.compile.compile_vae``);
2. the **pipeline**: ``vaes4rs.run`` itself (``model=local dataset=folder metric=paper
   logger=none``, planted random metric networks, LPIPS and FID on) as one Hydra sweep in a
   child process, with the same batch size, eager and compiled. Probes wrap the loop's
   functions to read the clock (no extra synchronisation), so a job's first batch (worker
   start, cuDNN set-up, compilation) is told apart from its steady state;
3. where a job's time goes: the same run with CUDA-synchronised timers around each stage;
4. the data path alone (DataLoader with 2 and 8 workers) and ``torchvision.io.decode_jpeg`` on
   the device against Pillow, with the pixels compared;

and prints img/s, their ratio, TFLOP/s from our GFLOPs (``vaes4rs.models.cost``) and their
share of the dense bf16 peak, peak memory, how far compiled results move each paper-protocol
metric, and the projected wall time of the full study (7 models, RESISC45 + AID). Results go
to ``<out>/throughput.json`` and ``<out>/throughput.md`` after every phase; ``--report`` merges
saved runs of one card (a later file's measurements replace an earlier's) and prints the summary
again. Weights are random: timings only, metric values mean nothing except their eager/compiled
differences.
"""

from __future__ import annotations

import argparse
import collections
import csv
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vaes4rs.config import DatasetConfig, DatasetSource
from vaes4rs.data import list_images, prepare, read_image
from vaes4rs.device import pick_device, resolve_dtype
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.metrics.suite import METRICS
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.architecture import architecture_config, build_from_config
from vaes4rs.models.compile import compile_vae
from vaes4rs.models.cost import profile_module
from vaes4rs.models.families import family_for
from vaes4rs.report.render import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_SPEC_ENV = "VAES4RS_THROUGHPUT_JOB"  # set for the child process: what to probe, whether to compile
CHILD_COMMAND = "pipeline-job"
# The study: images per set, evaluated at the first and the last --sizes (256 and 600 by default).
STUDY_SETS = (("RESISC45", 31_500, 0), ("AID", 10_000, -1))
# Study models timed through a model of the same class and blocks (GFLOPs within 0.1 %).
PROXIES = {"sd21": "sd21", "sdxl": "sd21", "sd35": "sd21", "flux1": "sd21", "flux2": "flux2"}
KL_MODELS = ("sd21", "sdxl", "sd35", "flux1", "flux2")
# Dense bf16 tensor-core peak by the vendor's datasheet (SXM parts); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}
PAPER_METRICS = ("psnr", "ssim", "lpips", "fid")


# --- Inputs: architectures, weights, images ---------------------------------------------------------


def tiny_config(config: dict[str, Any]) -> dict[str, Any]:
    """The same class and depth (so the same spatial multiple and code path), a few channels wide."""
    config = dict(config)
    name = config["_class_name"]
    if name in ("AutoencoderKL", "AutoencoderKLFlux2"):
        levels = len(config["block_out_channels"])
        config.update(block_out_channels=[8] * levels, norm_num_groups=8, layers_per_block=1)
    elif name == "AutoencoderDC":
        levels = len(config["encoder_block_out_channels"])
        config.update(
            encoder_block_out_channels=[8] * levels,
            decoder_block_out_channels=[8] * levels,
            encoder_layers_per_block=[1] * levels,
            decoder_layers_per_block=[1] * levels,
            attention_head_dim=2,
        )
    elif name == "AutoencoderKLQwenImage":
        config.update(base_dim=8, num_res_blocks=1)
    else:
        raise ValueError(f"no tiny variant for {name}")
    return config


def build_model(arch: str, device: torch.device, dtype: torch.dtype, tiny: bool) -> nn.Module:
    """Random-init weights (seed 0) of a shipped study architecture, or of its tiny variant."""
    config = architecture_config(arch)
    torch.manual_seed(0)
    with torch.device(device):
        module = build_from_config(tiny_config(config) if tiny else config)
    return module.to(dtype).eval()


def write_images(root: Path, count: int, size: int, classes: int = 4) -> Path:
    """``count`` size x size JPEGs (quality 90) in ``classes`` class folders; reused when already there.

    Smooth random fields plus pixel noise, so a file decodes at about the cost of an aerial photo.
    """
    files = sorted(root.glob("*/*.jpg"))
    if len(files) == count:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(size)
    for i in range(count):
        coarse = rng.integers(0, 256, (size // 16 + 2, size // 16 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        path = root / f"class{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    return root


def plant_metric_weights(torch_home: Path) -> None:
    """Random AlexNet / Inception / VGG files under the libraries' names: the networks run, offline."""
    from tests.metric_weights import plant_random_metric_weights

    checkpoints = torch_home / "hub" / "checkpoints"
    if not checkpoints.is_dir():
        plant_random_metric_weights(checkpoints)


def first_batch(root: Path, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` images of a folder in dataset order, decoded as the loader does (uint8)."""
    records = list_images(root, None, None)[:batch_size]
    return torch.stack([torch.from_numpy(read_image(r.path)).permute(2, 0, 1) for r in records])


# --- The floor: bare encode+decode ---------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Floor:
    """Bare encode+decode of one batch: img/s at steady state, the first call's seconds, peak memory."""

    images_per_s: float
    first_call_s: float
    peak_mib: float | None


def time_floor(module: nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> Floor:
    """Median of ``repeats`` calls after ``warmup`` (the first of which compiles, when compiled)."""
    adapter = VAEAdapter(module, name=type(module).__name__, latent="mode")
    family, device = family_for(module), adapter.device
    x, _ = adapter.pad(to_minus_one_one(images.to(device)).to(adapter.dtype))

    def call() -> None:
        with torch.no_grad():
            family.decode(module, family.encode(module, x, "mode", None))
        _sync(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(max(warmup, 1) + repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Floor(len(x) / statistics.median(seconds[max(warmup, 1) :]), seconds[0], peak)


# --- The pipeline: the real CLI in a child process, with probes ------------------------------------

_JOB: dict[str, Any] = {}


def _install_probes(spec: dict[str, Any]) -> None:
    """Wrap the loop's functions with clocks (CUDA-synchronised ones only with ``stages``), and compile.

    Nothing the job computes changes: each wrapper calls the original with the same arguments.
    """
    from tqdm import tqdm

    from vaes4rs import evaluate, preflight, results, run
    from vaes4rs.metrics import suite
    from vaes4rs.models import adapter

    cuda = torch.cuda.is_available()
    if spec.get("count_host_waits") and cuda:
        _note_host_waits()

    def timed(owner: Any, attr: str, key: str, synced: bool = False) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def probe(*args: Any, **kwargs: Any) -> Any:
            if synced:
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if synced:
                    torch.cuda.synchronize()
                _JOB["calls"].setdefault(key, []).append(time.perf_counter() - start)

        setattr(owner, attr, probe)

    if spec.get("compile"):
        load = evaluate.load_vae

        def load_compiled(*args: Any, **kwargs: Any) -> nn.Module:
            return compile_vae(load(*args, **kwargs), **spec["compile"])

        evaluate.load_vae = load_compiled
        build_suite = evaluate.MetricSuite

        def compiled_suite(*args: Any, **kwargs: Any) -> Any:  # the metric networks, as run.compile does
            return build_suite(*args, **{**kwargs, "compile_backend": spec["compile"]["backend"]})

        evaluate.MetricSuite = compiled_suite
    for owner, attr, key in (
        (preflight, "check", "pre-flight check"),
        (evaluate, "load_vae", "load VAE"),
        (evaluate, "MetricSuite", "load metric networks"),
        (suite.MetricSuite, "finalize", "finalize metrics"),
        (evaluate, "model_stats", "model_stats (GFLOPs)"),
        (results.PerImageWriter, "rewrite_in_dataset_order", "rewrite per_image.csv"),
        (results, "write_per_class", "per_class.csv"),
        (results, "save_samples", "samples"),
        (results, "save_sample_grid", "samples"),
        (results, "software_versions", "software versions"),
    ):
        timed(owner, attr, key)
    synced = bool(spec.get("stages")) and cuda
    if spec.get("stages"):
        for owner, attr, key in (
            (evaluate, "to_minus_one_one", "uint8 -> [-1, 1]"),
            (adapter.VAEAdapter, "start_reconstruction", "reconstruct (adapter)"),
            (adapter.VAEAdapter, "encode", "encode (incl. latent noise)"),
            (adapter.VAEAdapter, "decode", "decode"),
            (suite.MetricSuite, "submit", "metric suite submit"),
            *((metric, "observe", f"metric {metric.name}") for metric in METRICS),
            (results.PerImageWriter, "write", "per_image.csv rows"),
        ):
            timed(owner, attr, key, synced)
    # The loop reads batch k's values after queueing batch k+1 (first in, first out): a batch
    # runs from the start of its submit to the end of its finish.
    timed(evaluate, "_submit_batch", "submit batch", synced)
    timed(evaluate, "_finish_batch", "finish batch", synced)
    submit, finish = evaluate._submit_batch, evaluate._finish_batch
    queued: collections.deque[float] = collections.deque()

    def submit_probe(*args: Any, **kwargs: Any) -> Any:
        queued.append(time.perf_counter() - _JOB["loop_start"])
        return submit(*args, **kwargs)

    def finish_probe(*args: Any, **kwargs: Any) -> int:
        n = finish(*args, **kwargs)
        _JOB["batches"].append((queued.popleft(), time.perf_counter() - _JOB["loop_start"], n))
        return n

    evaluate._submit_batch, evaluate._finish_batch = submit_probe, finish_probe

    def bar_probe(*args: Any, **kwargs: Any) -> Any:
        _JOB["loop_start"] = time.perf_counter()  # evaluate() starts its clock just before the bar
        return tqdm(*args, **kwargs)

    evaluate.tqdm = bar_probe
    job = run.run_job

    def job_probe(cfg: Any, out_dir: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        _JOB.clear()
        _JOB.update(start=time.time(), batches=[], calls={}, out_dir=str(out_dir), host_waits=None)
        if spec.get("count_host_waits") and cuda:
            _JOB["host_waits"] = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            payload = job(cfg, out_dir, *args, **kwargs)
            _JOB.update(model=payload["model"], dataset=payload["dataset"], n_images=payload["n_images"])
            _JOB["loop_s"] = payload["timing"]["seconds"]
            return payload
        except Exception as exc:
            _JOB["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            _JOB["job_s"] = time.perf_counter() - start
            _JOB["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            with open(spec["trace"], "a") as handle:
                handle.write(json.dumps({k: v for k, v in _JOB.items() if k != "loop_start"}) + "\n")

    run.run_job = job_probe


SYNC_WARNING = "called a synchronizing CUDA operation"


def _note_host_waits() -> None:
    """Note when and from which line the job waits for the GPU without saying so.

    torch's sync debug mode warns at each implicit wait (``.item()``, ``bool()`` of a tensor, a
    copy into pageable memory, ...), not at an explicit event or device synchronisation; the
    report counts those of a steady batch, which the loop means to keep at none.
    """
    torch.cuda.set_sync_debug_mode("warn")
    warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
    show = warnings.showwarning

    def note(message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        if SYNC_WARNING not in str(message):
            show(message, category, filename, lineno, *args, **kwargs)
        elif "loop_start" in _JOB:
            _JOB["host_waits"].append((time.perf_counter() - _JOB["loop_start"], f"{filename}:{lineno}"))

    warnings.showwarning = note


def pipeline_job(overrides: list[str]) -> None:
    """The child: ``vaes4rs.run`` with these Hydra overrides, probed as ``$VAES4RS_THROUGHPUT_JOB`` says."""
    _install_probes(json.loads(os.environ[JOB_SPEC_ENV]))
    from vaes4rs import run

    sys.argv = ["vaes4rs.run", *overrides]
    run.cli()


@dataclass
class JobTrace:
    """One pipeline job as its probes saw it (seconds; batch times relative to the loop's start)."""

    model: str
    dataset: str
    n_images: int
    loop_s: float
    job_s: float
    start: float
    batches: list[tuple[float, float, int]]
    calls: dict[str, list[float]]
    peak_mib: float | None
    out_dir: str
    host_waits: list[tuple[float, str]] | None  # (time in the loop, file:line); None: not counted

    @property
    def images_per_s(self) -> float:
        """What the job itself reports (metrics.json ``timing``): every image over the loop's time."""
        return self.n_images / self.loop_s

    @property
    def first_batch_s(self) -> float:
        """From the loop's start until the first batch's values are read, which is after the
        second batch is queued (workers, cuDNN, compilation)."""
        return self.batches[0][1]

    @property
    def steady_images_per_s(self) -> float | None:
        """img/s after the first batch: what a job of thousands of images runs at."""
        if len(self.batches) < 2:
            return None
        return sum(n for _, _, n in self.batches[1:]) / (self.batches[-1][1] - self.batches[0][1])

    @property
    def outside_loop_s(self) -> float:
        return self.job_s - self.loop_s

    def steady_host_waits(self) -> tuple[float, collections.Counter[str]] | None:
        """Implicit waits for the GPU per batch after the first, and the lines they came from."""
        if self.host_waits is None or len(self.batches) < 2:
            return None
        first, last = self.batches[0][1], self.batches[-1][1]
        sites = collections.Counter(site for at, site in self.host_waits if first < at <= last)
        return sum(sites.values()) / (len(self.batches) - 1), sites


@dataclass
class PipelineRun:
    """One sweep of the real CLI: its jobs, its wall time and the process start-up before the first job."""

    jobs: list[JobTrace]
    wall_s: float
    startup_s: float
    failed: list[str] = field(default_factory=list)

    def job(self, model: str, dataset: str) -> JobTrace | None:
        return next((j for j in self.jobs if (j.model, j.dataset) == (model, dataset)), None)


def run_pipeline(
    label: str,
    workdir: Path,
    model_dirs: Sequence[Path],
    image_roots: Sequence[Path],
    overrides: Sequence[str],
    spec: dict[str, Any],
    timeout_s: float,
    log_dir: Path,
) -> PipelineRun:
    """One Hydra sweep (models x image folders) of ``vaes4rs.run`` in a child process."""
    sweep = workdir / "runs" / label
    shutil.rmtree(sweep, ignore_errors=True)
    trace = workdir / f"{label}.jsonl"
    trace.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        CHILD_COMMAND,
        "-m",
        "model=local",
        "model.path=" + ",".join(str(p) for p in model_dirs),
        "dataset=folder",
        "dataset.root=" + ",".join(str(p) for p in image_roots),
        "metric=paper",
        "metric.missing_weights=error",
        "logger=none",
        "run.progress=false",
        f"hydra.sweep.dir={sweep}",
        *overrides,
    ]
    env = {
        **os.environ,
        JOB_SPEC_ENV: json.dumps({**spec, "trace": str(trace)}),
        "TORCH_HOME": str(workdir / "torch_home"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        # vaes4rs.run's main is called from this module: Hydra finds conf/ beside run.py as under `-m`
        "HYDRA_MAIN_MODULE": "__main__",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_file = log_dir / f"{label}.log"
    launched = time.time()
    with log_file.open("w") as log:
        try:
            status = subprocess.run(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            status = f"killed after --job-timeout-s {timeout_s:.0f}"
    wall = time.time() - launched
    records = [json.loads(line) for line in trace.read_text().splitlines()] if trace.is_file() else []
    failed = [f"{r.get('out_dir')}: {r['error']}" for r in records if "error" in r]
    if status != 0 or failed or not records:
        tail = log_file.read_text()[-3000:]
        failed.append(f"exit status {status}; log {log_file}:\n{tail}")
    jobs = [JobTrace(**{k: r[k] for k in JobTrace.__dataclass_fields__}) for r in records if "error" not in r]
    startup = min((j.start for j in jobs), default=launched) - launched
    return PipelineRun(jobs, wall, startup, failed)


# --- The data path on its own ----------------------------------------------------------------------


def loader_rate(root: Path, batch_size: int, workers: int, pin: bool) -> dict[str, float]:
    """The job's DataLoader alone: seconds to its first batch and img/s after it."""
    cfg = DatasetConfig(name=root.name, source=DatasetSource.folder, root=str(root), num_workers=workers)
    loader = prepare(cfg, batch_size, pin_memory=pin).loader
    start = time.perf_counter()
    stamps = []
    for batch in loader:
        stamps.append((time.perf_counter(), len(batch["records"])))
    first = stamps[0][0] - start
    rest = sum(n for _, n in stamps[1:])
    steady = rest / (stamps[-1][0] - stamps[0][0]) if rest else float("nan")
    return {"first_batch_s": first, "images_per_s": steady}


def jpeg_decoding(root: Path, count: int, device: torch.device) -> dict[str, Any]:
    """Pillow (the loader's decoder, one process) against ``torchvision.io.decode_jpeg`` on ``device``."""
    from torchvision.io import decode_jpeg

    paths = [r.path for r in list_images(root, None, None)[:count]]
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    start = time.perf_counter()
    reference = [torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in paths]
    pil_s = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 points to TorchCodec
        decode_jpeg(encoded[:2], device=device)  # nvJPEG's set-up
        _sync(device)
        start = time.perf_counter()
        decoded = decode_jpeg(encoded, device=device)
        _sync(device)
        device_s = time.perf_counter() - start
    diffs = torch.cat([(d.cpu().int() - r.int()).abs().flatten() for d, r in zip(decoded, reference)])
    return {
        "images": len(paths),
        "pillow_images_per_s": len(paths) / pil_s,
        "decode_jpeg_images_per_s": len(paths) / device_s,
        "decode_jpeg_device": str(device),
        "max_abs_diff": int(diffs.max()),
        "share_of_values_differing": float((diffs > 0).float().mean()),
    }


# --- Eager against compiled results ------------------------------------------------------------------


def _per_image(out_dir: str) -> dict[str, np.ndarray]:
    with (Path(out_dir) / "per_image.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {k: np.asarray([float(r[k]) for r in rows]) for k in PAPER_METRICS[:3] if rows and k in rows[0]}


def metric_shift(eager: JobTrace, compiled: JobTrace) -> dict[str, float]:
    """Compiled minus eager for each paper metric, and the largest per-image difference."""
    metrics = [
        json.loads((Path(j.out_dir) / "metrics.json").read_text())["metrics"] for j in (eager, compiled)
    ]
    shift = {k: metrics[1][k] - metrics[0][k] for k in PAPER_METRICS if k in metrics[0] and k in metrics[1]}
    per_image = [_per_image(j.out_dir) for j in (eager, compiled)]
    for key in per_image[0]:
        shift[f"max_image_{key}"] = float(np.abs(per_image[1][key] - per_image[0][key]).max())
    shift.update({f"eager_{k}": metrics[0][k] for k in PAPER_METRICS if k in metrics[0]})
    return shift


# --- Report ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One model at one image size: cost, floors and pipeline figures as measured."""

    model: str
    size: int
    batch_size: int
    gflops: float
    eager: Floor | None = None
    eager_cudnn_benchmark: Floor | None = None
    compiled: Floor | None = None
    pipeline: dict[str, Any] = field(default_factory=dict)
    compiled_pipeline: dict[str, Any] = field(default_factory=dict)

    def tflops(self, images_per_s: float | None) -> float | None:
        return None if images_per_s is None else images_per_s * self.gflops / 1e3


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _pipeline_figures(job: JobTrace) -> dict[str, Any]:
    return {
        "images_per_s": job.images_per_s,
        "steady_images_per_s": job.steady_images_per_s,
        "first_batch_s": job.first_batch_s,
        "outside_loop_s": job.outside_loop_s,
        "peak_mib": job.peak_mib,
        "n_images": job.n_images,
    }


def eager_table(cases: Sequence[Case], peak: float | None) -> list[str]:
    header = [
        "model",
        "size",
        "batch",
        "GFLOPs/img",
        "pipeline img/s (job)",
        "pipeline img/s (steady)",
        "floor img/s",
        "steady / floor",
        "job / floor",
        "floor TFLOP/s",
        "% bf16 peak",
        "pipeline TFLOP/s",
        "peak GiB floor / job",
    ]
    rows = []
    for c in cases:
        floor = c.eager.images_per_s if c.eager else None
        steady, job = c.pipeline.get("steady_images_per_s"), c.pipeline.get("images_per_s")
        share = _ratio(c.tflops(floor), peak)
        mem = [c.eager.peak_mib if c.eager else None, c.pipeline.get("peak_mib")]
        rows.append(
            [
                c.model,
                str(c.size),
                str(c.batch_size),
                _fmt(c.gflops),
                _fmt(job),
                _fmt(steady),
                _fmt(floor),
                _fmt(_ratio(steady, floor), 2),
                _fmt(_ratio(job, floor), 2),
                _fmt(c.tflops(floor)),
                _fmt(None if share is None else 100 * share),
                _fmt(c.tflops(steady)),
                " / ".join(_fmt(None if m is None else m / 1024) for m in mem),
            ]
        )
    return markdown_table(header, "lrrrrrrrrrrrr", rows)


def compiled_table(cases: Sequence[Case], peak: float | None) -> list[str]:
    header = [
        "model",
        "size",
        "floor eager img/s",
        "floor compiled img/s",
        "compiled / eager",
        "compile s (floor)",
        "pipeline compiled img/s (steady)",
        "pipeline compiled / eager floor",
        "first batch s (job)",
        "compiled TFLOP/s",
        "% bf16 peak",
        "peak GiB",
    ]
    rows = []
    for c in cases:
        if c.compiled is None:
            continue
        eager = c.eager.images_per_s if c.eager else None
        steady = c.compiled_pipeline.get("steady_images_per_s")
        share = _ratio(c.tflops(c.compiled.images_per_s), peak)
        rows.append(
            [
                c.model,
                str(c.size),
                _fmt(eager),
                _fmt(c.compiled.images_per_s),
                _fmt(_ratio(c.compiled.images_per_s, eager), 2),
                _fmt(c.compiled.first_call_s),
                _fmt(steady),
                _fmt(_ratio(steady, eager), 2),
                _fmt(c.compiled_pipeline.get("first_batch_s")),
                _fmt(c.tflops(c.compiled.images_per_s)),
                _fmt(None if share is None else 100 * share),
                _fmt(None if c.compiled.peak_mib is None else c.compiled.peak_mib / 1024),
            ]
        )
    return markdown_table(header, "lrrrrrrrrrrr", rows)


def _steady(values: Sequence[float]) -> list[float]:
    """The values after the first batch's (which carries start-up), or the one there is."""
    return list(values[1:] if len(values) > 1 else values)


# Stage probes inside a batch's submit and finish: (probe key, depth); depth 2 lies inside the
# depth-1 line above it.
SUBMIT_STAGES = (
    ("uint8 -> [-1, 1]", 1),
    ("reconstruct (adapter)", 1),
    ("encode (incl. latent noise)", 2),
    ("decode", 2),
    ("metric suite submit", 1),
    *((f"metric {metric.name}", 2) for metric in METRICS),
)
FINISH_STAGES = (("per_image.csv rows", 1),)


def stage_table(job: JobTrace) -> list[str]:
    """Per-batch means after the first batch (CUDA-synchronised), with their share of a batch's period."""
    # From one submit's start to the next: one submit, the previous batch's finish and the wait.
    starts = [start for start, _, _ in job.batches] + [job.batches[-1][1]]
    period = statistics.mean(_steady([b - a for a, b in zip(starts, starts[1:])]))
    calls = {k: statistics.mean(_steady(v)) for k, v in job.calls.items() if len(v) == len(job.batches)}
    rows = [("data wait + loop bookkeeping", period - calls["submit batch"] - calls["finish batch"])]
    for part, stages, other in (
        ("submit batch", SUBMIT_STAGES, "copy to GPU, latent decode, file stats"),
        ("finish batch", FINISH_STAGES, "wait for the values, finiteness, samples"),
    ):
        rows.append((part, calls[part]))
        rows += [("  " * depth + key, calls[key]) for key, depth in stages if key in calls]
        inside = sum(calls.get(key, 0.0) for key, depth in stages if depth == 1)
        rows.append((f"  other in {part} ({other})", calls[part] - inside))
    rows.append(("batch period", period))
    cells = [[label, _fmt(1e3 * seconds), _fmt(100 * seconds / period)] for label, seconds in rows]
    return markdown_table(["stage", "ms per batch", "% of period"], "lrr", cells)


_OUTSIDE = (
    "pre-flight check",
    "load VAE",
    "load metric networks",
    "finalize metrics",
    "model_stats (GFLOPs)",
    "rewrite per_image.csv",
    "per_class.csv",
    "samples",
    "software versions",
)


def host_waits_table(run: PipelineRun) -> list[str]:
    """Per job: implicit waits for the GPU per steady batch, and the lines that cause most of them."""
    rows = []
    for job in run.jobs:
        counted = job.steady_host_waits()
        if counted is not None:
            per_batch, sites = counted
            where = "; ".join(f"{Path(site).name} x{n}" for site, n in sites.most_common(4))
            rows.append([f"{job.model} {job.dataset}", _fmt(per_batch, 2), where or "none"])
    header = ["job", "waits per batch", "where (file:line x count, steady batches)"]
    return markdown_table(header, "lrl", rows)


def outside_loop_table(run: PipelineRun) -> list[str]:
    rows = [["process start-up (imports, Hydra), once per sweep", _fmt(run.startup_s, 2)]]
    for key in _OUTSIDE:
        if any(key in j.calls for j in run.jobs):
            rows.append([key, _fmt(statistics.mean(sum(j.calls.get(key, [0.0])) for j in run.jobs), 2)])
    rows.append(["job total outside the loop", _fmt(statistics.mean(j.outside_loop_s for j in run.jobs), 2)])
    rows.append(
        [
            "first batch, in the loop (workers, cuDNN, first metric calls)",
            _fmt(statistics.mean(j.first_batch_s for j in run.jobs), 2),
        ]
    )
    return markdown_table(["per job, mean over the sweep", "seconds"], "lr", rows)


SCENARIOS = (
    "pipeline eager",
    "floor eager",
    "floor compiled (KL), eager others",
    "pipeline compiled (KL), eager others",
    "pipeline compiled where measured, eager others",
)


def projection(cases: Sequence[Case], sizes: Sequence[int], startup_s: float) -> dict[str, Any]:
    """Minutes for the study's 14 jobs at the measured rates (models proxied as PROXIES says).

    A pipeline job costs the mean time outside the loop, its first batch (workers, cuDNN, compilation)
    and the rest at the steady rate; a floor job its images at the floor rate (compiled: plus the first
    call). ``startup_s`` is paid once per sweep. A scenario with a rate not measured is None.
    """
    by_key = {(c.model, c.size): c for c in cases}
    outside = [c.pipeline["outside_loop_s"] for c in cases if c.pipeline]
    per_job = statistics.mean(outside) if outside else 0.0
    totals: dict[str, float | None] = dict.fromkeys(SCENARIOS, 0.0)
    for scenario in SCENARIOS:
        if scenario.startswith("pipeline"):
            totals[scenario] = startup_s

    def pipeline_job(figures: dict[str, Any], n_images: int, batch_size: int) -> float | None:
        if not figures.get("steady_images_per_s"):
            return None
        return per_job + figures["first_batch_s"] + (n_images - batch_size) / figures["steady_images_per_s"]

    def floor_job(floor: Floor | None, n_images: int, compiled: bool) -> float | None:
        return None if floor is None else compiled * floor.first_call_s + n_images / floor.images_per_s

    missing = []
    for model in ("sd21", "sdxl", "sd35", "flux1", "flux2", "sana", "qwen"):
        for study_set, n_images, position in STUDY_SETS:
            case = by_key.get((PROXIES.get(model, model), sizes[position]))
            if case is None:
                missing.append(f"{model} on {study_set}")
                continue
            kl = model in KL_MODELS
            eager_job = pipeline_job(case.pipeline, n_images, case.batch_size)
            compiled_job = pipeline_job(case.compiled_pipeline, n_images, case.batch_size)
            seconds = {
                "pipeline eager": eager_job,
                "floor eager": floor_job(case.eager, n_images, False),
                "floor compiled (KL), eager others": (
                    floor_job(case.compiled, n_images, True) if kl else floor_job(case.eager, n_images, False)
                ),
                "pipeline compiled (KL), eager others": compiled_job if kl else eager_job,
                "pipeline compiled where measured, eager others": (
                    compiled_job if case.compiled_pipeline else eager_job
                ),
            }
            for scenario, value in seconds.items():
                total = totals[scenario]
                totals[scenario] = None if total is None or value is None else total + value
    minutes = {k: None if v is None else v / 60 for k, v in totals.items()}
    return {"minutes": minutes, "missing": missing}


def report_lines(
    cases: Sequence[Case],
    card: str,
    peak: float | None,
    sizes: Sequence[int],
    startup_s: float,
    shifts: dict[str, dict[str, float]],
) -> tuple[list[str], dict[str, Any]]:
    """The summary tables, the projection and the targets; and the projection as data."""
    lines = ["", f"## Eager: pipeline against the bare encode+decode ({card})", "", *eager_table(cases, peak)]
    lines += [
        "",
        f"bf16 peak taken as {_fmt(peak)} TFLOP/s (dense, datasheet)." if peak else "No bf16 peak known.",
    ]
    if any(c.compiled for c in cases):
        lines += ["", "## Compiled (torch.compile of encoder and decoder)", "", *compiled_table(cases, peak)]
    if shifts:
        header = ["job", *[f"d{k}" for k in PAPER_METRICS], "max per-image |d| psnr / ssim / lpips"]
        rows = [
            [
                job,
                *(f"{s[k]:+.2e}" if k in s else "n/a" for k in PAPER_METRICS),
                " / ".join(f"{s.get(f'max_image_{k}', float('nan')):.1e}" for k in PAPER_METRICS[:3]),
            ]
            for job, s in shifts.items()
        ]
        lines += ["", "## Paper-protocol metrics, compiled minus eager, same images and weights", ""]
        lines += markdown_table(header, "l" + "r" * (len(header) - 1), rows)
    plan = projection(cases, sizes, startup_s)
    sets = ", ".join(f"{name} {n:,} images at {sizes[i]} px" for name, n, i in STUDY_SETS)
    lines += ["", f"## Projected full study: 7 models x ({sets}), {card}", ""]
    lines += markdown_table(["scenario", "minutes"], "lr", [[k, _fmt(v)] for k, v in plan["minutes"].items()])
    proxied = ", ".join(f"{m} as {p}" for m, p in PROXIES.items() if m != p)
    lines.append(f"({proxied}; {startup_s:.1f} s process start-up once per sweep)")
    if plan["missing"]:
        lines.append(f"(left out, not measured: {', '.join(plan['missing'])})")
    return lines + target_lines(cases, plan), plan


def target_lines(cases: Sequence[Case], plan: dict[str, Any]) -> list[str]:
    """The issue's targets, each with PASS or FAIL and the figures it rests on."""

    def against_floor(c: Case, figures: dict[str, Any]) -> float | None:
        return _ratio(figures.get("steady_images_per_s"), c.eager.images_per_s if c.eager else None)

    low = [
        f"{c.model}@{c.size} {_fmt(r, 2)}"
        for c in cases
        if (r := against_floor(c, c.pipeline)) is None or r < 0.9
    ]
    slow = [
        f"{c.model}@{c.size} {_fmt(r, 2)}"
        for c in cases
        if c.model in KL_MODELS and ((r := against_floor(c, c.compiled_pipeline)) is None or r < 1.5)
    ]
    minutes = plan["minutes"]["pipeline compiled where measured, eager others"]
    study = "PASS" if minutes is not None and minutes <= 25 and not plan["missing"] else "FAIL"

    def verdict(failing: list[str]) -> str:
        return "FAIL " + ", ".join(failing) if failing else "PASS"

    return [
        "",
        "## Targets",
        "",
        f"- pipeline (steady) / eager floor >= 0.9, compile off: {verdict(low)}",
        f"- pipeline compiled / eager floor >= 1.5 for the KL VAEs: {verdict(slow)}",
        f"- projected full study <= 25 min (compiled where measured): {study} ({_fmt(minutes)} min)",
    ]


def load_cases(paths: Sequence[Path]) -> tuple[list[Case], dict[str, Any]]:
    """Cases saved by earlier runs on one card, merged: a later file's measurements replace an earlier's."""
    merged: dict[tuple[str, int], Case] = {}
    saved = [json.loads(path.read_text()) for path in paths]
    cards = {run["card"] for run in saved}
    if len(cards) != 1:
        raise SystemExit(f"the files were measured on different cards ({sorted(cards)}): timings do not mix")
    for run in saved:
        for raw in run["cases"]:
            floors = {
                k: Floor(**raw[k]) if raw[k] else None for k in ("eager", "eager_cudnn_benchmark", "compiled")
            }
            case = Case(**{**raw, **floors})
            kept = merged.setdefault((case.model, case.size), case)
            for name in ("eager", "eager_cudnn_benchmark", "compiled", "pipeline", "compiled_pipeline"):
                if getattr(case, name):
                    setattr(kept, name, getattr(case, name))
    card = cards.pop()
    context = {
        "card": card,
        "peak": next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None),
        "sizes": saved[-1]["args"]["sizes"],
        "startup_s": statistics.mean(run["eager_run"]["startup_s"] for run in saved),
        "shifts": {
            k: v for run in saved for k, v in run.get("metric_shift_compiled_minus_eager", {}).items()
        },
    }
    return list(merged.values()), context


# --- The command --------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v and v != "none"]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--models", type=_names, default=_names("sd21,flux2,sana,qwen"))
    parser.add_argument(
        "--sizes", type=_ints, default=[256, 600], help="square sides; first RESISC45, last AID"
    )
    parser.add_argument(
        "--images", type=_ints, default=[512, 192], help="images per size (multiples of the batch)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--compile-models", type=_names, default=None, help="default: the KL VAEs of --models"
    )
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--cudnn-benchmark-models", type=_names, default=_names("sd21"))
    parser.add_argument("--stage-compile", action="store_true", help="time the loop stages with compile on")
    parser.add_argument(
        "--stage-model", default=None, help="model whose loop stages are timed (default: first)"
    )
    parser.add_argument("--loader-workers", type=_ints, default=[2, 8])
    parser.add_argument(
        "--pipeline-override", action="append", default=[], help="extra Hydra override, repeatable"
    )
    parser.add_argument("--tiny", action="store_true", help="a few channels wide, same depth (CPU plumbing)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card")
    parser.add_argument(
        "--budget-s", type=float, default=0.0, help="skip optional phases past this (0: never)"
    )
    parser.add_argument("--job-timeout-s", type=float, default=600.0)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "outputs" / "throughput" / "work")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "throughput")
    parser.add_argument(
        "--report",
        nargs="+",
        type=Path,
        help="merge saved throughput.json files of one card and print the summary",
    )
    args = parser.parse_args(argv)
    if len(args.images) != len(args.sizes):
        parser.error(f"--images needs one count per size ({len(args.sizes)})")
    if args.compile_models is None:
        args.compile_models = [m for m in args.models if m in KL_MODELS]
    return args


class Benchmark:
    """The phases of one benchmark run, printing as they go and saving after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.device = pick_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.card = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        self.peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in self.card), None)
        self.cases: list[Case] = []
        self.results: dict[str, Any] = {"card": self.card, "dtype": str(self.dtype), "args": vars(args)}
        self.lines: list[str] = []
        args.workdir.mkdir(parents=True, exist_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)

    def say(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def compile_options(self) -> dict[str, Any]:
        """``compile_vae``'s keywords, the same for the floor and the pipeline."""
        a = self.args
        return {"channels_last": a.channels_last, "backend": a.compile_backend, "mode": a.compile_mode}

    def fits(self, what: str, need_s: float) -> bool:
        """Whether ``what`` (about ``need_s`` seconds) ends within --budget-s; says so when it does not."""
        elapsed = time.perf_counter() - self.started
        if self.args.budget_s and elapsed + need_s > self.args.budget_s:
            budget = self.args.budget_s
            self.say(f"skipped {what}: {elapsed:.0f} s elapsed + ~{need_s:.0f} s > --budget-s {budget:.0f}")
            return False
        return True

    def save(self) -> None:
        self.results["cases"] = [asdict(c) for c in self.cases]
        self.results["elapsed_s"] = time.perf_counter() - self.started
        (self.args.out / "throughput.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.args.out / "throughput.md").write_text("\n".join(self.lines) + "\n")

    def roots(self) -> list[Path]:
        a = self.args
        return [write_images(a.workdir / f"img{s}", n, s) for s, n in zip(a.sizes, a.images)]

    def floors(self, roots: Sequence[Path]) -> dict[str, nn.Module]:
        """Build, save and time each model eager; keep the ones to compile."""
        a, kept = self.args, {}
        for model in a.models:
            module = build_model(model, self.device, self.dtype, a.tiny)
            module.save_pretrained(a.workdir / "models" / model)
            for size, root in zip(a.sizes, roots):
                case = Case(model, size, a.batch_size, profile_module(module, size, size).gflops)
                case.eager = time_floor(module, first_batch(root, a.batch_size), a.warmup, a.repeats)
                self.cases.append(case)
                rate = case.eager.images_per_s
                self.say(
                    f"floor eager    {model:6s} {size:4d}: {rate:8.1f} img/s "
                    f"({_fmt(case.tflops(rate))} TFLOP/s, peak {_fmt(case.eager.peak_mib, 0)} MiB)"
                )
                if model in a.cudnn_benchmark_models:
                    torch.backends.cudnn.benchmark = True  # what one line in the job would switch on
                    case.eager_cudnn_benchmark = time_floor(
                        module, first_batch(root, a.batch_size), a.warmup, a.repeats
                    )
                    torch.backends.cudnn.benchmark = False
                    tuned = case.eager_cudnn_benchmark.images_per_s
                    self.say(
                        f"  with torch.backends.cudnn.benchmark: {tuned:8.1f} img/s (x{tuned / rate:.2f})"
                    )
            if model in a.compile_models:
                kept[model] = module
            del module
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.save()
        return kept

    def pipeline(
        self, label: str, models: Sequence[str], roots: Sequence[Path], spec: dict[str, Any]
    ) -> PipelineRun:
        a = self.args
        overrides = [
            f"run.batch_size={a.batch_size}",
            f"run.device={self.device.type}",
            f"model.dtype={a.dtype}",
        ]
        run = run_pipeline(
            label,
            a.workdir,
            [a.workdir / "models" / m for m in models],
            roots,
            [*overrides, *a.pipeline_override],
            spec,
            a.job_timeout_s,
            a.out,
        )
        for failure in run.failed:
            self.say(f"pipeline {label}: FAILED {failure}")
        self.say(
            f"pipeline {label}: {len(run.jobs)} jobs in {run.wall_s:.1f} s (start-up {run.startup_s:.1f} s)"
        )
        for job in run.jobs:
            self.say(
                f"  {job.model:6s} {job.dataset:7s}: {job.images_per_s:7.1f} img/s (job), "
                f"{_fmt(job.steady_images_per_s)} img/s after the first batch ({job.first_batch_s:.2f} s), "
                f"{job.outside_loop_s:.1f} s outside the loop"
            )
        return run

    def compiled(self, kept: dict[str, nn.Module], roots: Sequence[Path]) -> list[str]:
        """Compile each kept model and time it at each size while the budget lasts; the models done."""
        a, done, need_s = self.args, [], 60.0  # a first guess at one compilation, then the last one's
        for model, module in kept.items():
            compile_vae(module, **self.compile_options())
            for size, root in zip(a.sizes, roots):
                if not self.fits(f"compiled floor {model} {size}", need_s):
                    return done
                case = next(c for c in self.cases if (c.model, c.size) == (model, size))
                case.compiled = time_floor(module, first_batch(root, a.batch_size), a.warmup, a.repeats)
                rate = case.compiled.images_per_s
                speedup = _ratio(rate, case.eager.images_per_s if case.eager else None)
                self.say(
                    f"floor compiled {model:6s} {size:4d}: {rate:8.1f} img/s "
                    f"(x{_fmt(speedup, 2)} eager; first call {case.compiled.first_call_s:.1f} s)"
                )
                need_s = case.compiled.first_call_s + (a.warmup + a.repeats) * a.batch_size / rate
            done.append(model)
        self.save()
        return done

    def data_path(self, roots: Sequence[Path]) -> None:
        a, found = self.args, {}
        for size, root in zip(a.sizes, roots):
            for workers in a.loader_workers:
                rate = loader_rate(root, a.batch_size, workers, self.device.type == "cuda")
                found[f"loader {size} workers={workers}"] = rate
                self.say(
                    f"loader {size} px, {workers} workers: {rate['images_per_s']:.0f} img/s after "
                    f"{rate['first_batch_s']:.2f} s to the first batch"
                )
            jpeg = jpeg_decoding(root, a.batch_size, self.device)
            found[f"decode_jpeg {size}"] = jpeg
            self.say(
                f"decode {size} px: Pillow {jpeg['pillow_images_per_s']:.0f} img/s (1 process), "
                f"decode_jpeg on {jpeg['decode_jpeg_device']} {jpeg['decode_jpeg_images_per_s']:.0f} img/s; "
                f"pixels differ by up to {jpeg['max_abs_diff']} "
                f"({100 * jpeg['share_of_values_differing']:.2f} % of values)"
            )
        self.results["data_path"] = found
        self.save()

    def run(self) -> None:
        a = self.args
        tiny = ", TINY configs" if a.tiny else ""
        self.say(f"# Throughput on {self.card} ({self.dtype}), batch {a.batch_size}{tiny}")
        plant_metric_weights(a.workdir / "torch_home")
        roots = self.roots()
        kept = self.floors(roots)
        eager = self.pipeline("eager", a.models, roots, {"count_host_waits": True})
        for job in eager.jobs:
            case = next(c for c in self.cases if (c.model, f"img{c.size}") == (job.model, job.dataset))
            case.pipeline = _pipeline_figures(job)
        self.results["eager_run"] = {
            "wall_s": eager.wall_s,
            "startup_s": eager.startup_s,
            "failed": eager.failed,
        }
        self.save()
        stage_model = a.stage_model or a.models[0]
        per_job = eager.wall_s / max(len(eager.jobs), 1)
        if self.fits("loop stages", eager.startup_s + len(a.sizes) * per_job):
            spec: dict[str, Any] = {"stages": True}
            if a.stage_compile and stage_model in a.compile_models:
                spec["compile"] = self.compile_options()
            stages = self.pipeline("stages", [stage_model], roots, spec)
            self.results["stages"] = {j.dataset: j.calls for j in stages.jobs}
            for job in stages.jobs:
                self.say(
                    "",
                    f"## Where a batch goes: {job.model} at {job.dataset}"
                    f"{' compiled' if 'compile' in spec else ''} (CUDA-synchronised stage timers)",
                    "",
                )
                self.say(*stage_table(job))
        if self.fits("data path", 20.0):
            self.data_path(roots)
        compiled_models = self.compiled(kept, roots) if kept else []
        shifts: dict[str, dict[str, float]] = {}
        compile_s = sum(
            c.compiled.first_call_s for c in self.cases if c.compiled and c.model in compiled_models
        )
        need_s = eager.startup_s + len(compiled_models) * len(a.sizes) * per_job + compile_s / 2
        if compiled_models and self.fits("compiled pipeline", need_s):
            spec = {"compile": self.compile_options()}
            compiled = self.pipeline("compiled", compiled_models, roots, spec)
            for job in compiled.jobs:
                case = next(c for c in self.cases if (c.model, f"img{c.size}") == (job.model, job.dataset))
                case.compiled_pipeline = _pipeline_figures(job)
                reference = eager.job(job.model, job.dataset)
                if reference is not None:
                    shifts[f"{job.model} {job.dataset}"] = metric_shift(reference, job)
            self.results["metric_shift_compiled_minus_eager"] = shifts
        self.report(eager, shifts)
        self.save()

    def report(self, eager: PipelineRun, shifts: dict[str, dict[str, float]]) -> None:
        if eager.jobs:
            self.say("", f"## Outside the loop (eager sweep of {len(eager.jobs)} jobs)", "")
            self.say(*outside_loop_table(eager))
            counted = {f"{j.model} {j.dataset}": w for j in eager.jobs if (w := j.steady_host_waits())}
            if counted:  # on CUDA only
                self.say("", "## Implicit waits for the GPU in the loop (torch.cuda sync debug mode)", "")
                self.say(*host_waits_table(eager))
                self.results["host_waits"] = {job: [n, dict(sites)] for job, (n, sites) in counted.items()}
        lines, plan = report_lines(self.cases, self.card, self.peak, self.args.sizes, eager.startup_s, shifts)
        self.results["projection"] = plan
        self.say(*lines)


def print_report(paths: Sequence[Path]) -> None:
    """The summary of saved runs (``throughput.json``) of one card, merged, printed again."""
    cases, context = load_cases(paths)
    print(f"# Throughput on {context['card']}, merged from {', '.join(str(p) for p in paths)}")
    lines, _ = report_lines(
        cases, context["card"], context["peak"], context["sizes"], context["startup_s"], context["shifts"]
    )
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_COMMAND]:
        pipeline_job(argv[1:])
        return
    args = parse_args(argv)
    if args.report:
        print_report(args.report)
    else:
        Benchmark(args).run()


if __name__ == "__main__":
    main()
