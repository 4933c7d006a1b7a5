"""Find job results under a results root and pick the ones a report shows.

This is the only module of the report that reads a job's result files (metrics.json,
error.json, per_class.csv), so the contract between runs and reports is read in one place;
the file names come from ``vaes4rs.files``, which the writers use too. ``number`` is the one
reading of a number for every file a report reads.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from vaes4rs.files import ERROR_FILE, PER_CLASS_FILE, RESULT_FILE

HYDRA_CONFIG = Path(".hydra") / "config.yaml"


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
    metrics: dict[str, float]
    model_stats: dict[str, Any]
    finished: float

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


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar numbers only: CI pairs, lists and flags are not table cells."""
    return {key: float(value) for key, value in metrics.items() if number(value) is not None}


def read_result(path: Path) -> JobResult:
    """One metrics.json; ``path`` is the file itself."""
    try:
        payload = json.loads(path.read_text())
        protocol = payload["protocol"]
        return JobResult(
            path=path.parent,
            model=str(payload["model"]),
            dataset=str(payload["dataset"]),
            protocol=str(protocol["name"]),
            protocol_params={k: v for k, v in protocol.items() if k != "name"},
            n_images=int(payload.get("n_images", 0)),
            n_skipped=int(payload.get("n_skipped", 0)),
            metrics=_numeric(payload.get("metrics", {})),
            model_stats=dict(payload.get("model_stats", {})),
            finished=_timestamp(payload, path),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path} is not a valid result file: {type(exc).__name__}: {exc}") from exc


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


def read_failure(path: Path) -> FailedJob:
    """One error.json; model, dataset and protocol as the job resolved them, else from its Hydra config."""
    record = json.loads(path.read_text())
    error = record.get("error", "unknown error")
    config_file = path.parent / HYDRA_CONFIG
    config: dict[str, Any] = {}
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}

    def plain(group: str, key: str) -> str | None:
        value = (config.get(group) or {}).get(key)
        return value if isinstance(value, str) and "${" not in value else None

    model, dataset = _names_from_dir(
        path.parent.name,
        record.get("model") or plain("model", "name"),
        record.get("dataset") or plain("dataset", "name"),
    )
    return FailedJob(
        path=path.parent,
        model=model,
        dataset=dataset,
        protocol=record.get("protocol") or plain("metric", "protocol"),
        error=str(error),
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
    if not results:
        hint = f" ({len(failures)} failed job(s) with {ERROR_FILE})" if failures else ""
        raise ReportError(
            f"no {RESULT_FILE} found under {root}{hint}; pass the results folder with --results"
        )
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
