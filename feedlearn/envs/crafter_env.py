"""Crafter (Hafner 2021) as a gymnasium env, its text state, and its success rates and score.

`CrafterEnv` wraps a `crafter.Env` whose worlds come from `derive_seed`: episode k after `reset(seed=s)`
(or after construction with `seed=s`) plays world `derive_seed(s, "data", "crafter-world", k)`, so one seed
gives the same worlds in every run and process, and a pickled env continues exactly as the original would.
Observations are crafter's image, or a symbolic vector (a one-hot of the player's local view over the
semantic ids, then the inventory) that skips rendering, the main cost of a step. Both modes play the same
worlds: the random draws crafter's night-time rendering makes are made in symbolic mode too.

The package is not a dependency of feedlearn: install it with `pip install crafter==1.8.3`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium
import numpy as np

from feedlearn.errors import ConfigError, FeedlearnError
from feedlearn.seeds import derive_seed

try:
    import crafter
    from crafter import constants, objects, worldgen
except ImportError:
    raise FeedlearnError(
        "the Crafter env needs the crafter package: run `pip install crafter==1.8.3`"
    ) from None

ACTIONS: list[str] = list(constants.actions)
"""Crafter's 17 actions; index = action id."""
ACHIEVEMENTS: list[str] = list(constants.achievements)
"""Crafter's 22 achievements, in crafter's order."""
ITEMS: list[str] = list(constants.items)
"""The 16 inventory entries (health, food, drink, energy, then items), in crafter's order."""
OBJECT_NAMES: dict[int, str] = {
    1: "water",
    2: "grass",
    3: "stone",
    4: "path",
    5: "sand",
    6: "tree",
    7: "lava",
    8: "coal",
    9: "iron",
    10: "diamond",
    11: "table",
    12: "furnace",
    14: "cow",
    15: "zombie",
    16: "skeleton",
    17: "arrow",
    18: "plant",
}
"""Semantic id -> name of what a player sees; 0 (nothing, outside the world) and 13 (the player) left out."""
SEMANTIC_IDS = 19
"""Semantic ids run 0..18: 0 nothing, 1-12 materials, 13 the player, 14-18 creatures, arrows and plants."""
PLAYER_ID = 13
TEXT_VIEW = (9, 7)
"""The (x, y) size of the window a text state describes: crafter's local view with its default view."""
_OBJECT_TYPES = [objects.Player, objects.Cow, objects.Zombie, objects.Skeleton, objects.Arrow, objects.Plant]
"""The object classes of crafter's semantic view, in id order from 13."""
_WORLD_SEEDS = 2**31 - 1


def world_seed(seed: int, episode: int) -> int:
    """The crafter world seed of episode `episode` counted from a reset with `seed`."""
    return derive_seed(seed, "data", "crafter-world", episode) % _WORLD_SEEDS


