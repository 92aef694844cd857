"""AutoExplore (Reflect-RL): answer a question about a code repository by navigating it, sandboxed.

Tasks are generated from a local repository tree: which file defines a Python function or class, which
file sets a configuration key. The agent moves with `cd`, reads with `cat` and answers with `id <file>`.

Sandbox: the environment never executes anything and never reads or lists outside the repository root.
Only plain names are listed (no symlinks, no hidden names, none with `/`, `\\`, `~` or control
characters); an action must be one of the current choices; every path is checked again when it is used
(its real path must equal the plain path under the root, so no link is followed anywhere); files are
opened with O_NOFOLLOW, must be regular files, and at most a few bytes per output character are read.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import random
import re
import stat
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import FeedlearnError

logger = logging.getLogger(__name__)
_unreadable: set[str] = set()
"""Folders already reported as unreadable (each is logged once)."""

CAT_SUFFIXES = (".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".json", ".cfg", ".ini", ".rst", ".sh")
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json", ".cfg", ".ini")
IGNORED_NAMES = {"__pycache__", "node_modules"}
"""Folders never listed (besides hidden names)."""
SCAN_BYTES = 200_000
"""Task generation reads at most this many bytes of each file."""
STEP_COST, ERROR_COST, WARNING_COST, ANSWER_COST = 1.0, 2.0, 1.0, 15.0

QUESTIONS = {
    "function": "Which file defines the function `{}`?",
    "class": "Which file defines the class `{}`?",
    "config": "Which file sets the configuration key `{}`?",
}
KEY = r"[A-Za-z_][\w.-]*"
PY_DEF = re.compile(r"^(?:async[ \t]+)?(def|class)[ \t]+([A-Za-z_]\w*)", re.M)
YAML_KEY = re.compile(rf"^({KEY})[ \t]*:(?:[ \t]|$)", re.M)
INI_KEY = re.compile(rf"^({KEY})[ \t]*[=:]", re.M)  # also TOML keys (in any table)


class ExploreTask(BaseModel):
    """A question whose answer is a file of the repository."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The question shown to the agent.")
    targets: list[str] = Field(
        min_length=1, description="Repo-relative paths ('src/a.py') of the files that answer it."
    )
    depth: int = Field(ge=0, description="Folders between the root and the nearest target (0: at the root).")
    kind: Literal["function", "class", "config", "other"] = Field(
        default="other", description="What the question asks about."
    )


class AutoExploreSettings(BaseModel):
    """Horizon, output size, file hiding, curriculum and seed of an AutoExplore."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=15, ge=1, description="Horizon: the episode is truncated after it.")
    hide_unrelated: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Per episode, hide each file or folder not on the path to a target with this "
        "probability (0.5 in training).",
    )
    max_output_chars: int = Field(
        default=1000, ge=1, description="`cat` output is truncated to this many characters."
    )
    history: int = Field(default=5, ge=1, description="How many past commands the state shows.")
    timeout_cost: float = Field(
        default=ANSWER_COST,
        ge=0,
        description="Cost added when the horizon runs out before an answer: the reference's 15, what a "
        "wrong answer costs (0: none, so stalling costs less than any wrong guess).",
    )
    cat_suffixes: list[str] = Field(
        default_factory=lambda: list(CAT_SUFFIXES), description="Files with these suffixes may be `cat`."
    )
    max_depth: int | None = Field(
        default=None, ge=0, description="Curriculum: keep only tasks at most this deep (None: all)."
    )
    depth: int | tuple[int, ...] | None = Field(
        default=None,
        description="Curriculum: keep only tasks exactly this deep, or at any of these depths (a merged "
        "level, as the reference's merge_first_two); None: all.",
    )
    seed: int = Field(default=0, description="Generates the tasks and seeds resets without a seed.")


def _plain_name(name: str) -> bool:
    """Whether `name` is listed and may be acted on: not hidden, no separators, `~` or control chars."""
    return (
        bool(name)
        and name.isprintable()
        and not name.startswith(".")
        and not any(c in name for c in "/\\~")
        and name not in IGNORED_NAMES
    )


def _entries(path: str) -> tuple[list[str], list[str]]:
    """The plain-named real folders and regular files in `path` (symlinks are never listed), sorted."""
    dirs, files = [], []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if not _plain_name(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
    except OSError as e:  # shown as empty, as `ls` of an unreadable folder shows nothing; said once
        if path not in _unreadable:
            _unreadable.add(path)
            logger.warning("cannot list %s (%s): the environment shows it as an empty folder", path, e)
        return [], []
    return sorted(dirs), sorted(files)


def read_prefix(path: str, limit: int) -> bytes:
    """At most `limit` bytes of the regular file `path`, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{os.path.basename(path)} is not a regular file")
        return f.read(limit)


