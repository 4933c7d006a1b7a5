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
SIDES = {"aid": 48, "resisc45": 32}
STATS = {
    "sd21": (894.91, 8, 4),
    "flux2": (895.71, 8, 32),
    "qwen": (1143.88, 8, 16),
    "sana": (846.76, 32, 32),
    "custom": (12.5, 4, 8),
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
) -> Path:
    """One finished job: metrics.json, per_class.csv and lossless sample PNGs."""
    job = root / f"{model}-{dataset}"
    job.mkdir(parents=True)
    gflops, ratio, channels = STATS[model]
    side = SIDES[dataset]
    payload = {
        "model": model,
        "dataset": dataset,
        "protocol": {"name": protocol, "latent": "sample", "seed": 42, "pool_size": 64, "psnr": True},
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
        "config": {"model": {"name": model}, "dataset": {"name": dataset}},
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
    assert "not computed" not in footnote


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
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    root, _ = sweep
    paper = table.build_table(collect.select(root), read_published(PUBLISHED))
    (tmp_path / "paper_table.tex").write_text(table_files.to_latex(paper))
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
