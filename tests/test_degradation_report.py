"""Degradation report from hand-made metrics.json files, and the degradation presets' composition."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CONF_DIR
from vaes4rs.config import DegradeConfig, register_configs, validate
from vaes4rs.degrade import describe
from vaes4rs.report import degradation

# (model, kind, strength) -> the model's metrics; the baseline depends on (kind, strength) only
MODEL_METRICS = {
    ("sd21", "noise", 0.1): {"psnr": 24.5, "ssim": 0.61, "lpips": 0.21, "fid": 12.25},
    ("sd21", "noise", 0.2): {"psnr": 21.75, "ssim": 0.48, "lpips": 0.33, "fid": 30.5},
    ("flux2", "noise", 0.1): {"psnr": 22.125, "ssim": 0.55, "lpips": 0.18, "fid": 8.0},
    ("flux2", "noise", 0.2): {"psnr": 18.0625, "ssim": 0.41, "lpips": 0.29, "fid": 21.0},
    ("flux2", "haze", 0.3): {"psnr": 15.5, "ssim": 0.81, "lpips": 0.12, "fid": 4.75},
}
BASELINE = {
    ("noise", 0.1): {"psnr": 20.0, "ssim": 0.42, "lpips": 0.45, "fid": 60.0},
    ("noise", 0.2): {"psnr": 14.0, "ssim": 0.25, "lpips": 0.71, "fid": 140.0},
    ("haze", 0.3): {"psnr": 15.25, "ssim": 0.83, "lpips": 0.11, "fid": 5.5},
}
DEGRADATIONS = {
    ("noise", 0.1): {"noise_sigma": 0.1, "label": "noise σ=0.1", "strength_axis": "noise sigma"},
    ("noise", 0.2): {"noise_sigma": 0.2, "label": "noise σ=0.2", "strength_axis": "noise sigma"},
    ("haze", 0.3): {"haze_t": 0.7, "label": "haze 0.3 (t=0.7, A=1)", "strength_axis": "haze density 1 - t"},
}


def payload(
    model: str, kind: str, strength: float, protocol: str = "standard", **extra: Any
) -> dict[str, Any]:
    """A metrics.json as a degradation run writes it (only the keys the report reads, and a few more)."""
    metrics = dict(MODEL_METRICS[(model, kind, strength)])
    metrics["psnr_ci95_lo"], metrics["psnr_ci95_hi"] = metrics["psnr"] - 0.5, metrics["psnr"] + 0.25
    metrics["fid_n"] = 120
    return {
        "model": model,
        "dataset": "resisc45",
        "protocol": {"name": protocol, "reference": "clean"},
        "n_images": 120,
        "degradation": {"active": True, "kind": kind, "strength": strength, **DEGRADATIONS[(kind, strength)]},
        "metrics": metrics,
        "baseline": {"label": "degraded input", "metrics": dict(BASELINE[(kind, strength)])},
        "finished_at": "2026-12-01T10:00:00+00:00",
        **extra,
    }


def write(root: Path, name: str, content: dict[str, Any] | str) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for model, kind, strength in MODEL_METRICS:
        write(root, f"{model}-{kind}-{strength}", payload(model, kind, strength))
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_holds_every_file_number_once(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert degradation.main([str(results), "--out", str(out)]) == 0
    rows = read_csv(out / "degradation.csv")
    expected = {}
    for (model, kind, strength), metrics in MODEL_METRICS.items():
        for name, value in metrics.items():
            expected[(model, model, kind, strength, name)] = value
        for name, value in BASELINE[(kind, strength)].items():
            expected[("degraded input", model, kind, strength, name)] = value
    found = {
        (r["series"], r["model"], r["kind"], float(r["strength"]), r["metric"]): float(r["value"])
        for r in rows
    }
    assert found == expected
    assert len(rows) == len(expected)
    sd21 = next(
        r
        for r in rows
        if (r["series"], r["kind"], r["strength"], r["metric"]) == ("sd21", "noise", "0.2", "psnr")
    )
    assert (float(sd21["ci95_lo"]), float(sd21["ci95_hi"])) == (21.25, 22.0)
    assert (
        sd21["degradation"] == "noise σ=0.2"
        and sd21["dataset"] == "resisc45"
        and sd21["protocol"] == "standard"
    )
    assert next(r for r in rows if r["metric"] == "ssim")["ci95_lo"] == ""
    with Image.open(out / "degradation.png") as image:
        assert image.width > 200 and image.height > 200
    assert (out / "degradation.pdf").read_bytes().startswith(b"%PDF")


def test_figure_plots_the_files_values(results: Path) -> None:
    runs = degradation.collect(results)
    fig = degradation.build_figure(runs)
    axes = fig.axes
    assert len(axes) == 2 * 4  # rows noise and haze (study order), panels psnr, ssim, lpips, fid
    noise_fid = axes[3]
    assert noise_fid.get_title() == "FID ↓" and "noise" in axes[0].get_ylabel()
    solid = [line for line in noise_fid.get_lines() if line.get_linestyle() == "-"]  # study order: SD21 first
    assert [list(line.get_ydata()) for line in solid] == [[12.25, 30.5], [8.0, 21.0]]
    assert [list(line.get_xdata()) for line in solid] == [[0.1, 0.2], [0.1, 0.2]]
    dashed = [line for line in noise_fid.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [60.0, 140.0]
    assert list(dashed[0].get_xdata()) == [0.1, 0.2]
    haze_psnr = axes[4]
    assert [list(line.get_ydata()) for line in haze_psnr.get_lines()] == [[15.5], [15.25]]


def test_malformed_files_are_skipped_with_a_warning_naming_them(
    results: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [
        write(results, "truncated", '{"model": "sd21", "metrics": {'),
        write(results, "a-list", "[1, 2]"),
        write(results, "no-model", {k: v for k, v in payload("sd21", "noise", 0.1).items() if k != "model"}),
        write(results, "text-metric", {**payload("sd21", "noise", 0.1), "metrics": {"psnr": "high"}}),
        write(results, "no-kind", {**payload("sd21", "noise", 0.1), "degradation": {"strength": 0.1}}),
    ]
    with caplog.at_level(logging.WARNING, logger="vaes4rs.report.degradation"):
        runs = degradation.collect(results)
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in bad:
        assert str(path) in warned
    rows = read_csv(degradation.write_csv(runs, tmp_path / "degradation.csv"))
    assert {r["file"] for r in rows} == {str(p) for p in results.rglob("metrics.json")} - {
        str(p) for p in bad
    }


def test_runs_that_are_not_single_degradations_against_clean_are_left_out(
    results: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clean = {k: v for k, v in payload("sd21", "noise", 0.1).items() if k not in ("degradation", "baseline")}
    write(results, "clean", clean)
    against_input = payload("sd21", "noise", 0.1)
    against_input["protocol"]["reference"] = "input"
    write(results, "against-input", against_input)
    combined = payload("sd21", "noise", 0.1)
    combined["degradation"].update(kind="haze+noise", strength=None)
    write(results, "combined", combined)
    with caplog.at_level(logging.WARNING, logger="vaes4rs.report.degradation"):
        runs = degradation.collect(results)
    assert len(runs) == len(MODEL_METRICS)
    assert not any(run.path.parent.name in ("clean", "against-input", "combined") for run in runs)
    assert "metric.reference=input" in caplog.text and "haze+noise" in caplog.text


def test_the_newer_of_two_results_for_one_point_wins(results: Path, caplog: pytest.LogCaptureFixture) -> None:
    rerun = payload("sd21", "noise", 0.1, finished_at="2026-12-02T09:00:00+00:00")
    rerun["metrics"]["psnr"] = 25.0
    newer = write(results, "sd21-resisc45-rerun", rerun)
    with caplog.at_level(logging.WARNING, logger="vaes4rs.report.degradation"):
        runs = degradation.collect(results)
    point = next(r for r in runs if (r.model, r.kind, r.strength) == ("sd21", "noise", 0.1))
    assert point.path == newer and point.metrics["psnr"].value == 25.0
    assert "same point" in caplog.text


def test_baselines_that_disagree_are_averaged_with_a_warning(
    results: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = payload("flux2", "noise", 0.1)
    other["baseline"]["metrics"]["psnr"] = 21.0
    write(results, "flux2-noise-0.1", other)  # replaces flux2's noise 0.1 file
    runs = [r for r in degradation.collect(results) if r.kind == "noise"]
    with caplog.at_level(logging.WARNING, logger="vaes4rs.report.degradation"):
        curve = degradation.baseline_curve(runs, "psnr")
    assert curve == [(0.1, 20.5), (0.2, 14.0)]
    assert "differs between files" in caplog.text
    assert degradation.baseline_curve(runs, "ssim") == [(0.1, 0.42), (0.2, 0.25)]


def test_several_protocols_need_a_choice(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write(results, "paper-run", payload("sd21", "noise", 0.1, protocol="paper"))
    assert degradation.main([str(results), "--out", str(tmp_path / "out")]) == 2
    assert "--protocol" in capsys.readouterr().err
    assert len(degradation.collect(results, "paper")) == 1
    assert len(degradation.collect(results, "standard")) == len(MODEL_METRICS)
    assert degradation.main([str(tmp_path / "empty-dir-missing")]) == 2


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("degradation_study", {("noise", 0.1), ("noise", 0.2), ("haze", 0.3), ("haze", 0.5)}),
        (
            "degradation_sweep",
            {(kind, s) for kind in ("noise",) for s in (0.05, 0.1, 0.2)}
            | {("haze", s) for s in (0.3, 0.5, 0.7)}
            | {("blur", s) for s in (1.0, 2.0, 4.0)}
            | {("downsample", s) for s in (2.0, 4.0, 8.0)}
            | {("jpeg", s) for s in (75.0, 50.0, 25.0)},
        ),
    ],
)
def test_presets_compose_and_sweep_one_degradation_per_job(
    experiment: str, expected: set[tuple[str, float]]
) -> None:
    """The preset composes with a model and dataset; its sweep expands, as Hydra's basic sweeper
    parses it, into one job per degradation, each merged into the defaults (nothing else degraded)."""
    register_configs()
    base = [
        f"+experiment={experiment}",
        "model=taef2",
        "dataset=folder",
        "dataset.root=/data/rs",
        "logger=none",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        params = compose("config", overrides=base, return_hydra_config=True).hydra.sweeper.params
        assert list(params) == ["dataset.degrade"]
        (override,) = OverridesParser.create().parse_overrides(
            [f"dataset.degrade={params['dataset.degrade']}"]
        )
        assert override.is_sweep_override()
        first = next(iter(override.sweep_string_iterator()))
        job = validate(compose("config", overrides=[*base, f"dataset.degrade={first}"]))
    assert job.metric.protocol == "standard" and job.metric.reference == "clean"
    assert job.model.name == "taef2" and job.dataset.root == "/data/rs"
    values = list(override.sweep_iterator())
    degrades = [OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DegradeConfig), v)) for v in values]
    assert job.dataset.degrade == degrades[0]
    jobs = {(d["kind"], round(d["strength"], 9)) for d in map(describe, degrades)}
    assert len(values) == len(expected) and jobs == expected
