"""TextWorld's text games (Microsoft's generator; ALFWorld is built on it) as `TextEnv`s, made offline.

Games of one family are generated with TextWorld's own challenges (`textworld.challenges`), one per seed,
and compiled into feedlearn's cache (the Linux wheel bundles the Inform 7 compiler). Training and test
games come from seeds of different purposes (`feedlearn.seeds`), and a training game whose world equals a
test game's is dropped, so no test game is trained on. An episode plays one game through `textworld.gym`:
the state is the objective, the last command and what the game said to it (the room's description at the
start: without the last command a room with two exits does not say which one leads back); the
choices are the admissible commands; the oracle is the walkthrough from the current state
(`policy_commands`); the reward is the change in score; success is a win. Actions are the game's own
commands, run by its interpreter: none reaches a file or a shell.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedlearn.cache import build_into, cache_home
from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import ConfigError, FeedlearnError
from feedlearn.seeds import derive_seed

Family = Literal["coin_collector", "treasure_hunter", "simple", "cooking"]
LEVELS = {"coin_collector": 300, "treasure_hunter": 30}
"""The families with a difficulty level, and their highest level (the lowest is 1)."""
MISSING = "TextWorld games need the textworld package: pip install 'feedlearn[textworld]' (Linux and macOS)"
DEFAULTS = {
    "simple": {"rewards": "dense", "goal": "detailed"},
    "cooking": {"recipe": 1, "take": 1, "go": 1, "recipe_seed": 0},
}
"""The settings of the families without levels, under `options` (their train/test split is feedlearn's:
simple games' `test` and cooking games' `split` follow it)."""
ATTEMPTS = 10
"""Seeds tried for one game: TextWorld cannot fit every quest into every seed's map."""
IDLE = ("look", "inventory")
"""Admissible commands left out of the choices (they never change the game), unless the walkthrough's."""
DONE = "game.json"
"""The file a game's cache entry writes last (TextWorld's own description of the game)."""


class TextWorldSettings(BaseModel):
    """Which games: a family, its difficulty, and how many games of each split."""

    model_config = ConfigDict(extra="forbid")

    family: Family = Field(
        default="coin_collector",
        description="coin_collector: walk to the coin; treasure_hunter: find an object among distractors; "
        "simple: a few rooms and a short quest; cooking: the First TextWorld Problems' recipes.",
    )
    level: int = Field(
        default=1,
        ge=1,
        description="Difficulty, for coin_collector (1-300) and treasure_hunter (1-30): longer paths, more "
        "rooms and distractors; a curriculum steps through several.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The challenge's own settings, over `DEFAULTS` (simple: rewards dense|balanced|sparse, "
        "goal detailed|brief|none; cooking: recipe, take, go, open, cook, cut, drop, recipe_seed).",
    )
    games: int = Field(default=20, gt=0, description="Training games per level.")
    test_games: int = Field(default=10, gt=0, description="Test games per level (never trained on).")
    seed: int = Field(default=0, description="Seeds the games: same seed, same games.")
    max_steps: int = Field(default=20, ge=1, description="Horizon: the episode is truncated after it.")

    @model_validator(mode="after")
    def _level_in_range(self):
        check_level(self.family, self.level)
        return self


def check_level(family: str, level: Any) -> None:
    """Raise a `ConfigError` for a level `family` does not have."""
    top = LEVELS.get(family)
    if top is None:
        if level != 1:
            raise ConfigError(f"TextWorld {family} games have no levels: set their options instead")
    elif not isinstance(level, int) or not 1 <= level <= top:
        raise ConfigError(f"TextWorld {family} levels are 1 to {top}, not {level!r}")


def game_files(settings: TextWorldSettings, split: Literal["train", "test"], level: int) -> list[Path]:
    """The compiled games of `split` at `level`, generated the first time (cached): `settings.games`
    training or `settings.test_games` test games, no training game equal to a test game."""
    test = [_game(settings, level, "test", i) for i in range(settings.test_games)]
    if split == "test":
        return [path for path, _ in test]
    held = {key for _, key in test}
    train: list[Path] = []
    seen: set[str] = set()
    for i in range(10 * settings.games):
        if len(train) == settings.games:
            return train
        path, key = _game(settings, level, "train", i)
        if key not in held and key not in seen:
            train.append(path)
            seen.add(key)
    raise ConfigError(
        f"TextWorld {settings.family} level {level}: only {len(train)} distinct training games apart from "
        f"the test games in {10 * settings.games} seeds; ask for fewer games or a higher level"
    )


