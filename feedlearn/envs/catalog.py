"""The text environments a Reflect-RL recipe can name (`env.name`), their settings, train/test splits and
curriculum levels.

A level is what a curriculum steps through: DangerousTaxi's `pickup` / `dropoff` / `full`, AutoExplore's
target depth (0, 1, 2, ...) or several depths merged into one level ([0, 1]), TextWorld's difficulty (coin
collector and treasure hunter games). ALFWorld and gymnasium environments have no levels.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedlearn.data.jsonl import read_jsonl
from feedlearn.envs.alfworld_env import ALFWorldEnv
from feedlearn.envs.autoexplore import (
    AutoExplore,
    AutoExploreSettings,
    ExploreTask,
    generate_tasks,
    select_depth,
)
from feedlearn.envs.gymnasium_env import GymnasiumTextEnv, make_gymnasium
from feedlearn.envs.taxi import DangerousTaxi, TaxiLevel, TaxiSettings
from feedlearn.envs.text_env import TextEnv
from feedlearn.envs.textworld_env import LEVELS, TextWorldEnv, TextWorldSettings, check_level, game_files
from feedlearn.errors import ConfigError
from feedlearn.seeds import held_out

Split = Literal["train", "test"]
Level = str | int | tuple[int, ...]
TAXI_LEVELS = get_args(TaxiLevel)


class TaxiEnvSettings(TaxiSettings):
    """DangerousTaxi. Train and test episodes start from seeds of different purposes (`feedlearn.seeds`);
    its few start states are shared by both, as in the paper's setting."""

    name: Literal["taxi"] = Field(description="DangerousTaxi on gymnasium's Taxi.")


class AutoExploreEnvSettings(AutoExploreSettings):
    """AutoExplore over a local repository. `hide_unrelated` applies to training episodes only."""

    name: Literal["autoexplore"] = Field(description="AutoExplore over a local repository.")
    root: str | None = Field(
        default=None,
        description="The repository's folder; no action reaches outside it. None: a small synthetic "
        "repository (`mini_repo`) written into the run folder, for offline runs.",
    )
    tasks: str | None = Field(
        default=None,
        description="A JSONL file of tasks (question, targets, depth), e.g. written by a teacher; "
        "None: questions generated from the tree.",
    )
    test_share: float = Field(
        default=0.2, ge=0, lt=1, description="Share of the tasks held out for evaluation (by a hash of each)."
    )


