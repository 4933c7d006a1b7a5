"""The report's optional columns (CMMD, the probe), the do-nothing baseline row of degraded runs and
their W&B mirror, from metrics.json and per_class.csv files written by hand in the runs' layout."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from vaes4rs import files, results, tracking
from vaes4rs.report import collect, columns, html_report, labels, render, table, table_files

STATS = {"gflops": {columns.GFLOPS_SIZE: 10.0}, "spatial_ratio": 8, "latent_channels": 4}
BASELINE_LABEL = "Do nothing (degraded input)"


def write_job(
    root: Path,
    model: str,
    dataset: str,
    metrics: dict[str, float],
    *,
    protocol: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    per_class: list[dict[str, Any]] | None = None,
) -> Path:
    """A finished job's metrics.json (and per_class.csv when given); ``extra`` adds top-level keys."""
    job = root / f"{model}-{dataset}"
    job.mkdir(parents=True)
    payload = {
        "model": model,
        "dataset": dataset,
        "protocol": {"name": "standard", "not_computed": {}, **(protocol or {})},
        "n_images": 40,
        "n_skipped": 0,
        "metrics": metrics,
        "model_stats": STATS,
        "finished_at": "2026-11-27T10:00:00+00:00",
        **(extra or {}),
    }
    (job / files.RESULT_FILE).write_text(json.dumps(payload))
    if per_class:
        with (job / files.PER_CLASS_FILE).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(per_class[0]))
            writer.writeheader()
            writer.writerows(per_class)
    return job


def markdown_rows(text: str) -> dict[str, list[str]]:
    """The first markdown grid's rows by label (header included, under "Model")."""
    lines = [line for line in text.split("\n\n")[1].splitlines() if not line.startswith("|--")]
    cells = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return {row[0]: row[1:] for row in cells}


CORE = {"psnr": 30.0, "ssim": 0.8, "lpips": 0.2, "fid": 5.0}


def test_cmmd_and_probe_columns_appear_when_a_job_has_them(tmp_path: Path):
    plain = tmp_path / "plain"
    write_job(plain, "sd21", "aid", CORE)
    write_job(plain, "flux2", "aid", CORE)
    assert table.build_table(collect.select(plain)).metric_columns == list(columns.METRIC_COLUMNS)

    root = tmp_path / "with"
    probe = {"probe_acc": 0.9, "probe_acc_recon": 0.85, "probe_drop": 0.05, "probe_acc_fit_recon": 0.8}
    write_job(root, "sd21", "aid", {**CORE, "cmmd": 0.1234, **probe}, protocol={"probe": "resnet50"})
    reason = "a probe needs at least 2 classes, got 1"
    write_job(
        root,
        "flux2",
        "aid",
        {**CORE, "cmmd": 0.4567},
        protocol={"probe": "resnet50", "not_computed": {"probe": reason}},
    )
    paper = table.build_table(collect.select(root))
    shown = [c.key for c in paper.metric_columns]
    assert shown == [
        "psnr",
        "ssim",
        "lpips",
        "fid",
        "cmmd",
        "probe_acc_recon",
        "probe_drop",
        "probe_acc_fit_recon",
    ]
    rows = markdown_rows(table_files.to_markdown(paper))
    header = rows["Model"]
    at = {name: header.index(name) for name in ("CMMD↓ AID", "Probe acc. recon↑ AID", "Probe drop↓ AID")}
    sd21, flux2 = rows[labels.model_label("sd21")], rows[labels.model_label("flux2")]
    assert sd21[at["CMMD↓ AID"]] == "**0.123**" and flux2[at["CMMD↓ AID"]] == "<u>0.457</u>"
    assert sd21[at["Probe acc. recon↑ AID"]] == "0.850"  # one value: nothing to rank it against
    assert flux2[at["Probe drop↓ AID"]] == "N/A"
    where = f"{labels.model_label('flux2')} on {labels.dataset_label('aid')}"
    assert (
        f"N/A: Probe acc. recon ({where}); Probe drop ({where}); Probe acc. fit on recon ({where}) "
        f"not computed: {reason}."
    ) in paper.footnote
    assert any(line.startswith("CMMD: MMD^2 x 1000") for line in paper.footnote)
    assert any("Accuracy on the held-out originals: AID 0.900." in line for line in paper.footnote)
    csv_rows = {row["model"]: row for row in csv.DictReader(io.StringIO(table_files.to_csv(paper)))}
    assert float(csv_rows["sd21"]["aid_cmmd"]) == 0.1234 and csv_rows["flux2"]["aid_probe_drop"] == ""
    assert r"\multicolumn{1}{c}{CMMD$\downarrow$}" in table_files.to_latex(paper)
    assert 'colspan="1">Probe drop↓</th>' in render.html_grid(paper, paper.rows())


def test_a_probe_switched_off_is_said_so(tmp_path: Path):
    write_job(
        tmp_path, "sd21", "aid", {**CORE, "probe_acc_recon": 0.7, "probe_drop": 0.1}, protocol={"probe": "x"}
    )
    write_job(tmp_path, "flux2", "aid", CORE, protocol={"probe": None})
    paper = table.build_table(collect.select(tmp_path))
    where = f"{labels.model_label('flux2')} on {labels.dataset_label('aid')}"
    assert f"N/A: Probe acc. recon ({where}); Probe drop ({where}) switched off (metric.probe=null)." in (
        paper.footnote
    )


