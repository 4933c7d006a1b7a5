"""Find job results under a results root and pick the ones a report shows.

This is the only module of the report that reads a job's result files (metrics.json,
error.json, per_class.csv), so the contract between runs and reports is read in one place;
the file names come from ``vaes4rs.files``, which the writers use too. ``number`` is the one
reading of a number for every file a report reads. A result or error file that cannot be read
stops the report with an error naming it: a table silently missing a job would look complete.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from vaes4rs.files import ERROR_FILE, PER_CLASS_FILE, RESULT_FILE
from vaes4rs.report.labels import FOLDER, SUBSET, scored_dataset_label

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
# per_class.csv's columns of the degraded input scored as is (vaes4rs.results.BASELINE_PREFIX; the
# report stays free of torch, which that module imports).
BASELINE_PREFIX = "input_"


class ReportError(Exception):
    """A problem the user can fix (wrong folder, ambiguous protocol); the CLI prints it and exits 2."""


@dataclass(frozen=True)
class JobResult:
    """What a report needs from one finished job's metrics.json."""

    path: Path
    model: str
    dataset: str
    protocol: str
    protocol_params: dict[str, Any]
    n_images: int
    n_skipped: int
    metrics: dict[str, float]  # as written: NaN and inf included, the table shows them as N/A
    model_stats: dict[str, Any]
    finished: float
    not_computed: dict[str, str] = field(default_factory=dict)  # metric key -> why the job has none
    dataset_kind: str = ""  # FOLDER, SUBSET or "" (the named set in full, or a result that does not say)
    # Under dataset.degrade: the settings, and the degraded input scored as is (the do-nothing baseline).
    degradation: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    baseline_label: str = ""
    compiled: bool = False  # run.compile: VAE and metric networks through torch.compile

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.dataset, self.protocol


@dataclass(frozen=True)
class FailedJob:
    """A job that left error.json; ``protocol`` is None when its config does not say."""

    path: Path
    model: str
    dataset: str
    protocol: str | None
    error: str
    finished: float


@dataclass
class Selection:
    """The newest result per (model, dataset) of one protocol, and the cells whose only job failed."""

    root: Path
    protocol: str
    results: dict[tuple[str, str], JobResult]
    failures: dict[tuple[str, str], FailedJob] = field(default_factory=dict)

    @property
    def models(self) -> set[str]:
        return {model for model, _ in [*self.results, *self.failures]}

    @property
    def datasets(self) -> set[str]:
        return {dataset for _, dataset in [*self.results, *self.failures]}

    def get(self, model: str, dataset: str) -> JobResult | None:
        return self.results.get((model, dataset))

    def _jobs_on(self, dataset: str) -> list[JobResult]:
        return [job for (_, d), job in sorted(self.results.items()) if d == dataset]

    def scored_images(self, dataset: str) -> int | None:
        """The image count most of a dataset's jobs scored (the larger on a tie); None without a result."""
        counts = Counter(job.n_images for job in self._jobs_on(dataset))
        return max(counts, key=lambda n: (counts[n], n)) if counts else None

    def dataset_kind(self, dataset: str) -> str:
        """FOLDER when any job read a local folder, else SUBSET when any read part of the set, else ""."""
        kinds = {job.dataset_kind for job in self._jobs_on(dataset)}
        return FOLDER if FOLDER in kinds else SUBSET if SUBSET in kinds else ""

    def dataset_label(self, dataset: str) -> str:
        """What every report prints for a dataset: a folder or a subset says so, with its image count."""
        return scored_dataset_label(dataset, self.dataset_kind(dataset), self.scored_images(dataset) or 0)


def _timestamp(payload: dict[str, Any], path: Path) -> float:
    """``finished_at`` (ISO 8601) when the job wrote one, else the file's mtime."""
    finished_at = payload.get("finished_at")
    if isinstance(finished_at, str):
        try:
            return datetime.fromisoformat(finished_at).timestamp()
        except ValueError:
            pass
    return path.stat().st_mtime