def listed_files(root: str) -> list[str]:
    """Repo-relative paths of the listed files under `root`, in a fixed order (a folder's files, then each
    subfolder's, depth first); walked with a stack, so a deeply nested repository has no depth limit."""
    out, pending = [], [""]
    while pending:
        rel = pending.pop()
        dirs, files = _entries(os.path.join(root, rel))
        out += [f"{rel}{name}" for name in files]
        pending += [f"{rel}{name}/" for name in reversed(dirs)]
    return out


def _symbols(suffix: str, text: str) -> list[tuple[str, str]]:
    """(kind, name) of the top-level definitions (.py) or configuration keys in a file's text."""
    if suffix == ".py":
        return [("function" if kw == "def" else "class", name) for kw, name in PY_DEF.findall(text)]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past what the parser recurses into
            return []
        keys = list(data) if isinstance(data, dict) else []
        return [("config", k) for k in keys if re.fullmatch(KEY, k)]
    pattern = YAML_KEY if suffix in (".yaml", ".yml") else INI_KEY
    return [("config", k) for k in pattern.findall(text)]


def select_depth(
    tasks: Sequence[ExploreTask], max_depth: int | None = None, depth: int | tuple[int, ...] | None = None
) -> list[ExploreTask]:
    """The curriculum filter: tasks at most `max_depth` deep and exactly `depth` deep, or at one of the
    depths `depth` lists (None: no limit)."""
    depths = [depth] if isinstance(depth, int) else depth
    return [
        t
        for t in tasks
        if (max_depth is None or t.depth <= max_depth) and (depths is None or t.depth in depths)
    ]


def generate_tasks(root: str | os.PathLike, seed: int = 0, max_depth: int | None = None) -> list[ExploreTask]:
    """Questions about the repository at `root`, shuffled by `seed`.

    One task per top-level Python function or class and per configuration key (top-level keys of
    YAML/JSON, keys of TOML/CFG/INI) that exactly one file defines; names defined in several files are
    ambiguous and skipped. Only listed files are read (see the module docstring), nothing is executed.
    """
    root = os.path.realpath(root)
    found: dict[tuple[str, str], set[str]] = {}
    for rel in listed_files(root):
        suffix = os.path.splitext(rel)[1].lower()
        if suffix != ".py" and suffix not in CONFIG_SUFFIXES:
            continue
        try:
            text = read_prefix(os.path.join(root, rel), SCAN_BYTES).decode()
        except (OSError, UnicodeDecodeError):
            continue
        for symbol in _symbols(suffix, text):
            found.setdefault(symbol, set()).add(rel)
    tasks = [
        ExploreTask(question=QUESTIONS[kind].format(name), targets=[rel], depth=rel.count("/"), kind=kind)
        for (kind, name), files in sorted(found.items())
        if len(files) == 1
        for rel in files
    ]
    tasks = select_depth(tasks, max_depth=max_depth)
    random.Random(seed).shuffle(tasks)
    return tasks


