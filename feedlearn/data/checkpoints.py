"""Checkpoints of a loop that saves its state: one scheme for the trainer's optimizer steps, Reflect-RL's
RL iterations and AdaRefiner's play iterations.

A loop's checkpoints live in one folder. `step-N/` holds the state after step N and is complete once its
`checkpoint.json` exists. A new checkpoint is written into `writing/`, marked, renamed to `step-N/`, and
only then are the older ones removed: a crash at any point leaves a complete checkpoint to resume from (or
none, before the first). What a checkpoint holds is the loop's own business (accelerate's state, a policy
and its optimizer, an SB3 agent and pickled worlds).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from feedlearn.data.jsonl import write_json_atomic

MARK = "checkpoint.json"
"""Written last into a checkpoint: its step. A folder without it is incomplete and never resumed from."""


class Checkpoints:
    """The checkpoints of one loop in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writing = folder / "writing"
        """Where the next checkpoint's files are written, by every process that writes some."""

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint's step and folder, or None."""
        done = [
            (json.loads((p / MARK).read_text())["step"], p)
            for p in self.folder.glob("step-*")
            if (p / MARK).exists()
        ]
        return max(done) if done else None

    def begin(self) -> Path:
        """Empty `writing/` for a new checkpoint and return it (one process calls this)."""
        shutil.rmtree(self.writing, ignore_errors=True)
        self.writing.mkdir(parents=True)
        return self.writing

    def commit(self, step: int) -> Path:
        """Mark what `writing/` holds as the checkpoint after `step`, then remove the older ones."""
        write_json_atomic(self.writing / MARK, {"step": step})
        target = self.folder / f"step-{step}"
        shutil.rmtree(target, ignore_errors=True)  # a same-step checkpoint of a run that was cut short
        self.writing.rename(target)
        for old in self.folder.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """One process's checkpoint: `write(folder)` writes the state, then it is committed as `step`'s."""
        write(self.begin())
        return self.commit(step)

    def remove(self) -> None:
        """Remove every checkpoint (the loop finished and saved its result)."""
        shutil.rmtree(self.folder, ignore_errors=True)
