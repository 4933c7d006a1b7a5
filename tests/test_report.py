"""vaes4rs.report on synthetic result folders written in the real layout (no model runs)."""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.axes import Axes
from PIL import Image

from vaes4rs import files
from vaes4rs.report import collect, columns, figure, html_report, labels, table, table_files
from vaes4rs.report.__main__ import main
from vaes4rs.report.published import read_published

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "experiments" / "paper" / "published.csv"
MODELS = ["flux2", "custom", "sd21", "qwen", "sana"]  # deliberately not in table order
DATASETS = ["aid", "resisc45"]
CLASSES = ["airplane", "beach", "forest"]
SIDES = {"aid": 48, "resisc45": 32, "ucmerced": 32, "mine": 16}
STATS = {
    "sd21": (894.91, 8, 4),
    "flux2": (895.71, 8, 32),
    "qwen": (1143.88, 8, 16),
    "sana": (846.76, 32, 32),
    "custom": (12.5, 4, 8),
    "taef2": (66.39, 8, 32),
}


def metric_values(seed: int) -> dict[tuple[str, str], dict[str, float]]:
    """Distinct values at printed precision, in a random order per column."""
    rng = np.random.default_rng(seed)
    values: dict[tuple[str, str], dict[str, float]] = {}
    for dataset in DATASETS:
        for column in columns.METRIC_COLUMNS:
            step = 10.0 ** -(column.decimals - 1)
            for rank, model in zip(rng.permutation(len(MODELS)), MODELS):
                value = float(1.0 + step * (rank + 1) + rng.uniform(0, 0.1) * step)
                values.setdefault((model, dataset), {})[column.key] = value
    return values