class AutoExplore:
    """Navigate a repository to find the file that answers a question (a `TextEnv`).

    Choices: `cd ..` (below the root), `cd <folder>`, `cat <file>` (allowed suffixes), `id <file>`
    (answer; ends the episode). Cost 1 per step, +2 per error (a binary or unreadable file, a path that
    became a link), +1 per warning (reading a file again); `id` adds -15 for a target, +15 otherwise, and
    running out of steps without an answer adds `timeout_cost` (15, as in the reference).
    Reward = -cost; `info` carries `success` (total cost at most 0: the reference's threshold, 0.01, on
    whole-number costs), `cost`, `total_cost`, `error`, `warning`.
    An action that is not a current choice raises a `FeedlearnError`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        tasks: Sequence[ExploreTask] | None = None,
        settings: AutoExploreSettings | None = None,
    ):
        self.settings = settings or AutoExploreSettings()
        self.max_steps = self.settings.max_steps
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise FeedlearnError(f"AutoExplore: repository root {str(root)!r} is not a folder")
        tasks = generate_tasks(self.root, self.settings.seed) if tasks is None else tasks
        self.tasks = select_depth(tasks, self.settings.max_depth, self.settings.depth)
        if not self.tasks:
            raise FeedlearnError(
                f"AutoExplore: no tasks under {self.root} at this depth; relax max_depth/depth"
            )
        for task in self.tasks:
            self._check(task)
        self.rng = random.Random(self.settings.seed)
        self.running = False

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[TextObservation, dict[str, Any]]:
        """Start at the root with a random task, or with `options["task"]` (an `ExploreTask`)."""
        if seed is not None:
            self.rng = random.Random(seed)
        task = (options or {}).get("task")
        self.task = self.rng.choice(self.tasks) if task is None else ExploreTask.model_validate(task)
        self._check(self.task)
        self.cwd: tuple[str, ...] = ()
        self.steps, self.total_cost, self.running = 0, 0.0, True
        self.history: list[str] = []
        self.read: set[str] = set()
        self.output = ""
        self.episode_seed = self.rng.getrandbits(64)  # draws the hidden files
        self.on_path = {t.rsplit("/", i)[0] for t in self.task.targets for i in range(t.count("/") + 1)}
        self._look()
        return self.observation(), {"task": self.task, "level": self.task.depth}

    def step(self, action: str) -> tuple[TextObservation, float, bool, bool, dict[str, Any]]:
        """Act with one of the current choices; return (observation, reward, terminated, truncated, info)."""
        if not self.running:
            raise FeedlearnError("AutoExplore: no episode is running; call reset() first")
        if action not in self.choices:
            raise FeedlearnError(f"AutoExplore: {action!r} is not one of the current choices")
        verb, _, name = action.partition(" ")
        path = "/".join((*self.cwd, name))
        cost, error, warning, terminated = STEP_COST, False, False, False
        try:
            if verb == "id":
                correct = path in self.task.targets
                cost += -ANSWER_COST if correct else ANSWER_COST
                self.output = f"{path} {'is' if correct else 'is not'} the answer."
                terminated = True
            elif verb == "cd":
                cwd = self.cwd[:-1] if name == ".." else (*self.cwd, name)
                if not os.path.isdir(self._path(cwd)):
                    raise FeedlearnError(f"{name} is not a folder")
                self.cwd, self.output = cwd, ""
            else:
                warning = path in self.read
                self.read.add(path)
                self.output = ("Warning: you read this file before.\n" if warning else "") + self._cat(path)
        except FeedlearnError as e:
            error, self.output = True, f"Error: {e}"
        cost += ERROR_COST * error + WARNING_COST * warning
        self.steps, self.total_cost = self.steps + 1, self.total_cost + cost
        self.history.append(action)
        truncated = not terminated and self.steps >= self.max_steps
        if truncated:
            cost += self.settings.timeout_cost
            self.total_cost += self.settings.timeout_cost
        self.running = not (terminated or truncated)
        self._look()
        info = {
            "success": self.total_cost <= 0,
            "cost": cost,
            "total_cost": self.total_cost,
            "error": error,
            "warning": warning,
        }
        return self.observation(), -cost, terminated, truncated, info

    def oracle_action(self) -> str:
        """The next step of a shortest path to a target: `cd ..` up, `cd <folder>` down, then `id`."""
        if not self.running:
            raise FeedlearnError("AutoExplore: no episode is running; call reset() first")

        def plan(target: str) -> tuple[int, str]:
            *folders, name = target.split("/")
            common = len(os.path.commonprefix([folders, list(self.cwd)]))
            if len(self.cwd) > common:
                action = "cd .."
            elif len(folders) > common:
                action = f"cd {folders[common]}"
            else:
                action = f"id {name}"
            return len(self.cwd) + len(folders) - 2 * common, action

        return min(plan(t) for t in self.task.targets)[1]

    def observation(self) -> TextObservation:
        """The state as text (task, folder, its contents, recent commands, last output) and the choices."""
        lines = [
            f"Task: {self.task.question}",
            f"Current directory: /{'/'.join(self.cwd)}",
            f"Folders: {', '.join(self.dirs) or '(none)'}",
            f"Files: {', '.join(self.files) or '(none)'}",
            f"History: {'; '.join(self.history[-self.settings.history :]) or '(none)'}",
            f"Last output:\n{self.output or '(none)'}",
        ]
        return TextObservation(state="\n".join(lines), choices=list(self.choices))

    def _look(self) -> None:
        """List the current folder (less hidden unrelated entries) and set the choices."""
        try:
            dirs, files = _entries(self._path(self.cwd))
        except FeedlearnError:  # the folder became a link: show nothing
            dirs, files = [], []
        self.dirs, self.files = self._shown(dirs), self._shown(files)
        cat = [f for f in self.files if os.path.splitext(f)[1].lower() in self.settings.cat_suffixes]
        self.choices = (
            (["cd .."] if self.cwd else [])
            + [f"cd {d}" for d in self.dirs]
            + [f"cat {f}" for f in cat]
            + [f"id {f}" for f in self.files]
            if self.running
            else []
        )

    def _shown(self, names: list[str]) -> list[str]:
        """`names` here less those hidden this episode (never one on the path to a target)."""
        p = self.settings.hide_unrelated
        paths = {name: "/".join((*self.cwd, name)) for name in names}
        return [
            n
            for n, path in paths.items()
            if path in self.on_path or random.Random(f"{self.episode_seed}:{path}").random() >= p
        ]

    def _path(self, parts: Sequence[str]) -> str:
        """The absolute path of repo-relative `parts`; refuses odd names and any path through a link."""
        path = os.path.join(self.root, *parts)
        if not all(_plain_name(p) for p in parts) or os.path.realpath(path) != path:
            raise FeedlearnError(f"{'/'.join(parts)!r} is outside the repository or behind a link")
        return path

    def _cat(self, rel: str) -> str:
        """The start of the text file `rel`, truncated to `max_output_chars` with a marker."""
        limit = self.settings.max_output_chars
        try:
            data = read_prefix(self._path(rel.split("/")), 4 * limit + 4)  # enough bytes for `limit` chars
            if b"\0" in data:
                raise UnicodeError
            text = codecs.getincrementaldecoder("utf-8")().decode(data)  # drops a cut multi-byte char
        except UnicodeError:
            raise FeedlearnError(f"{rel} is a binary file") from None
        except OSError as e:
            raise FeedlearnError(f"cannot read {rel}: {e.strerror or 'not a regular file'}") from None
        if len(text) > limit or len(data) == 4 * limit + 4:
            return f"{text[:limit]}\n[... truncated to {limit} characters]"
        return text or "(empty file)"

    def _check(self, task: ExploreTask) -> None:
        """Refuse a task whose targets are not listed regular files under the root."""
        for target in task.targets:
            try:
                listed = os.path.isfile(self._path(target.split("/")))
            except FeedlearnError:
                listed = False
            if not listed:
                raise FeedlearnError(
                    f"AutoExplore: target {target!r} of {task.question!r} "
                    f"is not a listed file under {self.root}"
                )