def number(value: Any, *, text: bool = False, strict: bool = False) -> float | None:
    """A value of a result file as a table cell: a number, or None for N/A (never zero).

    A JSON value counts only as an int or float, not a boolean (``true`` is not 1) and not a
    string; it is returned as it is, so a count stays an int. A CSV field (``text=True``) is
    parsed: empty or missing is None, and text that is not a number is None too, or raises
    ValueError when ``strict`` (a hand-written file whose mistake the user should see).
    """
    if not text:
        return None if isinstance(value, bool) or not isinstance(value, (int, float)) else value
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        if strict:
            raise
        return None


def finite(value: float | None) -> float | None:
    """A number a table may print or rank: NaN and inf are N/A, like a missing value."""
    return value if value is not None and math.isfinite(value) else None


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar numbers only: CI pairs, lists and flags are not table cells."""
    return {key: float(value) for key, value in metrics.items() if number(value) is not None}


def _object(value: Any, where: str) -> dict[str, Any]:
    """A JSON object of a job file, or a TypeError that says which part is something else."""
    if not isinstance(value, dict):
        raise TypeError(f"{where} is {type(value).__name__}, not an object")
    return value


def _unreadable(path: Path, exc: Exception) -> ReportError:
    """The one error for a job file that cannot be read: its path, what is wrong, what to do."""
    what = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
    return ReportError(f"{path} cannot be read ({what}); fix or delete it, then rerun the report")


def _dataset_kind(config: Any) -> str:
    """FOLDER or SUBSET from the job's resolved config; "" for the full set or a config that does not say."""
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if not isinstance(dataset, dict):
        return ""
    if dataset.get("source") == "folder":
        return FOLDER
    if dataset.get("source") == "hub" and (dataset.get("classes") or dataset.get("limit_per_class")):
        return SUBSET
    return ""


