"""Checkpoints of a loop that saves its state: one scheme for the trainer's optimizer steps, Reflect-RL's
RL iterations and AdaRefiner's play iterations.

A loop's checkpoints live in one folder. `step-N/` holds the state after step N and is complete once its
`checkpoint.json` exists; the mark records the size of every file the checkpoint holds. A new checkpoint is
written into `writing/`, marked, renamed to `step-N/`, and only then are the older ones removed but the
previous one: a crash at any point leaves a complete checkpoint to resume from (or none, before the first),
and a newest one damaged afterwards (a truncated or emptied file, a bad mark, an impossible step) is
skipped with a warning that names what is wrong, for the previous one (or the loop's start). What a
checkpoint holds is the loop's own business (accelerate's state, a policy and its optimizer, an SB3 agent
and pickled worlds).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from feedlearn.data.jsonl import write_json_atomic

MARK = "checkpoint.json"
"""Written last into a checkpoint: its step and its files' sizes. A folder without it is incomplete and
never resumed from."""
KEEP = 2
"""Complete checkpoints kept: the newest and the one before, to fall back on if the newest is damaged."""

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoints of one loop in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writing = folder / "writing"
        """Where the next checkpoint's files are written, by every process that writes some."""

    def latest(self, last_step: int | None = None) -> tuple[int, Path] | None:
        """The newest sound checkpoint's step and folder, or None; a damaged one is skipped with a
        warning. `last_step`: the loop's last step (a checkpoint past it is damaged)."""
        return next(self.sound(last_step), None)

    def sound(self, last_step: int | None = None) -> Iterator[tuple[int, Path]]:
        """The complete checkpoints that pass `damage`, newest first, each damaged one warned about."""
        marked = [p for p in self.folder.glob("step-*") if (p / MARK).exists()]
        by_step = sorted(marked, key=lambda p: _step_of(p.name), reverse=True)
        for folder in by_step:
            problem = damage(folder, last_step)
            if problem is None:
                yield _step_of(folder.name), folder
            else:
                log.warning(
                    "checkpoint %s is damaged (%s): skipped, an older one or the start is used",
                    folder,
                    problem,
                )

    def begin(self) -> Path:
        """Empty `writing/` for a new checkpoint and return it (one process calls this)."""
        shutil.rmtree(self.writing, ignore_errors=True)
        self.writing.mkdir(parents=True)
        return self.writing

    def commit(self, step: int) -> Path:
        """Mark what `writing/` holds as the checkpoint after `step` (with its files' sizes), then remove
        all older ones but the previous complete one."""
        files = {
            str(f.relative_to(self.writing)): f.stat().st_size
            for f in sorted(self.writing.rglob("*"))
            if f.is_file()
        }
        write_json_atomic(self.writing / MARK, {"step": step, "files": files})
        target = self.folder / f"step-{step}"
        shutil.rmtree(target, ignore_errors=True)  # a same-step checkpoint of a run that was cut short
        self.writing.rename(target)
        older = (p for _, p in self.sound() if p != target)
        kept = [target, *islice(older, KEEP - 1)]  # checks the older ones only until one is sound
        for old in self.folder.glob("step-*"):
            if old not in kept:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """One process's checkpoint: `write(folder)` writes the state, then it is committed as `step`'s."""
        write(self.begin())
        return self.commit(step)

    def remove(self) -> None:
        """Remove every checkpoint (the loop finished and saved its result)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def damage(folder: Path, last_step: int | None = None) -> str | None:
    """What is wrong with the checkpoint in `folder`, or None: an unreadable mark, a step that is not the
    folder's or is past `last_step`, a missing file or one whose size is not the one recorded."""
    try:
        mark = json.loads((folder / MARK).read_text(encoding="utf-8"))
        step = mark["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MARK} is unreadable: {type(e).__name__}"
    if not isinstance(step, int) or step != _step_of(folder.name):
        return f"{MARK} gives step {step!r} for folder {folder.name}"
    if last_step is not None and not 0 < step <= last_step:
        return f"its step {step} is past the loop's last step, {last_step}"
    for name, size in mark.get("files", {}).items():  # marks written before sizes were recorded have none
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if (found := path.stat().st_size) != size:
            return f"{name} has {found} bytes, {size} were written"
    return None


def _step_of(name: str) -> int:
    """N of a `step-N` folder name (-1 for any other)."""
    number = name.removeprefix("step-")
    return int(number) if number.isdigit() else -1