def local_view(semantic: np.ndarray, player_pos: Any, view: tuple[int, int] = TEXT_VIEW) -> np.ndarray:
    """The (view x, view y) window of the [x, y]-indexed map `semantic` centred on the player as crafter
    centres its local view (the player at index (view // 2)); cells outside the world are 0."""
    (w, h), (px, py) = view, (int(player_pos[0]), int(player_pos[1]))
    x0, y0 = px - w // 2, py - h // 2
    out = np.zeros((w, h), semantic.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + w, semantic.shape[0]), min(y0 + h, semantic.shape[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0] = semantic[sx0:sx1, sy0:sy1]
    return out


@dataclass(frozen=True)
class CrafterState:
    """What a text agent is told: the things in view, the inventory, and the action it took last."""

    sees: list[str]
    """Names of the things in the 9x7 window, in semantic id order, each once."""
    status: list[str]
    """Each inventory entry above 0 as "<count> <name>", in crafter's inventory order."""
    past_action: str | None


def text_state(info: dict[str, Any], past_action: str | None) -> CrafterState:
    """The text state of an info dict (its `semantic`, `player_pos` and `inventory`)."""
    window = local_view(info["semantic"], info["player_pos"])
    sees = [OBJECT_NAMES[int(i)] for i in np.unique(window) if int(i) in OBJECT_NAMES]
    status = [f"{count} {name}" for name, count in info["inventory"].items() if count > 0]
    return CrafterState(sees=sees, status=status, past_action=past_action)


def success_rates(unlocked: list[Iterable[str]]) -> dict[str, float]:
    """For each achievement (in ACHIEVEMENTS order), the % of episodes that unlocked it; each episode is
    given as the achievements it unlocked at least once."""
    if not unlocked:
        raise ValueError("no episodes")
    episodes = [set(names) for names in unlocked]
    unknown = sorted(set().union(*episodes) - set(ACHIEVEMENTS))
    if unknown:
        raise ValueError(f"unknown achievements: {', '.join(unknown)}")
    return {name: 100.0 * sum(name in ep for ep in episodes) / len(episodes) for name in ACHIEVEMENTS}


def crafter_score(rates: dict[str, float]) -> float:
    """The Crafter score: exp(mean ln(1 + s_i)) - 1 over the 22 success rates s_i in % (missing ones 0)."""
    unknown = sorted(set(rates) - set(ACHIEVEMENTS))
    if unknown:
        raise ValueError(f"unknown achievements: {', '.join(unknown)}")
    logs = [math.log1p(rates.get(name, 0.0)) for name in ACHIEVEMENTS]
    return math.exp(sum(logs) / len(logs)) - 1


class _Crafter(crafter.Env):
    """A crafter.Env that plays the world it is given and, without images, skips rendering."""

    def __init__(self, images: bool, **kwargs: Any):
        super().__init__(**kwargs)
        self.images = images

    def play(self, seed: int) -> np.ndarray | None:
        """crafter's reset, on world `seed` instead of hash((seed, episode))."""
        center = (self._world.area[0] // 2, self._world.area[1] // 2)
        self._episode += 1
        self._step = 0
        self._world.reset(seed=seed)
        self._update_time()
        self._player = objects.Player(self._world, center)
        self._last_health = self._player.health
        self._world.add(self._player)
        self._unlocked = set()
        worldgen.generate_world(self._world, self._player)
        return self._obs()

    def _balance_object(
        self, chunk, objs, cls, material, span_dist, despan_dist, spawn_prob, despawn_prob, ctor, target_fn
    ) -> None:
        # crafter's own, but the creature to despawn is drawn from a list in position order: crafter draws
        # it from a set's order, which follows memory addresses, so runs (and unpickled envs) diverged.
        xmin, xmax, ymin, ymax = chunk
        random = self._world.random
        creatures = sorted((obj for obj in objs if isinstance(obj, cls)), key=lambda obj: tuple(obj.pos))
        mask = self._world.mask(*chunk, material)
        target_min, target_max = target_fn(len(creatures), mask.sum())
        if len(creatures) < int(target_min) and random.uniform() < spawn_prob:
            xs = np.tile(np.arange(xmin, xmax)[:, None], [1, ymax - ymin])
            ys = np.tile(np.arange(ymin, ymax)[None, :], [xmax - xmin, 1])
            xs, ys = xs[mask], ys[mask]
            i = random.randint(0, len(xs))
            pos = np.array((xs[i], ys[i]))
            empty = self._world[pos][1] is None
            away = self._player.distance(pos) >= span_dist
            if empty and away:
                self._world.add(ctor(pos))
        elif len(creatures) > int(target_max) and random.uniform() < despawn_prob:
            obj = creatures[random.randint(0, len(creatures))]
            away = self._player.distance(obj.pos) >= despan_dist
            if away:
                self._world.remove(obj)

    def _obs(self) -> np.ndarray | None:
        if self.images:
            return self.render()
        if self._world.daylight < 0.5:  # rendering draws night noise from the world's random state
            shape = self._local_view._grid * (self._size // self._view)
            self._world.random.uniform(32, 127, tuple(shape))
        return None


class CrafterEnv(gymnasium.Env):
    """Crafter with gymnasium's API, seeded worlds, a symbolic observation option and a richer info.

    info (after reset and each step): `inventory`, `achievements` (counts), `semantic` (the [x, y] world map
    of semantic ids), `player_pos`, `facing` ((dx, dy)), `sleeping`, `action` (the name of the action just
    taken), `faced` (the name of what was in the cell the player faced when it took it, or "none"),
    `unlocked` (achievements unlocked for the first time in the episode at this step); action and faced
    are None after reset. terminated: the player died; truncated: `length` steps passed and it lives.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        size: tuple[int, int] = (64, 64),
        length: int | None = 10000,
        observation: Literal["image", "symbolic"] = "image",
        seed: int = 0,
    ):
        if observation not in ("image", "symbolic"):
            raise ConfigError(f"observation: {observation!r} is not one of 'image', 'symbolic'")
        if length is not None and length < 1:
            raise ConfigError(f"length: {length} must be at least 1 (or None for no limit)")
        self.observation = observation
        self.render_mode = "rgb_array"
        self._env = _Crafter(
            images=observation == "image", area=tuple(area), view=view, size=size, length=length, seed=0
        )
        self._grid = tuple(int(g) for g in self._env._local_view._grid)
        self._seed, self._episode = seed, 0
        self.action_space = gymnasium.spaces.Discrete(len(ACTIONS))
        if observation == "image":
            shape = (int(self._env._size[1]), int(self._env._size[0]), 3)
            self.observation_space = gymnasium.spaces.Box(0, 255, shape, np.uint8)
        else:
            dim = self._grid[0] * self._grid[1] * SEMANTIC_IDS + len(ITEMS)
            self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (dim,), np.float32)

    @property
    def crafter(self) -> crafter.Env:
        """The underlying crafter env (its `_world`, `_player`), for tests that set up a world."""
        return self._env

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the next world; a seed restarts the count of worlds from that seed."""
        super().reset(seed=seed)
        if seed is not None:
            self._seed, self._episode = seed, 0
        image = self._env.play(world_seed(self._seed, self._episode))
        self._episode += 1
        info = self._info(self._env._sem_view(), action=None, faced=None, unlocked=[])
        return self._observe(image, info), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take action `action` (an id into ACTIONS)."""
        if self._env._player is None:
            raise FeedlearnError("step before reset: call reset() first")
        action = int(action)
        if not 0 <= action < len(ACTIONS):
            raise ValueError(f"action {action} is not an id in 0..{len(ACTIONS) - 1}")
        faced = self._faced()
        before = set(self._env._unlocked)
        image, reward, done, inner = self._env.step(action)
        unlocked = [name for name in ACHIEVEMENTS if name in self._env._unlocked and name not in before]
        info = self._info(inner["semantic"], action=ACTIONS[action], faced=faced, unlocked=unlocked)
        dead = self._env._player.health <= 0
        return self._observe(image, info), float(reward), dead, bool(done) and not dead, info

    def render(self) -> np.ndarray:
        """crafter's image of the current state."""
        return self._env.render()

    def _faced(self) -> str:
        player = self._env._player
        material, obj = self._env._world[player.pos + np.array(player.facing)]
        if obj is not None:
            return OBJECT_NAMES.get(
                self._env._sem_view._obj_ids.get(type(obj), -1), type(obj).__name__.lower()
            )
        return material or "none"

    def _info(self, semantic: np.ndarray, **step: Any) -> dict[str, Any]:
        player = self._env._player
        return {
            "inventory": dict(player.inventory),
            "achievements": dict(player.achievements),
            "semantic": semantic,
            "player_pos": np.array(player.pos),
            "facing": (int(player.facing[0]), int(player.facing[1])),
            "sleeping": bool(player.sleeping),
            **step,
        }

    def _observe(self, image: np.ndarray | None, info: dict[str, Any]) -> np.ndarray:
        if self.observation == "image":
            return image
        return symbolic_observation(info["semantic"], info["player_pos"], info["inventory"], self._grid)


def symbolic_observation(
    semantic: np.ndarray, player_pos: Any, inventory: dict[str, int], view: tuple[int, int] = TEXT_VIEW
) -> np.ndarray:
    """The one-hot of the local view over the SEMANTIC_IDS ids, flattened, then the inventory counts / 9."""
    window = local_view(semantic, player_pos, view).ravel()
    onehot = np.zeros((window.size, SEMANTIC_IDS), np.float32)
    onehot[np.arange(window.size), np.minimum(window, SEMANTIC_IDS - 1)] = 1.0
    counts = np.array([inventory[name] / constants.items[name]["max"] for name in ITEMS], np.float32)
    return np.concatenate([onehot.ravel(), counts])


def make_vec_env(seeds: list[int], **env_kwargs: Any):
    """An SB3 DummyVecEnv of one Monitor-wrapped `CrafterEnv(seed=s, **env_kwargs)` per seed."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    if not seeds:
        raise ConfigError("seeds: give at least one seed, one env per seed")
    return DummyVecEnv([lambda s=s: Monitor(CrafterEnv(seed=s, **env_kwargs)) for s in seeds])
