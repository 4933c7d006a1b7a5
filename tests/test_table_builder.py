"""build_table on Selections made in memory: cells, intervals, stats, footnote and difference rows.

Every expected string and number is written out here from the jobs the test makes; labels
(``SD21-VAE``, ``AID``) are the study's names. test_report.py covers the renderers and the
files; this module covers the model they print (vaes4rs/report/table.py), without files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vaes4rs.report.collect import FailedJob, JobResult, Selection
from vaes4rs.report.columns import GFLOPS_SIZE, METRIC_COLUMNS, STAT_COLUMNS
from vaes4rs.report.published import Published
from vaes4rs.report.table import Cell, build_table

ROOT = Path("/results")
PSNR, SSIM, LPIPS, FID = METRIC_COLUMNS
GFLOPS_TEXT = (
    f"GFLOPs: one encode+decode of a 1x3x{GFLOPS_SIZE} input (2 FLOPs per multiply-add). "
    "Ratio: input side / latent side. Channels: latent channels."
)
MARKS_TEXT = (
    "Best in bold, second underlined (higher is better for PSNR, SSIM; lower for LPIPS, FID); "
    "values that print the same share a mark."
)
INTERVAL_TEXT = "In brackets: the bootstrap 95 % confidence interval over images; marks compare the values."


def model_rows(rows, paper) -> dict:
    """Each model's cells by its key (rows are labelled for print, in the table's model order)."""
    return {model: row.cells for model, row in zip(paper.models, rows)}


def job(
    model: str,
    dataset: str,
    metrics: dict[str, float],
    *,
    n_images: int = 10,
    n_skipped: int = 0,
    params: dict | None = None,
    not_computed: dict[str, str] | None = None,
    stats: dict | None = None,
    finished: float = 1.0,
    kind: str = "",
    compiled: bool = False,
) -> JobResult:
    return JobResult(
        path=ROOT / f"{model}-{dataset}",
        model=model,
        dataset=dataset,
        protocol="paper",
        protocol_params=params or {},
        n_images=n_images,
        n_skipped=n_skipped,
        metrics=metrics,
        model_stats=stats or {},
        finished=finished,
        not_computed=not_computed or {},
        dataset_kind=kind,
        compiled=compiled,
    )


def failure(model: str, dataset: str) -> FailedJob:
    return FailedJob(ROOT / f"{model}-{dataset}", model, dataset, "paper", "RuntimeError: boom", 2.0)


def select(*jobs: JobResult, failures: tuple[FailedJob, ...] = (), protocol: str = "paper") -> Selection:
    return Selection(
        root=ROOT,
        protocol=protocol,
        results={(j.model, j.dataset): j for j in jobs},
        failures={(f.model, f.dataset): f for f in failures},
    )


def model_stats(gflops: float, ratio: int, channels: int) -> dict:
    return {
        "gflops": {GFLOPS_SIZE: gflops, "64x64": 0.5},
        "spatial_ratio": ratio,
        "latent_channels": channels,
    }


def lines(footnote: list[str], start: str) -> list[str]:
    return [line for line in footnote if line.startswith(start)]


# ---- cells -------------------------------------------------------------------------------------------


def test_a_cell_prints_its_value_sign_and_interval_at_its_decimals() -> None:
    assert Cell(1.23456, 2).text == "1.23" and Cell(1.23456, 0).text == "1"
    assert Cell(2.5, 3, signed=True).text == "+2.500" and Cell(-0.25, 2, signed=True).text == "-0.25"
    assert Cell(0.5, 1).mark == "" and Cell(0.5, 1).text == "0.5"  # unsigned, unmarked by default
    assert Cell(None, 2).text == "N/A" and Cell(None, 2, signed=True).text == "N/A"
    assert Cell(30.0, 1, interval=(29.04, 30.96)).interval_text == ("29.0", "31.0")
    assert Cell(30.0, 1).interval_text is None
    assert Cell(None, 1, interval=(29.0, 31.0)).interval_text is None


# ---- rows, columns, stats --------------------------------------------------------------------------


def two_by_two() -> Selection:
    """sd21 and flux2 on AID and RESISC45; every metric, intervals on FID (sd21/AID) and PSNR (flux2/AID)."""
    values = {
        ("sd21", "aid"): {"psnr": 26.0, "ssim": 0.70, "lpips": 0.10, "fid": 3.0},
        ("flux2", "aid"): {"psnr": 30.0, "ssim": 0.80, "lpips": 0.05, "fid": 1.0},
        ("sd21", "resisc45"): {"psnr": 25.0, "ssim": 0.65, "lpips": 0.12, "fid": 4.0},
        ("flux2", "resisc45"): {"psnr": 29.0, "ssim": 0.75, "lpips": 0.06, "fid": 2.0},
    }
    values["sd21", "aid"] |= {"fid_ci95_lo": 2.5, "fid_ci95_hi": 3.5}
    values["flux2", "aid"] |= {"psnr_ci95_lo": 29.5, "psnr_ci95_hi": 30.5, "ssim_ci95_lo": 0.79}  # no hi
    stats = {"sd21": model_stats(894.91, 8, 4), "flux2": model_stats(895.71, 8, 32)}
    return select(*(job(m, d, v, stats=stats[m]) for (m, d), v in values.items()))


def test_rows_hold_the_stats_then_every_metric_for_every_dataset_in_study_order() -> None:
    paper = build_table(two_by_two())
    assert paper.models == ["sd21", "flux2"] and paper.datasets == ["resisc45", "aid"]
    order = [(c.key, d) for c, d in paper.columns]
    assert order == [(k, d) for k in ("psnr", "ssim", "lpips", "fid") for d in ("resisc45", "aid")]
    assert paper.interval_keys == ["psnr", "fid"]  # column order; SSIM has one end only
    rows = model_rows(paper.rows(), paper)
    assert list(rows) == ["sd21", "flux2"]
    stats = rows["sd21"][: len(STAT_COLUMNS)]
    assert [(c.value, c.decimals, c.mark, c.interval) for c in stats] == [
        (894.91, 2, "", None),
        (8, 0, "", None),
        (4, 0, "", None),
    ]
    assert [c.text for c in rows["flux2"][: len(STAT_COLUMNS)]] == ["895.71", "8", "32"]
    metrics = {(m, key, d): cell for m in rows for cell, (key, d) in zip(rows[m][len(STAT_COLUMNS) :], order)}
    assert [metrics["sd21", k, "aid"].value for k in ("psnr", "ssim", "lpips", "fid")] == [
        26.0,
        0.70,
        0.10,
        3.0,
    ]
    assert [metrics["flux2", k, "resisc45"].decimals for k in ("psnr", "ssim", "lpips", "fid")] == [
        2,
        3,
        3,
        2,
    ]
    # two models per column: the better one best, the other second (lower is better for LPIPS and FID)
    assert {k: metrics["flux2", k, "aid"].mark for k in ("psnr", "ssim", "lpips", "fid")} == dict.fromkeys(
        ("psnr", "ssim", "lpips", "fid"), "best"
    )
    assert {k: metrics["sd21", k, "resisc45"].mark for k in ("psnr", "lpips")} == {
        "psnr": "second",
        "lpips": "second",
    }
    assert metrics["sd21", "fid", "aid"].interval == (2.5, 3.5)
    assert metrics["flux2", "psnr", "aid"].interval == (29.5, 30.5)
    assert (
        metrics["flux2", "ssim", "aid"].interval is None and metrics["sd21", "psnr", "aid"].interval is None
    )
    assert paper.intervals == {("sd21", "aid", "fid"): (2.5, 3.5), ("flux2", "aid", "psnr"): (29.5, 30.5)}
    assert paper.n_images == {cell: 10 for cell in two_by_two().results}
    assert paper.dataset_labels == {"resisc45": "RESISC45", "aid": "AID"}
    assert INTERVAL_TEXT in paper.footnote


def test_no_interval_sentence_and_no_marks_without_them() -> None:
    paper = build_table(
        select(job("sd21", "aid", {"psnr": 26.0, "psnr_ci95_lo": float("nan"), "psnr_ci95_hi": 27.0}))
    )
    assert paper.intervals == {} and paper.marks == {} and INTERVAL_TEXT not in paper.footnote
    assert paper.values["sd21", "aid", "psnr"] == 26.0 and paper.values["sd21", "aid", "ssim"] is None


def test_stats_come_from_each_models_newest_job() -> None:
    old = job("sd21", "aid", {"psnr": 1.0}, stats=model_stats(1.0, 4, 4), finished=5.0)
    new = job("sd21", "resisc45", {"psnr": 2.0}, stats=model_stats(2.0, 8, 16), finished=9.0)
    older = job("flux2", "resisc45", {"psnr": 3.0}, stats=model_stats(3.0, 16, 32), finished=8.0)
    newer = job("flux2", "aid", {"psnr": 4.0}, stats={"gflops": 7.0, "spatial_ratio": 32}, finished=9.5)
    paper = build_table(select(new, old, older, newer, failures=(failure("sana", "aid"),)))
    assert paper.stats["sd21"] == {"gflops": 2.0, "spatial_ratio": 8, "latent_channels": 16}
    # a bare GFLOPs number names no input size; a missing key is N/A
    assert paper.stats["flux2"] == {"gflops": None, "spatial_ratio": 32, "latent_channels": None}
    assert paper.stats["sana"] == {
        "gflops": None,
        "spatial_ratio": None,
        "latent_channels": None,
    }  # failed only
    assert [c.text for c in model_rows(paper.rows(), paper)["sana"]] == ["N/A"] * (len(STAT_COLUMNS) + 4 * 2)
    assert {c.mark for c in model_rows(paper.rows(), paper)["sana"]} == {""}  # unmarked is "", as for a stat


# ---- footnote ----------------------------------------------------------------------------------------


def test_footnote_protocol_counts_and_fixed_sentences() -> None:
    params = {"latent": "sample", "seed": 42, "pool_size": 64, "psnr": True, "weights": {"alexnet": "x"}}
    jobs = [
        job("sd21", "aid", {"psnr": 1.0}, params=params, n_images=10_000, n_skipped=2),
        job("flux2", "aid", {"psnr": 2.0}, params={**params, "seed": 7, "scale": 0.5}, n_images=10_000),
        job("sana", "aid", {"psnr": 3.0}, params=params, n_images=9_998, n_skipped=1),
        job("qwen", "aid", {"psnr": 3.5}, params=params, n_images=9_990),
        job("sd21", "ucmerced", {"psnr": 4.0}, params=params, n_images=24, kind="folder"),
    ]
    paper = build_table(select(*jobs, failures=(failure("qwen", "resisc45"),)))
    assert paper.footnote[:4] == [
        'Protocol "paper" (latent=sample, seed=42/7, pool_size=64, scale=0.5).',
        "Images scored: RESISC45 no result; AID 10,000 images (SANA-VAE 9,998, Qwen-VAE 9,990), "
        "3 corrupt image(s) skipped over all models; ucmerced (folder, 24 images).",
        GFLOPS_TEXT,
        MARKS_TEXT,
    ]
    bare = build_table(select(job("sd21", "aid", {"psnr": 1.0}, params={"psnr": True, "weights": {}})))
    assert bare.footnote[0] == 'Protocol "paper".'
    assert bare.footnote[1] == "Images scored: AID 10 images."


def test_footnote_names_failed_and_missing_jobs() -> None:
    jobs = [job("sd21", "aid", {"psnr": 1.0}), job("flux2", "resisc45", {"psnr": 2.0})]
    failures = (failure("sana", "resisc45"), failure("qwen", "aid"))
    paper = build_table(select(*jobs, failures=failures))
    assert lines(paper.footnote, "N/A: job failed") == [
        "N/A: job failed (Qwen-VAE on AID, SANA-VAE on RESISC45)."
    ]
    # models x datasets in table order, without the ones that ran or failed
    assert lines(paper.footnote, "N/A: no job") == [
        "N/A: no job (SD21-VAE on RESISC45, FLUX2-VAE on AID, SANA-VAE on AID, Qwen-VAE on RESISC45)."
    ]
    assert paper.failures == [
        f"Qwen-VAE on AID: RuntimeError: boom ({ROOT / 'qwen-aid'})",
        f"SANA-VAE on RESISC45: RuntimeError: boom ({ROOT / 'sana-resisc45'})",
    ]
    complete = build_table(select(*jobs[:1]))
    assert not lines(complete.footnote, "N/A: job failed") and not lines(complete.footnote, "N/A: no job")
    assert complete.failures == []
    assert complete.published is None and complete.diff_notes == []


def test_footnote_says_which_results_were_compiled() -> None:
    compiled = "compiled with torch.compile (run.compile: VAE encoder and decoder, metric networks)"
    jobs = [
        job("sd21", "aid", {"psnr": 1.0}, compiled=True),
        job("flux2", "resisc45", {"psnr": 2.0}),
        job("sd21", "resisc45", {"psnr": 3.0}, compiled=True),
    ]
    paper = build_table(select(*jobs))
    # in table order: models as the study lists them, RESISC45 before AID
    assert lines(paper.footnote, "Results compiled") == [
        f"Results {compiled}: SD21-VAE on RESISC45, SD21-VAE on AID; the others eager."
    ]
    every = build_table(select(jobs[0], jobs[2]))
    assert lines(every.footnote, "All results") == [f"All results {compiled}."]
    assert not [line for line in build_table(select(jobs[1])).footnote if "compile" in line]


def test_na_notes_give_each_reason_and_name_cells_only_when_not_all_jobs() -> None:
    missing = "network weights missing (metric.missing_weights=skip)"
    jobs = [
        # PSNR written as NaN; LPIPS with a recorded reason (first clause only); FID switched off
        job(
            "sd21",
            "aid",
            {"psnr": float("nan"), "ssim": 0.5},
            params={"fid": False},
            not_computed={"lpips": f"{missing}: /cache/alexnet.pth: not found"},
        ),
        # LPIPS for the same reason; FID with no reason recorded; a PSNR without its interval
        job(
            "flux2",
            "aid",
            {"psnr": 30.0, "ssim": 0.6},
            not_computed={"lpips": f"{missing}: elsewhere", "psnr_ci95": "too few: 1 image: see the log"},
        ),
    ]
    paper = build_table(select(*jobs))
    sd21, flux2 = "SD21-VAE on AID", "FLUX2-VAE on AID"
    assert lines(paper.footnote, "N/A") == [
        f"N/A: PSNR ({sd21}) written as nan in metrics.json.",
        f"N/A: LPIPS not computed: {missing}.",
        f"N/A: FID ({sd21}) switched off (metric.fid=false).",
        f"N/A: FID ({flux2}) not computed, no reason recorded in metrics.json.",
    ]
    assert lines(paper.footnote, "No interval") == [f"No interval for PSNR ({flux2}): too few."]
    # one reason for one cell of LPIPS and every cell of SSIM: both named, "; " between them
    jobs[0] = job("sd21", "aid", {"psnr": 26.0}, not_computed={"ssim": "off: x", "lpips": "off: y"})
    jobs[1] = job("flux2", "aid", {"psnr": 30.0, "lpips": 0.1}, not_computed={"ssim": "off: z"})
    paper = build_table(select(*jobs))
    assert lines(paper.footnote, "N/A: SSIM") == [f"N/A: SSIM; LPIPS ({sd21}) not computed: off."]
    everywhere = build_table(select(job("sd21", "aid", {"psnr": 26.0}, not_computed={"psnr_ci95": "none"})))
    assert lines(everywhere.footnote, "No interval") == ["No interval for PSNR: none."]


# ---- difference table --------------------------------------------------------------------------------


def published() -> Published:
    return Published(
        path=Path("/study/published.csv"),
        metrics={
            ("sd21", "aid"): {"psnr": 25.0, "ssim": 0.7, "lpips": None, "fid": 3.5},
            ("flux2", "aid"): {"psnr": 31.0},
            ("sd21", "resisc45"): {"psnr": 24.0},
        },
        stats={
            "sd21": {"gflops": 894.0, "spatial_ratio": 8, "latent_channels": 4},
            "flux2": {"gflops": 900.0},
        },
        notes={("sd21", "aid"): "a note on sd21/aid", ("sana", "aid"): "not shown"},
    )


def test_difference_rows_are_ours_minus_published_signed_and_na_where_either_is_missing() -> None:
    jobs = [
        job(
            "SD21-VAE",
            "AID",
            {"psnr": 26.5, "ssim": 0.65, "lpips": 0.1, "fid": 3.0},
            stats=model_stats(895.5, 8, 4),
        ),
        job("flux2", "AID", {"psnr": 30.0, "ssim": 0.8}, stats=model_stats(899.0, 16, 32)),
        job("taef2", "AID", {"psnr": 20.0}, stats=model_stats(66.0, 8, 32)),
    ]
    paper = build_table(select(*jobs), published())
    rows = {
        m: [(c.value, c.decimals, c.signed) for c in cells]
        for m, cells in model_rows(paper.diff_rows(), paper).items()
    }
    n = len(STAT_COLUMNS)
    assert rows["SD21-VAE"][:n] == [(pytest.approx(1.5), 2, True), (0, 0, True), (0, 0, True)]
    assert [value for value, _, _ in rows["flux2"][:n]] == [pytest.approx(-1.0), None, None]
    assert [value for value, _, _ in rows["taef2"]] == [None] * (n + 4)
    assert all(signed for cells in rows.values() for _, _, signed in cells)
    metric = {key: rows["SD21-VAE"][n + i] for i, key in enumerate(("psnr", "ssim", "lpips", "fid"))}
    assert metric["psnr"] == (pytest.approx(1.5), 2, True) and metric["ssim"] == (
        pytest.approx(-0.05),
        3,
        True,
    )
    assert metric["lpips"][0] is None and metric["fid"] == (pytest.approx(-0.5), 2, True)
    assert [c.text for c in model_rows(paper.diff_rows(), paper)["flux2"][n:]] == [
        "-1.00",
        "N/A",
        "N/A",
        "N/A",
    ]
    assert (
        paper.published_stat("taef2", "gflops") is None
        and paper.published_metric("taef2", "aid", "psnr") is None
    )
    assert (
        paper.published_metric("SD21-VAE", "AID", "fid") == 3.5
        and paper.published_stat("SD21-VAE", "gflops") == 894.0
    )
    plain = build_table(select(*jobs))
    assert (
        plain.published_stat("flux2", "gflops") is None
        and plain.published_metric("flux2", "AID", "psnr") is None
    )
    assert plain.stat_diff("flux2", "gflops") is None and plain.metric_diff("flux2", "AID", "psnr") is None


def test_difference_footnote_and_notes() -> None:
    jobs = [
        job("sd21", "aid", {"psnr": 26.0}),
        job("taef2", "aid", {"psnr": 20.0}),
        job("custom", "aid", {"psnr": 21.0}),
        job("sd21", "mine", {"psnr": 20.0}, kind="folder", n_images=5),
        job("sd21", "other", {"psnr": 20.0}),
        job("flux2", "resisc45", {"psnr": 29.0}, kind="subset", n_images=60),
    ]
    paper = build_table(select(*jobs, protocol="standard"), published())
    assert paper.protocol == "standard" and paper.published is not None
    assert paper.footnote[-3:] == [
        "Difference table: this table minus the study's published numbers "
        '(published.csv, protocol "paper").',
        'This table uses protocol "standard", so differences include protocol effects.',
        "Published SD21-VAE on AID: a note on sd21/aid.",
    ]
    assert paper.diff_notes == [
        "N/A: custom, taef2 not in published.csv, which has SD21-VAE, FLUX2-VAE.",
        "N/A: mine (folder, 5 images), other not in published.csv, which has AID, RESISC45.",
        "RESISC45 (subset, 60 images): not the study's full dataset, so the differences also reflect "
        "which images were scored.",
    ]
    same = build_table(select(job("flux2", "aid", {"psnr": 29.0})), published())
    assert same.diff_notes == []
    assert same.footnote[-1].startswith("Difference table:")  # paper protocol, no note on flux2/aid


def test_a_cell_without_a_job_does_not_hide_the_next_models_reason() -> None:
    """sd21 never ran on AID; flux2, after it in table order, did and wrote no SSIM."""
    jobs = [job("sd21", "resisc45", {"psnr": 1.0, "ssim": 0.5}), job("flux2", "aid", {"psnr": 2.0})]
    paper = build_table(select(*jobs))
    assert lines(paper.footnote, "N/A: SSIM") == [
        # LPIPS and FID are missing from every job, so their cells are not named
        "N/A: SSIM (FLUX2-VAE on AID); LPIPS; FID not computed, no reason recorded in metrics.json."
    ]
