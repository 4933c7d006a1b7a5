"""The real CLI (`python -m vaes4rs.run`) in subprocesses, and config composition."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from tests.conftest import REPO_ROOT, read_per_image, write_rgb
from tests.metric_weights import plant_random_metric_weights
from vaes4rs.config import register_configs, validate
from vaes4rs.data import read_image

register_configs()


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **env}
    return subprocess.run(
        [sys.executable, "-m", "vaes4rs.run", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def wandb_offline_summary(run_file: Path) -> dict[str, str]:
    """Summary items of an offline W&B run, read from its record file.

    wandb >= 0.19 writes offline runs only as protobuf records (no wandb-summary.json). A
    SummaryItem is field 1 ``key`` (tag 0x0a) then field 16 ``value_json`` (tag 0x82 0x01);
    our keys and values are short, so each length is a single byte.
    """
    blob = run_file.read_bytes()
    pattern = re.compile(rb"\n([\x01-\x7f])([A-Za-z0-9_]+)\x82\x01([\x01-\x7f])")
    items = {}
    for match in pattern.finditer(blob):
        key = match.group(2)
        if len(key) != match.group(1)[0]:
            continue
        start = match.end()
        items[key.decode()] = blob[start : start + match.group(3)[0]].decode()
    return items


def test_study_models_compose_with_hub_and_upstream_sources(compose_conf) -> None:
    cfg = validate(compose_conf(["model=qwen", "dataset=aid"]))
    assert (cfg.model.repo, cfg.model.subfolder) == ("BiliSakura/VAEs", "Qwen-VAE")
    assert (cfg.model.upstream_repo, cfg.model.upstream_subfolder) == ("Qwen/Qwen-Image", "vae")
    assert (cfg.dataset.repo, cfg.dataset.subdir, cfg.metric.protocol) == ("blanchon/AID", "data", "paper")
    switched = validate(
        compose_conf(["model=sd21", "model.repo=stabilityai/stable-diffusion-2-1", "model.subfolder=vae"])
    )
    assert (switched.model.name, switched.model.repo, switched.model.subfolder) == (
        "sd21",
        "stabilityai/stable-diffusion-2-1",
        "vae",
    )


def test_local_names_come_from_folders(compose_conf, tmp_path: Path) -> None:
    cfg = validate(
        compose_conf(
            [
                "model=local",
                f"model.path={tmp_path}/VAEs",
                "model.subfolder=FLUX2-VAE",
                "dataset=folder",
                f"dataset.root={tmp_path}/my_scenes",
            ]
        )
    )
    assert (cfg.model.name, cfg.dataset.name) == ("FLUX2-VAE", "my_scenes")


def test_unknown_names_and_bad_values_are_clear_errors(compose_conf) -> None:
    with pytest.raises(MissingConfigException, match=r"(?s)model/sd99.*sd21.*sdxl"):
        compose_conf(["model=sd99"])
    with pytest.raises(Exception, match=r"Error merging override metric.latent=median") as error:
        compose_conf(["metric.latent=median"])
    assert "Invalid value 'median', expected one of [sample, mode]" in str(error.value.__cause__)
    with pytest.raises(Exception, match=r"Could not override 'model.bogus'"):
        compose_conf(["model.bogus=1"])
    with pytest.raises(Exception, match=r"(?s)run.batch_size.*abc"):
        compose_conf(["run.batch_size=abc"])


def study_reference(model_dir: Path, files: list[Path], group: int) -> tuple[float, float]:
    """The study's PSNR/SSIM, computed independently: diffusers + torchmetrics, batch by batch."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir).eval()

    def generator(path: Path) -> torch.Generator:
        """The recorded noise rule: sha256('<seed>:<class>/<file>'), first 8 bytes little-endian, 63 bits."""
        digest = hashlib.sha256(f"42:{path.parent.name}/{path.name}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    psnrs, ssims = [], []
    for start in range(0, len(files), group):
        chunk = files[start : start + group]
        pixels = [torch.from_numpy(read_image(f)).permute(2, 0, 1) for f in chunk]
        x = (torch.stack(pixels).float() / 255 - 0.5) / 0.5
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=[generator(f) for f in chunk])
            recon = vae.decode(z).sample.clamp(-1, 1)
        psnrs.append(PeakSignalNoiseRatio(data_range=2.0)(recon, x).item())
        ssims.append(StructuralSimilarityIndexMeasure(data_range=2.0)(recon, x).item())
    return float(np.mean(psnrs)), float(np.mean(ssims))