def degraded_root(root: Path) -> Path:
    degradation = {"blur_sigma": 1.5, "noise_sigma": 0.02, "jpeg_quality": None, "reference": "clean"}
    baseline = {
        "label": "degraded input",
        "metrics": {"psnr": 24.5, "psnr_ci95_lo": 24.0, "psnr_ci95_hi": 25.0, "ssim": 0.9, "lpips": 0.05},
    }
    rows = [{"class": "beach", "n_images": 20, "psnr": 29.0, "cmmd": 0.2, "input_psnr": 24.0}]
    for model, psnr, lpips in (("sd21", 30.0, 0.2), ("flux2", 31.0, 0.1)):
        write_job(
            root,
            model,
            "aid",
            {**CORE, "psnr": psnr, "lpips": lpips},
            extra={"baseline": baseline, "degradation": degradation},
            per_class=rows,
        )
    return root


def test_the_do_nothing_baseline_is_its_own_unranked_row(tmp_path: Path):
    paper = table.build_table(collect.select(degraded_root(tmp_path)))
    rows = markdown_rows(table_files.to_markdown(paper))
    assert list(rows)[-1] == BASELINE_LABEL
    header, baseline = rows["Model"], rows[BASELINE_LABEL]
    n_stats = len(columns.STAT_COLUMNS)
    assert baseline[:n_stats] == [""] * n_stats  # no model: no GFLOPs, ratio or channels
    assert baseline[header.index("PSNR↑ AID")] == "24.50 [24.00, 25.00]"
    # the baseline's LPIPS (0.05) beats both models, but it is never ranked: the models keep their marks
    assert baseline[header.index("LPIPS↓ AID")] == "0.050"
    assert rows[labels.model_label("flux2")][header.index("LPIPS↓ AID")] == "**0.100**"
    assert baseline[header.index("FID↓ AID")] == "N/A"
    assert (
        "Inputs degraded before the VAE (every job): blur_sigma=1.5, noise_sigma=0.02, jpeg_quality=None, "
        "reference=clean." in paper.footnote
    )
    assert any(line.startswith(f"{BASELINE_LABEL}: the degraded input itself") for line in paper.footnote)
    csv_rows = {row["model"]: row for row in csv.DictReader(io.StringIO(table_files.to_csv(paper)))}
    assert csv_rows[table.BASELINE_ROW]["label"] == BASELINE_LABEL
    assert float(csv_rows[table.BASELINE_ROW]["aid_psnr"]) == 24.5
    assert float(csv_rows[table.BASELINE_ROW]["aid_psnr_ci95_lo"]) == 24.0
    assert csv_rows[table.BASELINE_ROW]["gflops"] == ""
    assert rf"\midrule {BASELINE_LABEL} &" in table_files.to_latex(paper)
    assert f'<tr class="reference"><td>{BASELINE_LABEL}</td>' in render.html_grid(paper, paper.rows())
    # the difference table compares models with published numbers: no baseline row there
    assert all(not row.reference for row in paper.diff_rows())


def test_html_report_shows_the_baseline_row_and_bars(tmp_path: Path):
    selection = collect.select(degraded_root(tmp_path))
    page = html_report.render(selection, table.build_table(selection))
    assert f'<tr class="reference"><td>{BASELINE_LABEL}</td>' in page
    assert collect.BASELINE_PREFIX == results.BASELINE_PREFIX  # the report reads what runs write
    series = html_report._series(selection, "aid")
    assert [label for label, _, _ in series] == [
        labels.model_label("sd21"),
        labels.model_label("flux2"),
        BASELINE_LABEL,
    ]
    chart = html_report.per_class_chart(selection, "aid")
    assert [ax.get_xlabel().split(" (")[0] for ax in chart.axes] == ["PSNR", "CMMD"]
    bars = chart.axes[0].patches
    assert [bar.get_width() for bar in bars] == [29.0, 29.0, 24.0]  # the last bar: input_psnr


class FakeRun:
    """What WandbTracker uses of a wandb run: a summary mapping and log()."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {}
        self.logged: list[dict[str, Any]] = []

    def log(self, values: dict[str, Any]) -> None:
        self.logged.append(values)


def test_wandb_gets_nested_values_by_path_and_empty_cells_as_missing(tmp_path: Path):
    tracker = tracking.WandbTracker(tracking.LoggerConfig())
    tracker.run = FakeRun()
    tracker.log_summary({"cmmd": 0.25, "baseline": {"psnr": 24.5, "ssim": 0.9}, "n_images": 40})
    assert tracker.run.summary == {"cmmd": 0.25, "baseline/psnr": 24.5, "baseline/ssim": 0.9, "n_images": 40}
    path = tmp_path / files.PER_CLASS_FILE
    path.write_text("class,n_images,psnr,probe_acc_recon\nbeach,3,30.5,0.5\nport,1,29.0,\n")
    tracker.log_csv_table("per_class", path)
    logged = tracker.run.logged[0]["per_class"]
    assert logged.columns == ["class", "n_images", "psnr", "probe_acc_recon"]
    assert logged.data == [["beach", 3.0, 30.5, 0.5], ["port", 1.0, 29.0, None]]


@pytest.mark.parametrize("text, expected", [("", None), ("1.5", 1.5), ("n/a", "n/a")])
def test_table_cells(text, expected):
    assert tracking.table_cell(text) == expected


def test_degraded_jobs_are_named_when_not_every_job_was_degraded(tmp_path: Path):
    write_job(tmp_path, "sd21", "aid", CORE, extra={"degradation": {"blur_sigma": 2.0, "reference": "input"}})
    write_job(tmp_path, "flux2", "aid", CORE)
    paper = table.build_table(collect.select(tmp_path))
    where = f"{labels.model_label('sd21')} on {labels.dataset_label('aid')}"
    assert f"Inputs degraded before the VAE ({where}): blur_sigma=2.0, reference=input." in paper.footnote
    assert not paper.baseline_label and all(not row.reference for row in paper.rows())  # no baseline scored