class ALFWorldEnvSettings(BaseModel):
    """ALFWorld's text games through the alfworld package (not a dependency of feedlearn)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["alfworld"] = Field(description="ALFWorld through the alfworld package.")
    config: str = Field(description="An alfworld config file (with the expert plan enabled).")
    train_split: str = Field(default="train", description="alfworld's train_eval for training games.")
    test_split: str = Field(
        default="eval_out_of_distribution", description="alfworld's train_eval for test games."
    )
    max_steps: int = Field(default=50, ge=1, description="Horizon: the episode is truncated after it.")


class TextWorldEnvSettings(TextWorldSettings):
    """TextWorld games generated offline (the textworld extra); train and test games never coincide."""

    name: Literal["textworld"] = Field(description="TextWorld games of one family.")


class GymnasiumEnvSettings(BaseModel):
    """Any gymnasium environment with text observations and `info["choices"]` (see
    `feedlearn.envs.gymnasium_env` for the contract). Train and test episodes start from seeds of
    different purposes; `test_kwargs` can also point test episodes at other tasks."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["gymnasium"] = Field(description="A gymnasium text environment.")
    id: str | None = Field(default=None, description="A registered environment id (gymnasium.make).")
    entry_point: str | None = Field(
        default=None, description="Or the environment's class or factory, as 'module:Class'."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of every episode.")
    test_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of test episodes, over `kwargs`."
    )
    max_steps: int = Field(default=20, ge=1, description="Horizon: the episode is truncated after it.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.id is None) == (self.entry_point is None):
            raise ValueError("give exactly one of env.id and env.entry_point")
        return self


AnyEnvSettings = (
    TaxiEnvSettings
    | AutoExploreEnvSettings
    | ALFWorldEnvSettings
    | TextWorldEnvSettings
    | GymnasiumEnvSettings
)
EnvSettings = Annotated[AnyEnvSettings, Field(discriminator="name")]
"""A recipe's `env`: one of the settings above, chosen by its `name`."""


class EnvFactory:
    """Builds environments of one recipe: `make(split, level)`; validates levels."""

    def __init__(self, settings: AnyEnvSettings, extra_tasks: list[ExploreTask] = ()):
        """`extra_tasks`: AutoExplore tasks added to the settings' own (those a teacher wrote)."""
        self.settings = settings
        self.extra_tasks = list(extra_tasks)
        self._game_lists: dict[tuple[Split, int], list[Path]] = {}

    @property
    def default_level(self) -> Level | None:
        """The level the settings name (None: AutoExplore's every depth, or an environment without levels)."""
        s = self.settings
        if isinstance(s, TaxiEnvSettings):
            return s.level
        if isinstance(s, AutoExploreEnvSettings):
            return s.depth
        if isinstance(s, TextWorldEnvSettings) and s.family in LEVELS:
            return s.level
        return None

    def check_level(self, level: Level | None) -> None:
        """Raise a `ConfigError` for a level this environment does not have."""
        if level is None:
            return
        s = self.settings
        if isinstance(s, TaxiEnvSettings) and level not in TAXI_LEVELS:
            raise ConfigError(f"DangerousTaxi has no level {level!r}: choose from {', '.join(TAXI_LEVELS)}")
        if isinstance(s, AutoExploreEnvSettings):
            depths = level if isinstance(level, tuple) else [level]
            if not depths or not all(isinstance(d, int) and d >= 0 for d in depths):
                raise ConfigError(
                    f"AutoExplore levels are target depths (0, 1, ...) or lists of them, not {level!r}"
                )
            if not self.task_count(level):
                raise ConfigError(f"AutoExplore: no training task at depth {level} under {s.root}")
        if isinstance(s, TextWorldEnvSettings):
            check_level(s.family, level)
        if isinstance(s, ALFWorldEnvSettings | GymnasiumEnvSettings):
            raise ConfigError(f"env {s.name} has no curriculum levels")

    def make(self, split: Split, level: Level | None = None) -> TextEnv:
        """A fresh environment for `split` episodes at `level` (None: the settings' own)."""
        self.check_level(level)
        s = self.settings
        if isinstance(s, TaxiEnvSettings):
            return DangerousTaxi(TaxiSettings(**{**_own_fields(s, TaxiSettings), **_level(level, "level")}))
        if isinstance(s, AutoExploreEnvSettings):
            own = _own_fields(s, AutoExploreSettings)
            if split == "test":
                own["hide_unrelated"] = 0.0
            settings = AutoExploreSettings(**{**own, **_level(level, "depth")})
            return AutoExplore(s.root, self.tasks(split), settings)
        if isinstance(s, TextWorldEnvSettings):
            return TextWorldEnv(self._games(split, s.level if level is None else level), s.max_steps)
        if isinstance(s, GymnasiumEnvSettings):
            kwargs = {**s.kwargs, **(s.test_kwargs if split == "test" else {})}
            return GymnasiumTextEnv(make_gymnasium(s.id, s.entry_point, kwargs), s.max_steps)
        return ALFWorldEnv(s.config, s.train_split if split == "train" else s.test_split, s.max_steps)

    def _games(self, split: Split, level: int) -> list[Path]:
        """TextWorld's games of `split` at `level` (generated once, kept for the factory's life)."""
        key = (split, level)
        if key not in self._game_lists:
            self._game_lists[key] = game_files(self.settings, split, level)
        return self._game_lists[key]

    def task_count(self, level: Level | None) -> int | None:
        """How many training tasks `level` has (AutoExplore); None where levels have no tasks."""
        if not isinstance(self.settings, AutoExploreEnvSettings):
            return None
        return len(select_depth(self.tasks("train"), self.settings.max_depth, level))

    def tasks(self, split: Split) -> list[ExploreTask]:
        """AutoExplore's tasks of `split`: a task is a test task when a hash of its question and targets
        falls in the first `test_share` of the range, so the split does not move when tasks are added."""
        return self._split_tasks[split]

    @cached_property
    def _split_tasks(self) -> dict[str, list[ExploreTask]]:
        s = self.settings
        if s.root is None or not Path(s.root).is_dir():
            raise ConfigError(f"env.root: {s.root} is not a folder")
        tasks = read_jsonl(s.tasks, ExploreTask) if s.tasks else generate_tasks(s.root, s.seed, s.max_depth)
        tasks += self.extra_tasks
        split: dict[str, list[ExploreTask]] = {"train": [], "test": []}
        for task in tasks:
            test = held_out(f"{task.question}\0{sorted(task.targets)}", s.test_share)
            split["test" if test else "train"].append(task)
        for name, part in split.items():
            if not part and (name == "train" or s.test_share > 0):
                raise ConfigError(
                    f"AutoExplore: {len(tasks)} tasks under {s.root} leave none for {name}; "
                    "use a larger repository or change test_share"
                )
        return split


def _own_fields(settings: BaseModel, base: type[BaseModel]) -> dict:
    """The fields of `settings` that `base` declares (the env's own settings, without name, root...)."""
    return {k: getattr(settings, k) for k in base.model_fields}


def _level(level: Level | None, field: str) -> dict:
    return {} if level is None else {field: level}