def test_single_run_writes_results_equal_to_the_study_definitions(tiny_models: Path, tmp_path: Path) -> None:
    root = tmp_path / "mini"
    for i in range(6):
        write_rgb(root / ("alpha" if i < 4 else "beta") / f"img_{i}.png", 64, 64, seed=i)
    out = tmp_path / "run"
    result = run_cli(
        [
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=SD21-VAE",
            "dataset=folder",
            f"dataset.root={root}",
            "logger=wandb",
            "run.experiment=unit",
            "metric.lpips=false",  # pretrained LPIPS/Inception weights cannot be had offline
            "metric.fid=false",
            "run.device=cpu",
            "run.batch_size=4",
            "metric.pool_size=4",
            "run.n_samples=3",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        WANDB_DIR=str(tmp_path / "wandb_dir"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "metrics.json").read_text())
    assert (payload["model"], payload["dataset"], payload["n_images"]) == ("SD21-VAE", "mini", 6)
    (run_dir,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    summary = wandb_offline_summary(next(run_dir.glob("run-*.wandb")))
    assert float(summary["psnr"]) == pytest.approx(payload["metrics"]["psnr"])
    assert float(summary["ssim"]) == pytest.approx(payload["metrics"]["ssim"])
    (table_file,) = (run_dir / "files" / "media" / "table").glob("per_class_*.table.json")
    per_class_logged = json.loads(table_file.read_text())
    assert per_class_logged["columns"][:2] == ["class", "n_images"]
    assert [row[0] for row in per_class_logged["data"]] == ["alpha", "beta"]
    assert list((run_dir / "files" / "media" / "images").glob("samples_*.png"))
    assert payload["protocol"]["name"] == "paper" and payload["protocol"]["latent"] == "sample"
    assert payload["config"]["model"]["subfolder"] == "SD21-VAE"
    stats = payload["model_stats"]
    assert stats["latent_shape"] == {"64x64": [4, 16, 16], "256x256": [4, 64, 64]}  # 256: the study's size
    assert (stats["spatial_ratio"], stats["latent_channels"]) == (4, 4)
    # 16x the pixels: convolutions cost 16x, the mid-block attention more (quadratic in pixels)
    assert stats["gflops"]["256x256"] > 16 * stats["gflops"]["64x64"] > 0
    files = sorted(root.glob("*/*.png"))
    psnr, ssim = study_reference(tiny_models / "SD21-VAE", files, group=4)
    assert payload["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-4)
    assert payload["metrics"]["ssim"] == pytest.approx(ssim, abs=1e-4)
    table = read_per_image(out / "per_image.csv")
    assert list(table["image_id"]) == [f"{f.parent.name}/{f.name}" for f in files]
    assert {"psnr", "ssim", "mse", "class", "height", "width"} <= set(table)
    per_class = (out / "per_class.csv").read_text().splitlines()
    assert per_class[0].startswith("class,n_images") and per_class[1].startswith("alpha,4,")
    assert (out / "samples.png").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert len(list((out / "samples" / "reconstructions").glob("*.png"))) == 3


def test_two_by_two_sweep_and_a_failing_job(tiny_models: Path, tmp_path: Path) -> None:
    roots = []
    for name, size in (("set_a", 48), ("set_b", 40)):
        for i in range(3):
            write_rgb(tmp_path / name / f"c{i % 2}" / f"{i}.png", size, size, seed=i)
        roots.append(str(tmp_path / name))
    broken = tmp_path / "set_broken"
    (broken / "c0").mkdir(parents=True)
    (broken / "c0" / "x.png").write_bytes(b"not a png")
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=FLUX2-VAE,Qwen-VAE",
            "dataset=folder",
            f"dataset.root={roots[0]},{roots[1]},{broken}",
            "logger=none",
            "metric.lpips=false",
            "metric.fid=false",
            "run.device=cpu",
            "dataset.num_workers=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 job(s) of the sweep failed" in result.stderr
    for model in ("FLUX2-VAE", "Qwen-VAE"):
        for dataset in ("set_a", "set_b"):
            payload = json.loads((sweep / f"{model}-{dataset}" / "metrics.json").read_text())
            assert (payload["model"], payload["dataset"], payload["n_images"]) == (model, dataset, 3)
            assert 0 < payload["metrics"]["psnr"] < 60
        error = json.loads((sweep / f"{model}-set_broken" / "error.json").read_text())
        assert "x.png" in error["error"] and "skip_corrupt" in error["error"]
        assert (error["model"], error["dataset"], error["protocol"]) == (model, "set_broken", "paper")

    made = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "paper-table", f"RESULTS={sweep}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    rows = {row["model"]: row for row in csv.DictReader((sweep / "paper_table.csv").open())}
    for model in ("FLUX2-VAE", "Qwen-VAE"):
        for dataset in ("set_a", "set_b"):
            payload = json.loads((sweep / f"{model}-{dataset}" / "metrics.json").read_text())
            for metric in ("psnr", "ssim"):
                assert float(rows[model][f"{dataset}_{metric}"]) == pytest.approx(payload["metrics"][metric])
    markdown = (sweep / "paper_table.md").read_text()
    assert "FLUX2-VAE on set_broken: PreflightError" in markdown  # failed jobs: N/A, named
    assert 'Protocol "paper"' in markdown


def test_cli_rejects_unknown_model_listing_choices(tmp_path: Path) -> None:
    result = run_cli(["model=sd99", "logger=none"], cwd=tmp_path)
    assert result.returncode != 0
    assert "sd99" in result.stderr and "flux2" in result.stderr and "sana" in result.stderr


def test_repo_conf_is_the_package_conf() -> None:
    assert (REPO_ROOT / "conf" / "config.yaml").is_file()


def test_hub_dataset_config_reads_an_offline_snapshot(tiny_models: Path, tmp_path: Path) -> None:
    """dataset=resisc45 as users run it, from a snapshot in the HF cache, with HF_HUB_OFFLINE=1."""
    from tests.test_data import make_hub_snapshot

    snapshot = make_hub_snapshot(tmp_path / "hf_home", "blanchon/RESISC45")
    for label in ("airplane", "beach"):
        for i in (1, 2):
            write_rgb(snapshot / "data" / label / f"{label}_{i}.jpg", 64, 64, seed=i)
    out = tmp_path / "run"
    result = run_cli(
        [
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=SANA-VAE",
            "dataset=resisc45",
            "dataset.limit_per_class=1",
            "logger=none",
            "metric.lpips=false",
            "metric.fid=false",
            "run.device=cpu",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        HF_HOME=str(tmp_path / "hf_home"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "metrics.json").read_text())
    assert (payload["dataset"], payload["n_images"]) == ("resisc45", 2)
    ids = list(read_per_image(out / "per_image.csv")["image_id"])
    assert ids == ["airplane/airplane_1.jpg", "beach/beach_1.jpg"]


def test_both_protocols_end_to_end_with_every_default_metric(tiny_models: Path, tmp_path: Path) -> None:
    """metric=paper,standard through the CLI with LPIPS, FID and KID on.

    The metric networks are randomly initialised stand-ins planted in a temporary TORCH_HOME
    under the libraries' file names (no download is possible here): this checks the
    plumbing and the records, not the values of trained networks.
    """
    plant_random_metric_weights(tmp_path / "torch_home" / "hub" / "checkpoints")
    root = tmp_path / "pairs"
    for i in range(4):
        write_rgb(root / ("a" if i < 2 else "b") / f"{i}.png", 32, 32, seed=i)
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=SD21-VAE",
            "dataset=folder",
            f"dataset.root={root}",
            "metric=paper,standard",
            "metric.missing_weights=error",
            "logger=none",
            "run.device=cpu",
            "dataset.num_workers=0",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${metric.protocol}",
        ],
        cwd=tmp_path,
        TORCH_HOME=str(tmp_path / "torch_home"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paper = json.loads((sweep / "paper" / "metrics.json").read_text())
    standard = json.loads((sweep / "standard" / "metrics.json").read_text())
    assert {"psnr", "ssim", "lpips", "fid", "fid_n"} <= set(paper["metrics"])
    assert "kid" not in paper["metrics"] and "psnr_ci95_lo" not in paper["metrics"]
    assert {"kid", "kid_std", "psnr_ci95_lo", "psnr_ci95_hi", "lpips_ci95_lo"} <= set(standard["metrics"])
    assert (paper["protocol"]["fid_resize"], standard["protocol"]["fid_resize"]) == ("antialias", "tf1")
    assert standard["metrics"]["fid_n"] == 4 and standard["protocol"]["not_computed"] == {}
    header = (sweep / "standard" / "per_image.csv").read_text().splitlines()[0].split(",")
    assert {"psnr", "ssim", "lpips"} <= set(header)

    def paper_table(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "make",
                "-C",
                str(REPO_ROOT),
                "paper-table",
                f"RESULTS={sweep}",
                f"PYTHON={sys.executable}",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    mixed = paper_table()
    assert mixed.returncode != 0 and "PROTOCOL=" in mixed.stderr + mixed.stdout
    chosen = paper_table("PROTOCOL=standard")
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    row = next(csv.DictReader((sweep / "paper_table.csv").open()))
    assert float(row["pairs_lpips"]) == pytest.approx(standard["metrics"]["lpips"])


@pytest.mark.slow
def test_sweeps_over_protocol_and_a_non_name_key_keep_every_job(tiny_models: Path, tmp_path: Path) -> None:
    for i in range(4):
        write_rgb(tmp_path / "set" / f"c{i % 2}" / f"{i}.png", 32, 32, seed=i)
    sweep = tmp_path / "sweep"
    common = [
        "model=local",
        f"model.path={tiny_models}",
        "model.subfolder=SD21-VAE",
        "dataset=folder",
        f"dataset.root={tmp_path / 'set'}",
        "logger=none",
        "metric.lpips=false",
        "metric.fid=false",
        "run.device=cpu",
        "dataset.num_workers=0",
        f"hydra.sweep.dir={sweep}",
    ]
    result = run_cli(["-m", *common, "metric=paper,standard", "metric.latent=sample,mode"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 job(s) launched, 4 done" in result.stdout + result.stderr
    jobs = {}
    for protocol in ("paper", "standard"):
        for latent in ("sample", "mode"):
            job = sweep / f"SD21-VAE-set__metric={protocol},metric.latent={latent}"
            payload = json.loads((job / "metrics.json").read_text())
            assert (payload["protocol"]["name"], payload["protocol"]["latent"]) == (protocol, latent)
            jobs[job] = (job / "metrics.json").read_text()
    # The same sweep with another fixed setting writes beside the first one's results, never over them.
    again = run_cli(
        ["-m", *common, "metric=paper,standard", "metric.latent=sample,mode", "run.n_samples=2"], cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    for job, text in jobs.items():
        assert (job / "metrics.json").read_text() == text
        beside = job.parent / f"{job.name}-2"
        assert json.loads((beside / "metrics.json").read_text())["config"]["run"]["n_samples"] == 2


@pytest.mark.slow
def test_a_single_run_on_bad_input_says_everything_and_touches_no_other_run(
    tiny_models: Path, tmp_path: Path
) -> None:
    missing = run_cli(
        [
            "model=local",
            f"model.path={tmp_path / 'no_model'}",
            "dataset=folder",
            f"dataset.root={tmp_path / 'no_images'}",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    said = missing.stdout + missing.stderr
    assert missing.returncode == 2
    assert "cannot start" in said and "no_model" in said and "no_images" in said
    assert "Traceback" not in said
    for i in range(2):
        write_rgb(tmp_path / "set" / "c" / f"{i}.png", 32, 32, seed=i)
    args = [
        "model=local",
        f"model.path={tiny_models}",
        "model.subfolder=SD21-VAE",
        "dataset=folder",
        f"dataset.root={tmp_path / 'set'}",
        "logger=none",
        "metric.lpips=false",
        "metric.fid=false",
        "run.device=cpu",
        "dataset.num_workers=0",
        f"hydra.run.dir={tmp_path / 'done'}",
    ]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = (tmp_path / "done" / "metrics.json").read_text()
    refused = run_cli([*args, "metric=standard"], cwd=tmp_path)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "holds results of another config" in said
    assert "metric.protocol: 'paper' -> 'standard'" in said
    assert (tmp_path / "done" / "metrics.json").read_text() == before
    assert not (tmp_path / "done" / "error.json").exists()


@pytest.mark.slow
def test_a_sweep_through_the_submitit_launcher_feeds_the_paper_table(
    tiny_models: Path, tmp_path: Path
) -> None:
    """hydra/launcher=local is submitit's local executor: each job in its own process, as on SLURM."""
    for i in range(2):
        write_rgb(tmp_path / "set" / "c" / f"{i}.png", 32, 32, seed=i)
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "hydra/launcher=local",
            "model=local",
            f"model.path={tiny_models}",
            "model.subfolder=SD21-VAE,FLUX2-VAE",
            "dataset=folder",
            f"dataset.root={tmp_path / 'set'}",
            "logger=none",
            "metric.lpips=false",
            "metric.fid=false",
            "run.device=cpu",
            "dataset.num_workers=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((sweep / ".submitit").iterdir())  # the jobs went through submitit
    made = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "paper-table", f"RESULTS={sweep}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    rows = {row["model"]: row for row in csv.DictReader((sweep / "paper_table.csv").open())}
    for model in ("SD21-VAE", "FLUX2-VAE"):
        payload = json.loads((sweep / f"{model}-set" / "metrics.json").read_text())
        assert float(rows[model]["set_psnr"]) == pytest.approx(payload["metrics"]["psnr"])
