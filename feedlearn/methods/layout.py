"""A run folder's layout: where each stage of a method reads and writes, and when it is finished.

Each method declares one `Layout` subclass, the only place its run paths and its sampling keys are
spelled out: its stages, `serve` (`policies`) and `report` (`evaluations`) read them from there. The
done rule (`data.store`) is the same for every stage: a stage's work is finished once the file it writes
last is there (`DONE` in a trained model's folder, or in the folder of a stage that trains something
else; `EVALUATED` in an evaluation's), and a finished stage is skipped when it runs again.
"""

from __future__ import annotations

from pathlib import Path

from feedlearn.data.store import DONE, EVALUATED
from feedlearn.errors import DataError, FeedlearnError


class MissingInput(DataError):
    """A stage's input is not in the run folder: the stage that writes it has not run."""


class Layout:
    """One run folder's paths. Stage folders are created on first use; `policies` and `evaluations` only
    look."""

    def __init__(self, root: Path, method: str):
        self.root = Path(root)
        self.method = method

    def folder(self, name: str) -> Path:
        """The folder `name` (a relative path) of the run, created on first use."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def name(self, folder: Path) -> str:
        """A folder's name in the run (its path from the run folder): the stage name of its metrics."""
        return folder.relative_to(self.root).as_posix()

    def replies(self, role: str) -> Path:
        """Where the paid replies of a remote model in `role` (teacher, judge...) are kept."""
        return self.folder("replies") / f"{role}.jsonl"

    def policies(self) -> list[Path]:
        """The trained policies' model folders, the one to serve first; each counts once `is_done`."""
        raise NotImplementedError

    def evaluations(self) -> dict[str, Path]:
        """The finished evaluations, by name: the folder's path under `evaluate/` (`evaluate/iter1` ->
        iter1), or the run's name for `evaluate/` itself. Only looks."""
        found = sorted(p.parent for p in (self.root / "evaluate").glob(f"**/{EVALUATED}"))
        return {"/".join(f.relative_to(self.root).parts[1:]) or self.root.name: f for f in found}

    def numbered(self, prefix: str, rest: str) -> list[Path]:
        """`<prefix><n>/<rest>` for every n there is, highest n first (iter3/train/model, iter2/...)."""
        found = [(d.name[len(prefix) :], d) for d in self.root.glob(f"{prefix}*")]
        return [d / rest for n, d in sorted((x for x in found if x[0].isdigit()), key=lambda x: -int(x[0]))]

    def moved(self) -> dict[str, str]:
        """Folders an older feedlearn wrote elsewhere ({old: new}, paths in the run folder): an evaluation
        in `<name>/evaluate/` (RISE's `iter<i>`, `base`; C3PO's feedback ids), now `evaluate/<name>/`."""
        found = sorted(d.parent.name for d in self.root.glob("*/evaluate") if d.parent.name != "evaluate")
        return {f"{name}/evaluate": f"evaluate/{name}" for name in found}

    def check_moved(self) -> None:
        """Refuse a run folder that holds a folder at its old place, with the command that moves it."""
        for old, new in self.moved().items():
            if (self.root / old).is_dir() and not (self.root / new).exists():
                raise FeedlearnError(
                    f"{self.root / old}: an older feedlearn's place for it; move it with "
                    f"`mv {self.root / old} {self.root / new}` and run again"
                )

    def finished(self, folder: Path, stage: str) -> Path:
        """`folder` (a model folder, or the folder of a stage that trains no model) once the stage writing
        it is done (the done rule: its `DONE` marker is there), or an error naming that stage."""
        return self.require(folder / DONE, stage).parent

    def require(self, path: Path, stage: str) -> Path:
        """`path`, or an error naming the stage (`feedlearn <method> <stage>`) that writes it."""
        if not path.exists():
            raise MissingInput(
                f"{path} is missing: run `feedlearn {self.method} {stage}` first (or `feedlearn run`)"
            )
        return path