def _game(settings: TextWorldSettings, level: int, purpose: str, index: int) -> tuple[Path, str]:
    """One game's file and its world's key (the same world and quest: the same key), made once."""
    try:
        import textworld
        import textworld.challenges
    except ImportError:
        raise FeedlearnError(MISSING) from None
    seed = derive_seed(settings.seed, purpose, "textworld", settings.family, level, index) % 2**31
    challenge = (
        {"level": level} if settings.family in LEVELS else {**DEFAULTS[settings.family], **settings.options}
    )
    if settings.family == "simple":  # the families' own held-out distributions serve the test games
        challenge["test"] = purpose == "test"
    elif settings.family == "cooking":
        challenge["split"] = "test" if purpose == "test" else "train"
    name = hashlib.sha256(json.dumps([settings.family, challenge, seed], sort_keys=True).encode()).hexdigest()
    folder = cache_home() / "textworld" / f"{settings.family}-{name[:16]}"
    if not (folder / DONE).is_file():

        def build(building: Path) -> None:
            from textworld.generator.chaining import QuestGenerationError

            options = textworld.GameOptions()
            options.path = str(building / "game.z8")
            options.force_recompile = True
            make = textworld.challenges.CHALLENGES[f"tw-{settings.family}"][1]
            with warnings.catch_warnings():  # jericho cannot read the scores of Inform 7 games
                warnings.simplefilter("ignore", UserWarning)
                for attempt in range(ATTEMPTS):  # some seeds' maps cannot hold the quest: the next seed
                    options.seeds = (
                        derive_seed(seed, purpose, "textworld-retry", attempt) % 2**31 if attempt else seed
                    )
                    try:
                        game = make(challenge, options)
                        break
                    except QuestGenerationError:
                        continue
                    except (TypeError, KeyError, ValueError) as e:
                        raise ConfigError(
                            f"TextWorld {settings.family}: bad options {challenge}: {e}"
                        ) from None
                else:
                    raise ConfigError(
                        f"TextWorld {settings.family} {challenge}: no map of {ATTEMPTS} seeds holds the quest"
                    )
                textworld.generator.compile_game(game, options)
            (building / "key").write_text(_world_key(game))
            game.save(str(building / DONE))

        build_into(folder, DONE, build)
    return folder / "game.z8", (folder / "key").read_text()


def _world_key(game) -> str:
    """A hash of the game's world (its facts and names) and its quest (the walkthrough)."""
    facts = sorted(str(f) for f in game.world.facts)
    names = sorted((k, v.name or "") for k, v in game.infos.items())
    return hashlib.sha256(json.dumps([facts, names, game.walkthrough]).encode()).hexdigest()


_REGISTERED: dict[Path, str] = {}
"""Each game's `textworld.gym` id in this process."""


class TextWorldEnv:
    """One of `games` per episode, chosen by the reset seed."""

    def __init__(self, games: list[Path], max_steps: int = 20):
        if not games:
            raise FeedlearnError("TextWorldEnv: no games")
        self.games = list(games)
        self.max_steps = max_steps
        self.game: Path | None = None
        self.commands: list[str] = []
        self.room = ""
        """The room the game last described."""
        self._env = None
        self._obs: TextObservation | None = None
        self._info: dict[str, Any] = {}

    def reset(self, seed: int | None = None) -> tuple[TextObservation, dict[str, Any]]:
        """Start the game that `seed` picks; `info` names it."""
        self.game = random.Random(seed).choice(self.games)
        self._start()
        return self._obs, {"game": self.game.parent.name}

    def _start(self) -> None:
        import textworld.gym
        from textworld import EnvInfos

        if self._env is not None:
            self._env.close()
        if self.game not in _REGISTERED:  # once per game and process: the registry keeps every id
            wanted = EnvInfos(admissible_commands=True, policy_commands=True, objective=True, won=True)
            wanted.description, wanted.score = True, True
            _REGISTERED[self.game] = textworld.gym.register_game(
                str(self.game), wanted, max_episode_steps=10**6
            )
        self._env = textworld.gym.make(_REGISTERED[self.game])
        with warnings.catch_warnings():  # the same warning; textworld keeps the score itself
            warnings.simplefilter("ignore", UserWarning)
            _, info = self._env.reset()
        self.commands, self._score, self._info = [], 0.0, info
        self._obs = self._observation(info["description"])

    def step(self, action: str) -> tuple[TextObservation, float, bool, bool, dict[str, Any]]:
        """Act with one of the admissible commands."""
        if self._obs is None:
            raise FeedlearnError("step before reset, or after the episode ended: call reset()")
        if action not in self._obs.choices:
            raise FeedlearnError(f"'{action}' is not an admissible command here; choose one of the choices")
        text, score, done, info = self._env.step(action)
        self.commands.append(action)
        reward, self._score, self._info = float(score) - self._score, float(score), info
        terminated = bool(done)
        truncated = not terminated and len(self.commands) >= self.max_steps
        obs = self._obs = self._observation(text)
        if terminated or truncated:
            self._obs = None
        return obs, reward, terminated, truncated, {"success": bool(info["won"]), "score": float(score)}

    def oracle_action(self) -> str:
        """The walkthrough's next command from the current state."""
        plan = self.walkthrough()
        if not plan:
            raise FeedlearnError(f"TextWorld game {self.game}: no walkthrough from this state")
        return plan[0]

    def __deepcopy__(self, memo) -> TextWorldEnv:
        """A copy in the same state: the game started afresh and the commands so far replayed (the
        interpreter cannot be copied; the games are deterministic)."""
        copy = TextWorldEnv(self.games, self.max_steps)
        copy.game = self.game
        copy._start()
        for command in self.commands:
            copy.step(command)
        return copy

    def walkthrough(self) -> list[str]:
        """The commands that win the game from the current state."""
        return list(self._info.get("policy_commands") or [])

    def _observation(self, text: str) -> TextObservation:
        said = re.sub(r"\n\s*\n+", "\n", text).strip()
        room = re.search(r"-= (.+?) =-", said)
        self.room = room.group(1) if room else self.room
        last = self.commands[-1] if self.commands else "none"
        state = f"Goal: {self._info['objective'].strip()}\nLast command: {last}\n{said}"
        plan = self.walkthrough()[:1]
        choices = [c for c in self._info["admissible_commands"] if c not in IDLE or c in plan]
        return TextObservation(state=state, choices=choices)