def read_result(path: Path) -> JobResult:
    """One metrics.json; ``path`` is the file itself."""
    try:
        payload = _object(json.loads(path.read_text()), "the file")
        protocol = _object(payload["protocol"], "protocol")
        not_computed = _object(protocol.get("not_computed", {}), "protocol.not_computed")
        baseline = _object(payload.get("baseline") or {}, "baseline")
        return JobResult(
            path=path.parent,
            model=str(payload["model"]),
            dataset=str(payload["dataset"]),
            protocol=str(protocol["name"]),
            protocol_params={k: v for k, v in protocol.items() if k != "name"},
            n_images=int(payload.get("n_images", 0)),
            n_skipped=int(payload.get("n_skipped", 0)),
            metrics=_numeric(_object(payload.get("metrics", {}), "metrics")),
            model_stats=dict(_object(payload.get("model_stats", {}), "model_stats")),
            finished=_timestamp(payload, path),
            not_computed={str(key): str(reason) for key, reason in not_computed.items()},
            dataset_kind=_dataset_kind(payload.get("config")),
            degradation=dict(_object(payload.get("degradation") or {}, "degradation")),
            baseline=_numeric(_object(baseline.get("metrics", {}), "baseline.metrics")),
            baseline_label=str(baseline.get("label") or "degraded input") if baseline else "",
            compiled=bool(_object(payload.get("timing") or {}, "timing").get("compiled", False)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise _unreadable(path, exc) from exc


def _names_from_dir(name: str, model: str | None, dataset: str | None) -> tuple[str, str]:
    """Fill what the config left unresolved from the job directory ``<model>-<dataset>``."""
    if model and dataset:
        return model, dataset
    if model and name.startswith(f"{model}-"):
        return model, name.removeprefix(f"{model}-")
    if dataset and name.endswith(f"-{dataset}"):
        return name.removesuffix(f"-{dataset}"), dataset
    head, _, tail = name.partition("-")
    return model or head, dataset or tail or "?"


def _read_object(path: Path, load: Callable[[str], Any]) -> dict[str, Any]:
    """A job file that must hold one object (``load`` parses its text), or the report's error naming it."""
    try:
        return _object(load(path.read_text()), "the file")
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise _unreadable(path, exc) from exc


def _plain(value: Any) -> str | None:
    """A name as the job resolved it: non-empty text without an unresolved ``${...}``."""
    return value if isinstance(value, str) and value and "${" not in value else None


def read_failure(path: Path) -> FailedJob:
    """One error.json; model, dataset and protocol as the job resolved them, else from its Hydra config."""
    record = _read_object(path, json.loads)
    config_file = path.parent / HYDRA_CONFIG
    config: dict[str, Any] = {}
    if config_file.is_file():
        config = _read_object(config_file, lambda text: yaml.safe_load(text) or {})

    def plain(group: str, key: str) -> str | None:
        section = config.get(group)
        return _plain(section.get(key)) if isinstance(section, dict) else None

    model, dataset = _names_from_dir(
        path.parent.name,
        _plain(record.get("model")) or plain("model", "name"),
        _plain(record.get("dataset")) or plain("dataset", "name"),
    )
    return FailedJob(
        path=path.parent,
        model=model,
        dataset=dataset,
        protocol=_plain(record.get("protocol")) or plain("metric", "protocol"),
        error=str(record.get("error", "unknown error")),
        finished=path.stat().st_mtime,
    )


def find_jobs(root: Path) -> tuple[list[JobResult], list[FailedJob]]:
    """Every finished and every failed job under ``root`` (a job with metrics.json counts as finished)."""
    if not root.is_dir():
        raise ReportError(f"results folder {root} does not exist")
    results = [read_result(path) for path in sorted(root.rglob(RESULT_FILE))]
    finished_dirs = {result.path for result in results}
    failures = [
        read_failure(path) for path in sorted(root.rglob(ERROR_FILE)) if path.parent not in finished_dirs
    ]
    return results, failures


def select(root: Path, protocol: str | None = None) -> Selection:
    """Newest result per (model, dataset) of one protocol; refuses to mix protocols.

    A failure is kept only for a cell with no result of the protocol: an older success
    stays valid when a rerun fails.
    """
    results, failures = find_jobs(root)
    if failures and not results:
        shown = "; ".join(f"{f.path}: {(f.error.splitlines() or ['?'])[0]}" for f in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        raise ReportError(
            f"every job under {root} failed ({len(failures)} {ERROR_FILE}, no {RESULT_FILE}), "
            f"so there is nothing to report: {shown}{more}"
        )
    if not results:
        raise ReportError(f"no {RESULT_FILE} found under {root}; pass the results folder with --results")
    counts = Counter(result.protocol for result in results)
    if protocol is None:
        if len(counts) > 1:
            listed = ", ".join(f"{name} ({n} jobs)" for name, n in sorted(counts.items()))
            raise ReportError(
                f"results under {root} mix protocols: {listed}. One table holds one protocol: "
                f"pick one with --protocol NAME (make ... PROTOCOL=NAME), e.g. --protocol {min(counts)}"
            )
        protocol = next(iter(counts))
    elif protocol not in counts:
        raise ReportError(
            f"unknown protocol '{protocol}' under {root}; protocols present: {', '.join(sorted(counts))}"
        )
    newest: dict[tuple[str, str], JobResult] = {}
    for result in results:
        if result.protocol != protocol:
            continue
        cell = (result.model, result.dataset)
        if cell not in newest or result.finished > newest[cell].finished:
            newest[cell] = result
    failed: dict[tuple[str, str], FailedJob] = {}
    for failure in failures:
        cell = (failure.model, failure.dataset)
        if failure.protocol not in (None, protocol) or cell in newest:
            continue
        if cell not in failed or failure.finished > failed[cell].finished:
            failed[cell] = failure
    return Selection(root=root, protocol=protocol, results=newest, failures=failed)


def read_per_class(job_dir: Path) -> list[dict[str, Any]]:
    """per_class.csv rows: ``class`` as text, every other column a float (None when empty); [] if absent."""
    path = job_dir / PER_CLASS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [
            {key: text if key == "class" else number(text, text=True) for key, text in row.items()}
            for row in csv.DictReader(handle)
        ]
