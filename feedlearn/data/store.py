"""The run store: `runs/<run_id>/` holds the resolved config, one folder per stage, metrics and reports.

One process writes a run folder at a time: `open_run` takes a lock on it (an `flock` on `.lock`, which the
kernel releases when its holder exits, however it exits, so a dead process leaves no stale lock) and refuses a
second writer with a one-line message naming the folder and the holder's process id.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from accelerate.utils import broadcast_object_list

from feedlearn.data.jsonl import drop_torn_tail, write_text_atomic
from feedlearn.errors import ConfigError, FeedlearnError
from feedlearn.processes import process_state
from feedlearn.trackers import Trackers

LOCK = ".lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
_held: dict[Path, int] = {}
"""Run folders this process has locked, and the lock file's descriptor (held until the process exits)."""
NEARLY_FULL_BYTES = 64 << 20
"""Free space under which a failed write (say torch's 'iostream error', which names no cause) is put down
to a full disk."""


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics as one level of `a/b` keys."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


DONE = "done.json"
"""The done rule: a stage's work is finished once the file it writes last is in its folder: `DONE` in a
trained model's folder (or in the folder of a stage that trains no model), `EVALUATED` in an evaluation's."""
EVALUATED = "metrics.json"


def is_done(folder: Path) -> bool:
    """Whether the stage writing `folder` (a model folder, or the folder of a stage without one) finished."""
    return (folder / DONE).exists()


def is_evaluated(folder: Path) -> bool:
    """Whether the evaluation writing `folder` finished."""
    return (folder / EVALUATED).exists()


class RunStore:
    """One run's folder (a method's `Layout` says where in it each stage writes); metrics go to
    `metrics.jsonl`."""

    def __init__(self, root: str | Path, run_id: str):
        self.run_id = run_id
        self.path = Path(root) / run_id
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / METRICS
        self._repaired = False  # a torn last line is dropped before this store first writes, never sooner
        self.trackers: Trackers | None = None
        """The recipe's experiment trackers (`report_to`), which get every metrics row too."""

    def save_config(self, config: dict[str, Any]) -> None:
        """Write the resolved config as `config.yaml` (secrets never live in configs, only env var names)."""
        write_text_atomic(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def log_metrics(self, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one metrics row (stage, step, wall time, values; nested metrics as `a/b` keys) to
        `metrics.jsonl`. A row without a step
        is the stage's summary: it replaces the summary an earlier run of the stage logged. Under several
        processes the main one alone writes (the others' calls do nothing)."""
        if not process_state().is_main_process:
            return
        if step is None:
            self._keep_rows(lambda row: not (row["stage"] == stage and row["step"] is None))
        metrics = flatten(metrics)
        row = {"stage": stage, "step": step, "time": round(time.time(), 3), **metrics}
        self._repair()
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log(stage, metrics, step)

    def drop_metrics(self, stage: str, after_step: int) -> None:
        """Drop the rows of `stage` logged after step `after_step`: a stage resumed from its checkpoint
        there logs them again, so the file holds each step once. The main process alone writes."""
        if not process_state().is_main_process:
            return
        self._keep_rows(
            lambda row: not (row["stage"] == stage and row["step"] is not None and row["step"] > after_step)
        )

    def metrics(self) -> list[dict[str, Any]]:
        """Every metrics row, in the order logged."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines()]

    def _repair(self) -> None:
        """Drop a line torn by a crash (what a SIGKILL mid-write leaves) before this store's first write: a
        writer only, so a process refused the run's lock never touches the holder's file."""
        if not self._repaired:
            drop_torn_tail(self.metrics_path)
            self._repaired = True

    def _keep_rows(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        self._repair()
        rows = self.metrics()
        kept = [row for row in rows if keep(row)]
        if len(kept) < len(rows):
            write_text_atomic(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))

    def has_outputs(self) -> bool:
        """Whether any stage has written a file here (beyond the config and the lock)."""
        return any(p.is_file() and p.name not in (CONFIG, LOCK) for p in self.path.rglob("*"))

    def lock(self) -> None:
        """Become this folder's only writer, or raise a `FeedlearnError` naming the process that is."""
        key = self.path.resolve()
        if key in _held:
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FeedlearnError(
                f"run folder {self.path} is in use by process {holder}: wait for it to finish, or pass "
                "--run-id NEW to start another run"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = fd


def open_run(run_dir: str | Path, run_id: str, config: dict[str, Any]) -> RunStore:
    """The run folder for a resolved config, locked for this run (under several processes, by the main
    one). An existing run made with a different config is refused, so resuming never mixes the outputs of
    two configs; a folder in which no stage has written anything yet (a run that failed at once, say on a
    mistyped path) takes the new config."""
    store = RunStore(run_dir, run_id)
    state = process_state()
    refusal = None
    if state.is_main_process:
        try:
            store.lock()
        except FeedlearnError as e:
            refusal = str(e)
    if state.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise FeedlearnError(refusal)
    saved = store.path / CONFIG
    if saved.exists() and yaml.safe_load(saved.read_text(encoding="utf-8")) != config and store.has_outputs():
        raise ConfigError(
            f"run '{store.path}' was made with a different config: pass --run-id NEW to start another run, "
            "or delete the folder"
        )
    if state.is_main_process:
        store.save_config(config)
        if config.get("report_to"):
            store.trackers = Trackers(config["report_to"], store.path / "trackers", run_id, config)
    return store


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Turn a write that failed under `folder` because the disk is full or the place is not writable into
    a one-line `FeedlearnError` that says so; other errors pass through untouched."""
    try:
        yield
    except FeedlearnError:
        raise
    except Exception as e:
        problem = write_problem(folder, e)
        if problem is None:
            raise
        raise FeedlearnError(problem) from None


def write_problem(folder: Path, error: Exception) -> str | None:
    """What a failed write means for the user, or None when it is not a full disk or a permission."""
    code = getattr(error, "errno", None)
    where = getattr(error, "filename", None) or folder
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"{where}: cannot write there ({os.strerror(code)}): make it writable, or choose another place "
            "(the recipe's run_dir; $FEEDLEARN_CACHE for tiny models)"
        )
    existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    nearly_full = isinstance(error, (OSError, RuntimeError)) and free < NEARLY_FULL_BYTES
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error) or nearly_full:
        return (
            f"{where}: the disk is full ({free >> 20} MiB free): free some space and run the same command "
            "again; the run resumes where it stopped"
        )
    return None
