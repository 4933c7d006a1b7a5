"""One directory per job, holding only that job's results: names, a lock, and refusals.

A job directory records the config its results belong to (``run_config.json``). A run that
finds another config's results there never writes over them: in a sweep the directory name
gets a suffix (results land beside the old ones), in a single run it is refused, naming the
keys that differ. A rerun of the same config replaces stale files, so ``metrics.json``,
``per_image.csv`` and ``error.json`` are only ever the current run's. A lock keeps two runs
from writing into one directory at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaes4rs import files
from vaes4rs.errors import InputError

# Settings that change how a run looks, not its numbers.
NON_RESULT_KEYS = (
    "run.progress",
    "run.experiment",
    "run.checkpoint_every",
    "run.skip_finished",
    "run.resume",
    "run.feature_cache_mb",
    "logger",
    "dataset.num_workers",
)
# What a job directory may hold from an earlier run; cleared before a rerun of the same config.
RESULT_NAMES = (
    files.RESULT_FILE,
    files.ERROR_FILE,
    files.PER_IMAGE_FILE,
    files.PER_CLASS_FILE,
    files.SAMPLES_FILE,
    files.SAMPLES_DIR,
    files.RECONSTRUCTIONS_DIR,
    files.CHECKPOINT_FILE,
)
SWEPT_KEYS_ENV = "VAES4RS_SWEPT_KEYS"
# Swept keys already visible in "<model.name>-<dataset.name>" (local names come from folders).
NAMED_KEYS = (
    "model",
    "dataset",
    "model.name",
    "dataset.name",
    "model.path",
    "model.subfolder",
    "dataset.root",
)
MAX_DIRNAME = 120
refused_dirs: set[Path] = set()  # job directories this process refused, for the sweep summary


class RunDirectoryError(InputError):
    """The job directory is in use or holds results of another config."""


def result_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved task config minus settings that do not change numbers (what results belong to)."""
    container = OmegaConf.to_container(
        OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg, resolve=True, enum_to_str=True
    )
    assert isinstance(container, dict)
    container.pop("hydra", None)
    for key in NON_RESULT_KEYS:
        group, _, leaf = key.partition(".")
        if leaf:
            container.get(group, {}).pop(leaf, None)
        else:
            container.pop(group, None)
    return container


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs, dotted keys."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(config_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def recorded_config(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / files.RUN_CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _holds_results(job_dir: Path) -> bool:
    return any((job_dir / name).exists() for name in RESULT_NAMES)


@dataclass(frozen=True)
class Claim:
    """What the directory held for this config: a checkpoint to resume from, or finished results."""

    resume: bool
    finished: bool


@contextmanager
def claim(
    job_dir: Path, config: dict[str, Any], *, skip_finished: bool = False, resume: str = "auto"
) -> Iterator[Claim]:
    """Hold ``job_dir`` for a run of ``config`` (see the module docstring) until the block ends.

    Same config: a checkpoint is kept (and per_image.csv with it) so the run resumes (unless
    ``resume`` is "never"); finished results are kept when ``skip_finished``; every other result
    file is cleared.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    with (job_dir / files.LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunDirectoryError(
                f"another vaes4rs run is writing to {job_dir}; wait for it or choose another directory"
            ) from exc
        try:
            previous = recorded_config(job_dir)
            if previous is not None and previous != config:
                changes = config_differences(previous, config)
                raise RunDirectoryError(
                    f"{job_dir} holds results of another config ({'; '.join(changes[:10])}); "
                    "choose another hydra.run.dir (or remove that directory)"
                )
            if previous is None and _holds_results(job_dir):
                raise RunDirectoryError(
                    f"{job_dir} holds results without a recorded config ({files.RUN_CONFIG_FILE}); "
                    "choose another hydra.run.dir (or remove that directory)"
                )
            if skip_finished and (job_dir / files.RESULT_FILE).is_file():
                yield Claim(resume=False, finished=True)
                return
            has_checkpoint = (job_dir / files.CHECKPOINT_FILE).is_file()
            if resume == "require" and not has_checkpoint:
                raise RunDirectoryError(
                    f"run.resume=require but there is no {job_dir / files.CHECKPOINT_FILE} to resume from"
                )
            resuming = has_checkpoint and resume != "never"
            kept_on_resume = {files.CHECKPOINT_FILE, files.PER_IMAGE_FILE, files.RECONSTRUCTIONS_DIR}
            keep = kept_on_resume if resuming else set()
            for name in RESULT_NAMES:
                stale = job_dir / name
                if name in keep:
                    continue
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
            tmp = job_dir / f"{files.RUN_CONFIG_FILE}.tmp"
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            tmp.replace(job_dir / files.RUN_CONFIG_FILE)
            yield Claim(resume=resuming, finished=False)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remember_swept_keys(argv: list[str]) -> None:
    """Note which overrides of this command sweep (``key=a,b``), for the jobs' directory names.

    Kept in the environment so jobs started by a launcher in another process see it too.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(
        [a for a in argv if "=" in a and not a.startswith("-")]
    )
    swept = [o.key_or_group for o in overrides if o.is_sweep_override()]
    os.environ[SWEPT_KEYS_ENV] = ",".join(swept)


def job_dirname(_root_: DictConfig) -> str:
    """``<model>-<dataset>`` plus the swept overrides not already in it; a suffix beside another config.

    Registered as the ``vaes4rs.job_dir`` resolver for ``hydra.sweep.subdir``.
    """
    name = f"{_root_.model.name}-{_root_.dataset.name}"
    from_command = os.environ.get(SWEPT_KEYS_ENV, "").split(",")
    # keys an experiment preset sweeps (hydra.sweeper.params) name the jobs too
    from_config = list(OmegaConf.select(_root_, "hydra.sweeper.params", default=None) or {})
    swept = [k for k in dict.fromkeys([*from_command, *from_config]) if k and k not in NAMED_KEYS]
    task = {
        o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in _root_.hydra.overrides.task if "=" in o
    }
    parts = [f"{key}={task[key]}" for key in swept if key in task]
    if parts:
        name += "__" + ",".join(parts).replace("/", "_").replace(" ", "")
    if len(name) > MAX_DIRNAME:
        name = name[: MAX_DIRNAME - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    sweep_dir = Path(str(_root_.hydra.sweep.dir))
    config = result_config(OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"]))
    candidate, n = name, 1
    while (previous := recorded_config(sweep_dir / candidate)) is not None and previous != config:
        n += 1
        candidate = f"{name}-{n}"
    return candidate