def write_job(
    root: Path,
    model: str,
    dataset: str,
    metrics: dict[str, object],
    *,
    protocol: str = "paper",
    finished_at: str | None = None,
    n_images: int = 60,
    samples: bool = True,
    protocol_fields: dict[str, object] | None = None,
    dataset_config: dict[str, object] | None = None,
) -> Path:
    """One finished job: metrics.json, per_class.csv and lossless sample PNGs.

    ``protocol_fields`` are added to metrics.json's protocol (e.g. ``not_computed``),
    ``dataset_config`` to its resolved ``config.dataset`` (e.g. ``source``).
    """
    job = root / f"{model}-{dataset}"
    job.mkdir(parents=True)
    gflops, ratio, channels = STATS[model]
    side = SIDES[dataset]
    payload = {
        "model": model,
        "dataset": dataset,
        "protocol": {
            "name": protocol,
            "latent": "sample",
            "seed": 42,
            "pool_size": 64,
            "psnr": True,
            **(protocol_fields or {}),
        },
        "n_images": n_images,
        "n_skipped": 0,
        "metrics": metrics,
        "model_stats": {
            "class": "AutoencoderKL",
            "params": 1000,
            "spatial_multiple": ratio,
            "latent_shape": {f"{side}x{side}": [channels, side // ratio, side // ratio]},
            "gflops": {"256x256": gflops, f"{side}x{side}": gflops / 10},
            "spatial_ratio": ratio,
            "latent_channels": channels,
        },
        "timing": {"seconds": 1.0, "images_per_second": 60.0},
        "versions": {},
        "config": {"model": {"name": model}, "dataset": {"name": dataset, **(dataset_config or {})}},
    }
    if finished_at:
        payload["finished_at"] = finished_at
    (job / "metrics.json").write_text(json.dumps(payload))
    with (job / "per_class.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "n_images", "mse", "psnr", "ssim", "lpips"])
        for i, name in enumerate(CLASSES):
            writer.writerow([name, 20, 0.01, 25 + i + len(model) / 10, 0.8 + i / 50, 0.1 - i / 100])
    if samples:
        rng = np.random.default_rng(sum(map(ord, dataset)))
        for directory in ("originals", "reconstructions"):
            (job / "samples" / directory).mkdir(parents=True)
        for name in CLASSES:
            for i in range(3):
                key = f"{name}__{name}_{i:03d}"
                original = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                noise = np.random.default_rng(len(model) + i).integers(-20, 20, original.shape)
                recon = np.clip(original.astype(int) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(original).save(job / "samples" / "originals" / f"{key}.png")
                Image.fromarray(recon).save(job / "samples" / "reconstructions" / f"{key}.png")
    return job


def write_failure(root: Path, model: str, dataset: str, protocol: str = "paper") -> Path:
    job = root / f"{model}-{dataset}"
    (job / ".hydra").mkdir(parents=True)
    (job / "error.json").write_text(
        json.dumps({"job": job.name, "error": "RuntimeError: boom", "traceback": ""})
    )
    config = {"model": {"name": model}, "dataset": {"name": dataset}, "metric": {"protocol": protocol}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return job


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], dict[str, float]]]:
    """Five models x two datasets: qwen/aid never ran, sana/aid failed, sd21/resisc45 has no FID."""
    root = tmp_path_factory.mktemp("results") / "sweep"
    values = metric_values(seed=0)
    del values["qwen", "aid"], values["sana", "aid"]
    del values["sd21", "resisc45"]["fid"]
    for (model, dataset), metrics in values.items():
        ci = {"psnr_ci95": [0.0, 1.0], "note": "text", "converged": True}
        write_job(root, model, dataset, {**metrics, **ci}, finished_at="2026-01-02T00:00:00")
    write_failure(root, "sana", "aid")
    # an older run of one cell with other numbers: the newest must win
    stale = {key: 99.0 for key in ("psnr", "ssim", "lpips", "fid")}
    write_job(root / "older", "flux2", "aid", stale, finished_at="2026-01-01T00:00:00")
    return root, values


def markdown_cells(text: str) -> dict[str, list[str]]:
    """Model label -> cells of the first markdown table."""
    rows = {}
    for line in text.split("\n\n")[1].splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def latex_cells(text: str) -> dict[str, list[str]]:
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    rows = {}
    for line in body.strip().splitlines():
        cells = [cell.strip() for cell in line.removesuffix(r"\\").split("&")]
        rows[cells[0]] = cells[1:]
    return rows


def expected_marks(values: dict[tuple[str, str], dict[str, float]], dataset: str, column) -> dict[str, str]:
    present = {m: v[column.key] for (m, d), v in values.items() if d == dataset and column.key in v}
    order = sorted(present, key=present.get, reverse=column.higher_is_better)
    return {order[0]: "best", order[1]: "second"}


def test_table_cells_marks_and_gaps(sweep):
    root, values = sweep
    paper = table.build_table(collect.select(root))
    assert paper.models == ["sd21", "flux2", "sana", "qwen", "custom"]
    assert paper.datasets == ["resisc45", "aid"]
    md_rows = markdown_cells(table_files.to_markdown(paper))
    tex_rows = latex_cells(table_files.to_latex(paper))
    md_wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
    tex_wrap = {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}", "": "{}"}
    n_stats = len(columns.STAT_COLUMNS)
    for model in paper.models:
        label = labels.model_label(model)
        gflops, ratio, channels = STATS[model]
        assert md_rows[label][:n_stats] == [f"{gflops:.2f}", str(ratio), str(channels)]
        assert tex_rows[label][:n_stats] == md_rows[label][:n_stats]
        for i, (column, dataset) in enumerate(paper.columns):
            value = values.get((model, dataset), {}).get(column.key)
            if value is None:
                assert md_rows[label][n_stats + i] == tex_rows[label][n_stats + i] == "N/A"
                continue
            mark = expected_marks(values, dataset, column).get(model, "")
            text = f"{value:.{column.decimals}f}"
            assert md_rows[label][n_stats + i] == md_wrap[mark].format(text), (model, dataset, column.key)
            assert tex_rows[label][n_stats + i] == tex_wrap[mark].format(text), (model, dataset, column.key)
    footnote = " ".join(paper.footnote)
    assert 'Protocol "paper"' in footnote and "pool_size=64" in footnote
    assert "RESISC45 60 images" in footnote and "AID 60 images" in footnote
    assert "job failed (SANA-VAE on AID)" in footnote and "no job (Qwen-VAE on AID)" in footnote
    # sd21/resisc45 wrote no FID and no reason: the note names that cell, and only that cell
    unexplained = f"not computed, no reason recorded in {files.RESULT_FILE}."
    sd21 = f"{labels.model_label('sd21')} on {labels.dataset_label('resisc45')}"
    assert [line for line in paper.footnote if "not computed" in line] == [f"N/A: FID ({sd21}) {unexplained}"]


def test_csv_holds_the_unrounded_inputs(sweep):
    root, values = sweep
    rows = {
        row["model"]: row
        for row in csv.DictReader(io.StringIO(table_files.to_csv(table.build_table(collect.select(root)))))
    }
    for model in MODELS:
        for dataset in DATASETS:
            for column in columns.METRIC_COLUMNS:
                value = values.get((model, dataset), {}).get(column.key)
                cell = rows[model][f"{dataset}_{column.key}"]
                assert cell == ("" if value is None else repr(value))
    assert rows["sd21"]["gflops"] == "894.91" and rows["sana"]["spatial_ratio"] == "32"
    assert "resisc45_psnr_ci95" not in rows["sd21"]


def test_write_table_and_compare_with_published(sweep, tmp_path):
    root, values = sweep
    published = read_published(PUBLISHED)
    paper = table.build_table(collect.select(root), published)
    paths = table_files.write_table(paper, tmp_path)
    assert [p.name for p in paths] == list(table_files.TABLE_FILES) and all(p.stat().st_size for p in paths)
    rows = {row["model"]: row for row in csv.DictReader(paths[2].open())}
    ours = values["flux2", "aid"]["psnr"]
    assert float(rows["flux2"]["aid_psnr_published"]) == 34.46
    assert float(rows["flux2"]["aid_psnr_diff"]) == pytest.approx(ours - 34.46)
    assert float(rows["sd21"]["gflops_diff"]) == pytest.approx(0.0)
    assert rows["custom"]["aid_psnr_diff"] == "" and rows["sana"]["aid_psnr_diff"] == ""
    markdown = paths[0].read_text()
    assert "minus the published numbers" in markdown and f"{ours - 34.46:+.2f}" in markdown
    assert r"\label{tab:vae-reconstruction-vs-published}" in paths[1].read_text()


def test_latex_compiles(sweep, tmp_path):
    """The .tex is meant to be input as it is; compile it when a LaTeX engine is installed."""
    root, _ = sweep
    compile_latex(
        table_files.to_latex(table.build_table(collect.select(root), read_published(PUBLISHED))), tmp_path
    )


def test_published_csv_is_the_studys_table():
    published = read_published(PUBLISHED)
    assert len(published.metrics) == 7 * 3
    assert published.metrics["flux2", "resisc45"] == {
        "psnr": 33.42,
        "ssim": 0.925,
        "lpips": 0.021,
        "fid": 0.46,
    }
    assert (
        published.metrics["sana", "aid"]["psnr"] == 24.72
        and "later version" in published.notes["sana", "aid"]
    )
    assert published.stats["sana"] == {"gflops": 846.76, "spatial_ratio": 32, "latent_channels": 32}
    assert published.stats["qwen"]["gflops"] == 1143.88


def test_label_style_names_order_and_compare_like_the_study_names():
    assert labels.order_models({"custom", "Qwen-VAE", "sd21", "SDXL-VAE"}) == [
        "sd21",
        "SDXL-VAE",
        "Qwen-VAE",
        "custom",
    ]
    assert labels.model_label("flux2-vae") == "FLUX2-VAE" and labels.dataset_label("RESISC45") == "RESISC45"
    assert (
        labels.canonical_model("SANA-VAE") == "sana" and labels.canonical_dataset("UC Merced") == "ucmerced"
    )


def test_newest_result_wins_by_finished_at_then_mtime(tmp_path):
    write_job(tmp_path / "a", "sd21", "aid", {"psnr": 1.0}, samples=False)
    newer = write_job(tmp_path / "b", "sd21", "aid", {"psnr": 2.0}, samples=False)
    os.utime(newer / "metrics.json", (2e9, 2e9))
    assert collect.select(tmp_path).get("sd21", "aid").metrics["psnr"] == 2.0
    write_job(tmp_path / "c", "sd21", "aid", {"psnr": 3.0}, samples=False, finished_at="2040-01-01T00:00:00")
    assert collect.select(tmp_path).get("sd21", "aid").metrics["psnr"] == 3.0


def test_mixed_protocols_are_refused(tmp_path, capsys):
    write_job(tmp_path / "p", "sd21", "aid", {"psnr": 1.0}, samples=False)
    write_job(tmp_path / "s", "sd21", "aid", {"psnr": 2.0}, protocol="standard", samples=False)
    write_failure(tmp_path / "f", "flux2", "aid", protocol="paper")
    with pytest.raises(
        collect.ReportError, match=r"mix protocols: paper \(1 jobs\), standard \(1 jobs\).*--protocol"
    ):
        collect.select(tmp_path)
    chosen = collect.select(tmp_path, "standard")
    assert chosen.get("sd21", "aid").metrics["psnr"] == 2.0 and not chosen.failures
    assert set(collect.select(tmp_path, "paper").failures) == {("flux2", "aid")}
    assert main(["table", "--results", str(tmp_path)]) == 2
    assert "PROTOCOL=NAME" in capsys.readouterr().err
    assert main(["table", "--results", str(tmp_path), "--protocol", "nope"]) == 2
    assert "protocols present: paper, standard" in capsys.readouterr().err
    assert main(["table", "--results", str(tmp_path), "--protocol", "standard"]) == 0
    markdown = (tmp_path / "paper_table.md").read_text()
    assert "| SD21-VAE |" in markdown and "N/A: SSIM, LPIPS, FID not computed" in markdown


def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["all", "--results", str(tmp_path)]) == 2
    assert "no metrics.json found under" in capsys.readouterr().err
    assert main(["table", "--results", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_takes_the_file_names_from_vaes4rs_files():
    """The writers and the report share one home for the job files' names: no report module spells one."""
    for module, name in [
        (collect, "RESULT_FILE"),
        (collect, "ERROR_FILE"),
        (collect, "PER_CLASS_FILE"),
        (figure, "SAMPLES_DIR"),
        (html_report, "PER_CLASS_FILE"),
    ]:
        assert getattr(module, name) is getattr(files, name), (module.__name__, name)
    names = {value for name, value in vars(files).items() if name.endswith(("_FILE", "_DIR"))}
    assert "metrics.json" in names and "samples" in names
    for path in (REPO / "vaes4rs" / "report").glob("*.py"):
        tree = ast.parse(path.read_text())
        spelled = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
        assert not spelled & names, f"{path.name} spells a file name of vaes4rs.files"


def test_figure_tiles_and_deterministic_choice(sweep, tmp_path):
    root, _ = sweep
    selection = collect.select(root)
    images = figure.gather(selection, images_per_dataset=2)
    assert [(img.dataset, img.key) for img in images] == [
        (img.dataset, img.key) for img in figure.gather(selection, images_per_dataset=2)
    ]
    assert [img.dataset for img in images] == ["resisc45", "resisc45", "aid", "aid"]
    assert len({img.key.split("__")[0] for img in images[:2]}) == 2  # spread over classes
    fig = figure.build_figure(images, labels.order_models(selection.models))
    # resisc45 image: ground truth + 5 models, full and zoom, 5 error maps = 17 tiles;
    # aid image: qwen never ran and sana failed, so ground truth + 3 models: 4 + 4 + 3 = 11
    assert sum(len(ax.images) for ax in fig.axes) == 2 * 17 + 2 * 11
    assert sum(ax.texts[0].get_text() == "N/A" for ax in fig.axes if ax.texts) == 2 * 2 * 3
    paths = figure.write_figure(fig, tmp_path)
    assert [p.name for p in paths] == list(figure.FIGURE_FILES)
    assert paths[1].read_bytes().startswith(b"%PDF")
    with Image.open(paths[0]) as png:
        assert png.width > 500 and png.height > 500


def test_figure_keys_and_zoom_window():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[40:56, 8:24] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
    top, left, side = figure.zoom_window(image)
    assert side == 16 and 28 <= top <= 44 and left <= 12
    assert figure.choose_keys({"a", "b", "c", "d", "e", "f"}, 2) == ["b", "e"]
    assert figure.choose_keys({"a"}, 3) == ["a"]


def test_cli_all_writes_every_output(sweep, capsys):
    root, _ = sweep
    assert (
        main(["all", "--results", str(root), "--compare", str(PUBLISHED), "--images-per-dataset", "1"]) == 0
    )
    written = capsys.readouterr().out.split()
    expected = [*table_files.TABLE_FILES, *figure.FIGURE_FILES, html_report.REPORT_FILE]
    assert [Path(p).name for p in written] == expected


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and the tests run as root (CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(
            "chromium is missing and apt-get cannot install it here (needs root): apt-get install chromium"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    for command in (install, ["apt-get", "update"], install):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0 and command is install and shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip(f"apt-get install chromium failed: {done.stderr.strip()[-300:]}")


def headless(chromium: str, page: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Screenshot of ``page`` and the browser's console messages (from its stderr log)."""
    shot = tmp_path / f"{page.stem}.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,2400",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--enable-logging=stderr",
        "--v=0",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return shot, [line for line in done.stderr.splitlines() if "CONSOLE" in line]


def test_html_report_renders_in_headless_chromium(sweep, tmp_path, chromium):
    root, _ = sweep
    selection = collect.select(root)
    page = html_report.write_report(selection, table.build_table(selection), tmp_path, images_per_dataset=1)
    text = page.read_text()
    assert not re.search(r"(src|href)=\"(?!data:)", text), "the page must not load anything"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # two per-class charts and the figure
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    # the console check must be able to see an error, or a clean run proves nothing
    canary = tmp_path / "canary.html"
    canary.write_text("<!doctype html><script>console.error('canary-error')</script>")
    assert any("canary-error" in line for line in headless(chromium, canary, tmp_path)[1])
    shot, console = headless(chromium, page, tmp_path)
    assert console == []
    with Image.open(shot) as screenshot:
        pixels = np.asarray(screenshot.convert("L"))
    assert screenshot.size == (1400, 2400) and pixels.std() > 10  # not a blank page


# ---- marks, ties, single models, NaN/inf (issue 12) ----------------------------------------------


def column_table(tmp_path: Path, key: str, by_model: dict[str, float]) -> table.PaperTable:
    """A one-dataset table whose ``key`` column holds ``by_model`` (no samples, no other metric)."""
    for model, value in by_model.items():
        write_job(tmp_path / model, model, "aid", {key: value}, samples=False)
    return table.build_table(collect.select(tmp_path))


def marks_of(paper: table.PaperTable, key: str) -> dict[str, str]:
    return {model: paper.marks.get((model, "aid", key), "") for model in paper.models}


@pytest.mark.parametrize(
    ("key", "by_model", "expected"),
    [
        # two values that print the same (30.00) share best; the next distinct value, tied too, is second
        (
            "psnr",
            {"sd21": 30.004, "flux2": 29.996, "sana": 29.5, "qwen": 29.5, "custom": 28.0},
            {"sd21": "best", "flux2": "best", "sana": "second", "qwen": "second", "custom": ""},
        ),
        # lower is better for LPIPS: the two lowest tie, the highest is unmarked
        (
            "lpips",
            {"sd21": 0.2, "flux2": 0.1, "sana": 0.1, "qwen": 0.3},
            {"sd21": "second", "flux2": "best", "sana": "best", "qwen": ""},
        ),
        # every value ties: all best, and there is no second to underline
        ("ssim", {"sd21": 0.5, "flux2": 0.5, "sana": 0.5}, {"sd21": "best", "flux2": "best", "sana": "best"}),
        # one tie for second below a single best
        (
            "fid",
            {"sd21": 1.0, "flux2": 2.0, "sana": 2.0, "qwen": 3.0},
            {"sd21": "best", "flux2": "second", "sana": "second", "qwen": ""},
        ),
    ],
)
def test_ties_share_a_mark_and_second_is_the_next_distinct_value(tmp_path, key, by_model, expected):
    paper = column_table(tmp_path, key, by_model)
    assert marks_of(paper, key) == expected
    column = next(c for c in columns.METRIC_COLUMNS if c.key == key)
    wrap = {"best": "**{}**", "second": "<u>{}</u>", "": "{}"}
    index = len(columns.STAT_COLUMNS) + paper.columns.index((column, "aid"))
    md_rows = markdown_cells(table_files.to_markdown(paper))
    for model, value in by_model.items():
        text = wrap[expected[model]].format(f"{value:.{column.decimals}f}")
        assert md_rows[labels.model_label(model)][index] == text


def test_a_single_model_or_a_single_value_gets_no_mark(tmp_path):
    alone = column_table(tmp_path / "one", "psnr", {"sd21": 30.0})
    assert alone.marks == {}
    markdown = table_files.to_markdown(alone)
    assert "**" not in markdown.split("\n\n")[1] and "<u>" not in markdown
    # two models, but only one has a value in the column: nothing to compare it with
    write_job(tmp_path / "two" / "a", "sd21", "aid", {"psnr": 30.0, "ssim": 0.5}, samples=False)
    write_job(tmp_path / "two" / "b", "flux2", "aid", {"psnr": 31.0}, samples=False)
    paper = table.build_table(collect.select(tmp_path / "two"))
    assert marks_of(paper, "ssim") == {"sd21": "", "flux2": ""}
    assert marks_of(paper, "psnr") == {"sd21": "second", "flux2": "best"}


def test_nan_and_inf_print_na_are_never_ranked_and_are_explained(tmp_path):
    by_model = {"sd21": float("inf"), "flux2": float("nan"), "sana": 25.0, "qwen": 24.0}
    paper = column_table(tmp_path, "psnr", by_model)
    assert marks_of(paper, "psnr") == {"sd21": "", "flux2": "", "sana": "best", "qwen": "second"}
    index = len(columns.STAT_COLUMNS) + paper.columns.index((columns.METRIC_COLUMNS[0], "aid"))
    md_rows = markdown_cells(table_files.to_markdown(paper))
    tex_rows = latex_cells(table_files.to_latex(paper))
    for model in ("sd21", "flux2"):
        assert (
            md_rows[labels.model_label(model)][index] == tex_rows[labels.model_label(model)][index] == "N/A"
        )
    csv_rows = {row["model"]: row for row in csv.DictReader(io.StringIO(table_files.to_csv(paper)))}
    assert csv_rows["sd21"]["aid_psnr"] == csv_rows["flux2"]["aid_psnr"] == ""
    for model, written in (("sd21", "inf"), ("flux2", "nan")):
        where = f"{labels.model_label(model)} on {labels.dataset_label('aid')}"
        assert f"N/A: PSNR ({where}) written as {written} in {files.RESULT_FILE}." in paper.footnote


def test_model_stat_reads_gflops_only_at_the_tables_size():
    size = columns.GFLOPS_SIZE
    assert table.model_stat({"gflops": {size: 12.5, "64x64": 1.0}}, "gflops") == 12.5
    assert table.model_stat({"gflops": 12.5}, "gflops") is None  # a bare number names no input size
    assert table.model_stat({"gflops": {"64x64": 1.0}}, "gflops") is None
    assert table.model_stat({"gflops": {size: float("nan")}, "spatial_ratio": 8}, "gflops") is None
    assert table.model_stat({"spatial_ratio": 8}, "spatial_ratio") == 8


# ---- intervals (issue 10.8) ------------------------------------------------------------------------


def test_intervals_in_every_format_and_their_own_csv_columns(tmp_path):
    cis = {"sd21": (30.0, 29.5, 30.6), "flux2": (31.0, 30.2, 31.9)}  # value, low, high
    for model, (value, low, high) in cis.items():
        metrics = {"psnr": value, "psnr_ci95_lo": low, "psnr_ci95_hi": high, "ssim": 0.5}
        write_job(tmp_path / model, model, "aid", metrics, protocol="standard", samples=False)
    # one more model with a value but no interval, for the reason its job recorded
    why = "a confidence interval needs at least 2 images"
    write_job(
        tmp_path / "sana",
        "sana",
        "aid",
        {"psnr": 20.0, "ssim": 0.4},
        protocol="standard",
        samples=False,
        protocol_fields={"not_computed": {"psnr_ci95": why}},
    )
    selection = collect.select(tmp_path)
    paper = table.build_table(selection)
    index = len(columns.STAT_COLUMNS) + paper.columns.index((columns.METRIC_COLUMNS[0], "aid"))
    md_rows = markdown_cells(table_files.to_markdown(paper))
    tex_rows = latex_cells(table_files.to_latex(paper))
    page = html_report.render(selection, paper)
    md_wrap = {"sd21": "<u>{}</u>", "flux2": "**{}**"}  # flux2 is best, sd21 second, sana unmarked
    tex_wrap = {"sd21": r"\underline{{{}}}", "flux2": r"\textbf{{{}}}"}
    html_wrap = {"sd21": "<u>{}</u>", "flux2": "<strong>{}</strong>"}
    for model, (value, low, high) in cis.items():
        label = labels.model_label(model)
        value_text, ends = f"{value:.2f}", f"[{low:.2f}, {high:.2f}]"
        assert md_rows[label][index] == f"{md_wrap[model].format(value_text)} {ends}"
        assert tex_rows[label][index] == tex_wrap[model].format(value_text) + rf"\,{{\scriptsize{ends}}}"
        assert f"<td>{html_wrap[model].format(value_text)} <small>{ends}</small></td>" in page
    assert md_rows[labels.model_label("sana")][index] == "20.00"
    sana = f"{labels.model_label('sana')} on {labels.dataset_label('aid')}"
    assert f"No interval for PSNR ({sana}): {why}." in paper.footnote
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(table_files.to_csv(paper)))}
    for model, (_, low, high) in cis.items():
        assert (rows[model]["aid_psnr_ci95_lo"], rows[model]["aid_psnr_ci95_hi"]) == (repr(low), repr(high))
    assert rows["sana"]["aid_psnr_ci95_lo"] == rows["sana"]["aid_psnr_ci95_hi"] == ""
    assert "aid_ssim_ci95_lo" not in rows["sd21"]  # no SSIM interval anywhere: no columns for it


def test_no_interval_columns_without_intervals(sweep):
    root, _ = sweep
    paper = table.build_table(collect.select(root))
    header = table_files.to_csv(paper).splitlines()[0]
    assert "_ci95" not in header and "[" not in table_files.to_markdown(paper).split("\n\n")[1]


def segments(ax: Axes) -> set[tuple[float, float]]:
    """(x start, x end) of every interval line drawn on a chart's axes."""
    return {
        (float(seg[0][0]), float(seg[1][0]))
        for collection in ax.collections
        for seg in collection.get_segments()
    }


def test_per_class_chart_draws_class_intervals_when_per_class_csv_has_them(tmp_path):
    intervals = {"airplane": (24.0, 26.5), "beach": (25.5, 27.0)}  # forest: empty cells, no line
    job = write_job(tmp_path / "a", "sd21", "aid", {"psnr": 25.0}, protocol="standard", samples=False)
    write_job(tmp_path / "b", "flux2", "aid", {"psnr": 26.0}, protocol="standard", samples=False)
    with (job / files.PER_CLASS_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "n_images", "psnr", "psnr_ci95_lo", "psnr_ci95_hi"])
        for i, name in enumerate(CLASSES):
            low, high = intervals.get(name, ("", ""))
            writer.writerow([name, 20, 25.0 + i, low, high])
    chart = html_report.per_class_chart(collect.select(tmp_path), "aid")
    psnr, ssim = chart.axes[:2]
    assert segments(psnr) == set(intervals.values())
    assert segments(ssim) == set()  # flux2's per_class.csv has no interval columns
    assert "95 % interval" in psnr.get_xlabel() and "interval" not in ssim.get_xlabel()


# ---- labels and reasons (issue 10.5) ---------------------------------------------------------------


def test_folder_and_subset_datasets_are_labelled_by_what_was_scored(tmp_path):
    folder = {"source": "folder", "root": "/data/resisc45"}
    write_job(tmp_path / "f", "sd21", "resisc45", {"psnr": 20.0}, n_images=24, dataset_config=folder)
    write_job(
        tmp_path / "f2",
        "flux2",
        "resisc45",
        {"psnr": 21.0},
        n_images=24,
        dataset_config=folder,
        samples=False,
    )
    subset = {"source": "hub", "limit_per_class": 2}
    write_job(tmp_path / "s", "sd21", "aid", {"psnr": 22.0}, dataset_config=subset, samples=False)
    hub = {"source": "hub"}
    write_job(
        tmp_path / "u", "sd21", "ucmerced", {"psnr": 23.0}, n_images=2100, dataset_config=hub, samples=False
    )
    selection = collect.select(tmp_path)
    folder_label = "resisc45 (folder, 24 images)"
    subset_label = f"{labels.dataset_label('aid')} (subset, 60 images)"  # write_job's default n_images
    full_label = labels.dataset_label("ucmerced")
    assert [selection.dataset_label(d) for d in ("resisc45", "aid", "ucmerced")] == [
        folder_label,
        subset_label,
        full_label,
    ]
    paper = table.build_table(selection, read_published(PUBLISHED))
    markdown = table_files.to_markdown(paper)
    header = markdown.split("\n\n")[1].splitlines()[0]
    assert f"PSNR↑ {folder_label} |" in header and f"PSNR↑ {subset_label} |" in header
    assert f"PSNR↑ {full_label} |" in header
    assert f"Images scored: {folder_label}; {subset_label}; {full_label} 2,100 images." in paper.footnote
    assert f"{folder_label}, {subset_label}: not the study's full dataset" in " ".join(paper.diff_notes)
    latex = table_files.to_latex(paper)
    assert f"& {folder_label} &" in latex
    page = html_report.render(selection, paper, images_per_dataset=1)
    assert f"<th>{folder_label}</th>" in page and f"<h3>{folder_label}</h3>" in page
    images = figure.gather(selection, images_per_dataset=1)
    assert {(img.dataset, img.label) for img in images} == {("resisc45", folder_label)}


def test_na_notes_say_the_reason_each_job_recorded(tmp_path):
    missing = "network weights missing (metric.missing_weights=skip)"
    detail = f"{missing}: /cache/alexnet.pth not found and could not be downloaded (offline)"
    for model in ("sd21", "flux2"):
        fields = {"not_computed": {"lpips": detail, "fid": detail}}
        write_job(
            tmp_path / model, model, "aid", {"psnr": 1.0, "ssim": 0.5}, protocol_fields=fields, samples=False
        )
    paper = table.build_table(collect.select(tmp_path))
    # one reason for every job: the metrics are named, the cells are not
    assert [line for line in paper.footnote if line.startswith("N/A")] == [
        f"N/A: LPIPS, FID not computed: {missing}."
    ]
    too_few = "needs at least 2 images, got 1"
    metrics = {"psnr": 1.0, "ssim": 0.5, "lpips": 0.1}
    fields = {"not_computed": {"fid": too_few}}
    write_job(
        tmp_path / "one", "sd21", "resisc45", metrics, n_images=1, protocol_fields=fields, samples=False
    )
    write_job(tmp_path / "off", "flux2", "resisc45", metrics, protocol_fields={"fid": False}, samples=False)
    paper = table.build_table(collect.select(tmp_path))

    def where(model: str, dataset: str) -> str:
        return f"{labels.model_label(model)} on {labels.dataset_label(dataset)}"

    on_aid = f"{where('sd21', 'aid')}, {where('flux2', 'aid')}"
    assert sorted(line for line in paper.footnote if line.startswith("N/A")) == sorted(
        [
            f"N/A: LPIPS ({on_aid}); FID ({on_aid}) not computed: {missing}.",
            f"N/A: FID ({where('sd21', 'resisc45')}) not computed: {too_few}.",
            f"N/A: FID ({where('flux2', 'resisc45')}) switched off (metric.fid=false).",
        ]
    )


def test_compare_says_why_the_difference_table_is_na(tmp_path):
    write_job(tmp_path / "t", "taef2", "aid", {"psnr": 25.0}, samples=False)
    write_job(tmp_path / "s", "sd21", "aid", {"psnr": 26.0}, samples=False)
    folder = {"source": "folder", "root": "/data/mine"}
    write_job(
        tmp_path / "m", "sd21", "mine", {"psnr": 27.0}, n_images=5, dataset_config=folder, samples=False
    )
    published = read_published(PUBLISHED)
    paper = table.build_table(collect.select(tmp_path), published)
    markdown = table_files.to_markdown(paper)
    diff_section = markdown.split("minus the published numbers")[1]
    for text in (labels.model_label("taef2"), "mine (folder, 5 images)"):
        note = next(line for line in paper.diff_notes if line.startswith(f"N/A: {text} not in"))
        assert PUBLISHED.name in note and note in diff_section
    # every row of the published table is a study model on a study dataset, and the notes list them
    assert labels.model_label(next(iter(published.stats))) in paper.diff_notes[0]
    assert labels.dataset_label(next(iter(published.metrics))[1]) in paper.diff_notes[1]
    assert all(note in table_files.to_latex(paper) for note in paper.diff_notes)
    only_known = table.build_table(collect.select(tmp_path / "s"), published)
    assert only_known.diff_notes == []


def test_a_folder_of_failed_jobs_says_they_failed(tmp_path, capsys):
    for model in ("sd21", "flux2"):
        write_failure(tmp_path, model, "aid")
    assert main(["table", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--results" not in err and "2 error.json" in err and "RuntimeError: boom" in err
    assert str(tmp_path / "sd21-aid") in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "JSONDecodeError"),
        ("[1, 2]", "the file is list, not an object"),
        ('{"model": "sd21", "dataset": "aid"}', "missing key 'protocol'"),
        (
            '{"model": "sd21", "dataset": "aid", "protocol": {"name": "paper"}, "metrics": [1]}',
            "metrics is list",
        ),
        (
            '{"model": "sd21", "dataset": "aid", "protocol": {"name": "paper", "not_computed": []}}',
            "not_computed",
        ),
        ('{"model": "sd21", "dataset": "aid", "protocol": {"name": "paper"}, "n_images": "many"}', "many"),
    ],
)
def test_a_malformed_metrics_json_is_an_error_naming_it(tmp_path, capsys, text, problem):
    write_job(tmp_path / "good", "sd21", "aid", {"psnr": 1.0}, samples=False)
    bad = tmp_path / "bad" / files.RESULT_FILE
    bad.parent.mkdir()
    bad.write_text(text)
    with pytest.raises(collect.ReportError, match=re.escape(str(bad))) as error:
        collect.select(tmp_path)
    assert problem in str(error.value)
    assert main(["table", "--results", str(tmp_path)]) == 2
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[]", '"boom"'])
def test_a_malformed_error_json_is_an_error_naming_it(tmp_path, text):
    write_job(tmp_path / "good", "sd21", "aid", {"psnr": 1.0}, samples=False)
    bad = write_failure(tmp_path, "flux2", "aid") / files.ERROR_FILE
    bad.write_text(text)
    with pytest.raises(collect.ReportError, match=re.escape(str(bad))):
        collect.select(tmp_path)


PUBLISHED_HEADER = "model,dataset,n_images,gflops,latent_shape,psnr,ssim,lpips,fid,source,note"
PUBLISHED_ROW = "sd21,aid,10,894.91,4x32x32,26.66,0.709,0.094,3.08,table,"


@pytest.mark.parametrize(
    ("bad_row", "problem"),
    [
        ("sd21,resisc45,10,894.91,4x32x32,high,0.709,0.094,3.08,table,", "psnr='high' is not a number"),
        ("sd21,resisc45,10,894.91,4x32,26.66,0.709,0.094,3.08,table,", "latent_shape='4x32' is not CxHxW"),
        ("sd21,resisc45,10,894.91,4x32x32,26.66,0.709,0.094,nan,table,", "fid='nan' is not a finite number"),
        ("sd21,resisc45,10,894.91,4x32x32,26.66,0.709,0.094,3.08,table,,extra", "more fields"),
        ("sd21,resisc45,10,894.91,4x32x32", "fewer fields"),
    ],
)
def test_a_malformed_published_csv_names_the_file_and_the_line(tmp_path, bad_row, problem):
    lines = [PUBLISHED_HEADER, PUBLISHED_ROW, PUBLISHED_ROW.replace("sd21", "sdxl"), bad_row, PUBLISHED_ROW]
    path = tmp_path / "published.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(collect.ReportError) as error:
        read_published(path)
    assert f"{path}, line {lines.index(bad_row) + 1}: " in str(error.value) and problem in str(error.value)


def test_a_published_csv_without_a_needed_column_says_which(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text(PUBLISHED_HEADER.replace("latent_shape", "shape") + "\n" + PUBLISHED_ROW + "\n")
    with pytest.raises(collect.ReportError, match=rf"{re.escape(str(path))}, line 1: no latent_shape column"):
        read_published(path)


def test_published_ratio_is_against_the_tables_gflops_size(tmp_path, monkeypatch):
    path = tmp_path / "published.csv"
    path.write_text(PUBLISHED_HEADER + "\n" + PUBLISHED_ROW + "\n")  # latent 4x32x32
    assert read_published(path).stats["sd21"]["spatial_ratio"] == columns.GFLOPS_SIDE // 32
    monkeypatch.setattr("vaes4rs.report.published.GFLOPS_SIDE", 512)
    assert read_published(path).stats["sd21"]["spatial_ratio"] == 512 // 32
    assert columns.GFLOPS_SIZE == f"{columns.GFLOPS_SIDE}x{columns.GFLOPS_SIDE}"


# ---- special characters in names -------------------------------------------------------------------


def split_markdown_row(line: str) -> list[str]:
    """Cells of a markdown table line, ``\\|`` being a pipe inside a cell."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


MODEL_SPECIAL, DATASET_SPECIAL = "a|b_c", "set|x_&%"


def special_table(root: Path, monkeypatch: pytest.MonkeyPatch) -> table.PaperTable:
    """A model and a dataset whose names hold markdown's and LaTeX's special characters, with intervals."""
    monkeypatch.setitem(STATS, MODEL_SPECIAL, (1.0, 8, 4))
    monkeypatch.setitem(SIDES, DATASET_SPECIAL, 16)
    metrics = {"psnr": 20.0, "psnr_ci95_lo": 19.0, "psnr_ci95_hi": 21.0}
    write_job(root / "a", MODEL_SPECIAL, DATASET_SPECIAL, metrics, samples=False)
    write_job(root / "b", "sd21", DATASET_SPECIAL, {"psnr": 21.0}, samples=False)
    return table.build_table(collect.select(root))


def test_names_with_special_characters_are_escaped(tmp_path, monkeypatch):
    model, dataset = MODEL_SPECIAL, DATASET_SPECIAL
    paper = special_table(tmp_path, monkeypatch)
    grid = table_files.to_markdown(paper).split("\n\n")[1].splitlines()
    rows = [split_markdown_row(line) for line in grid]
    assert {len(cells) for cells in rows} == {1 + len(columns.STAT_COLUMNS) + len(columns.METRIC_COLUMNS)}
    escaped_model, escaped_dataset = (name.replace("|", r"\|") for name in (model, dataset))
    assert escaped_model in {cells[0] for cells in rows[2:]} and f"PSNR↑ {escaped_dataset}" in rows[0]
    latex = table_files.to_latex(paper)
    assert r"set\textbar{}x\_\&\%" in latex and r"a\textbar{}b\_c" in latex
    assert dataset not in latex and model not in latex


def test_latex_with_intervals_and_special_names_compiles(tmp_path, monkeypatch):
    compile_latex(table_files.to_latex(special_table(tmp_path / "results", monkeypatch)), tmp_path)


def compile_latex(text: str, tmp_path: Path) -> None:
    """Compile ``text`` as an \\input of a minimal document when a LaTeX engine is installed."""
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    (tmp_path / "paper_table.tex").write_text(text)
    document = (
        r"\documentclass{article}\usepackage{booktabs}\begin{document}\input{paper_table.tex}\end{document}"
    )
    (tmp_path / "doc.tex").write_text(document)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
