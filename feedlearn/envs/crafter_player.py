"""A scripted Crafter player that carries out some sub-goals well and the rest at random.

It measures what AdaRefiner's instructions are worth without training a policy: an instruction (0-3
sub-goal names) helps exactly when it names sub-goals the player is skilled at. It works on the sub-goals
in order, each until its event happens (the achievement it aims at counts up) or `patience` steps pass,
cycling; a new instruction restarts at its first sub-goal; no sub-goal means exploring. A skilled sub-goal
walks (BFS over grass, sand and path in the 9x7 view, never into lava) to its target, turns to face it and
acts; an unskilled one takes uniformly random actions. Steps spent asleep (crafter then ignores actions)
do not count against patience.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from feedlearn.envs.crafter_env import ACHIEVEMENTS, ACTIONS, TEXT_VIEW, constants, local_view
from feedlearn.errors import ConfigError
from feedlearn.seeds import derive_seed

SKILLED = ("chop tree", "drink water", "attack cow", "chop grass", "place crafting table", "sleep")
"""The sub-goals a default player is skilled at (by the names of the decision model's list)."""
ALIASES = {"attack cow": "eat cow", "chop grass": "collect sapling"}
"""Names of the AdaRefiner sub-goal list (feedlearn.feedback.subgoals) for the same scripts."""
SCRIPTED = frozenset(SKILLED) | {"place plant", "attack zombie"} | frozenset(ALIASES)
"""The sub-goals the player knows how to do well (aliases included)."""
EVENTS = {
    "chop tree": "collect_wood",
    "drink water": "collect_drink",
    "eat cow": "eat_cow",
    "collect sapling": "collect_sapling",
    "place crafting table": "place_table",
    "place plant": "place_plant",
    "attack zombie": "defeat_zombie",
    "sleep": "wake_up",
}
"""The achievement whose count going up ends a scripted sub-goal."""
_VERBS = {
    "mine": "collect_{}",
    "make": "make_{}",
    "place": "place_{}",
    "attack": "defeat_{}",
    "eat": "eat_{}",
}
_WATER, _GRASS, _TREE, _COW, _ZOMBIE = 1, 2, 6, 14, 15
_WALKABLE = frozenset({2, 4, 5})  # grass, path, sand without an object: where the player can step
_MOVES = {(-1, 0): 1, (1, 0): 2, (0, -1): 3, (0, 1): 4}  # direction -> move action id
_DO, _SLEEP, _NOOP = ACTIONS.index("do"), ACTIONS.index("sleep"), ACTIONS.index("noop")
_TABLE_WOOD = constants.place["table"]["uses"]["wood"]
_EXPLORE_RUN = 8


def event_of(subgoal: str) -> str | None:
    """The achievement that marks `subgoal` done (aliases and "mine/make/place/attack/eat X" included)."""
    subgoal = ALIASES.get(subgoal, subgoal)
    if subgoal in EVENTS:
        return EVENTS[subgoal]
    verb, _, thing = subgoal.partition(" ")
    name = _VERBS[verb].format(thing.replace(" ", "_")) if verb in _VERBS else None
    return name if name in ACHIEVEMENTS else None


class SkilledPlayer:
    """A player skilled at the sub-goals `skills`; `act` maps an env info dict and sub-goals to an action."""

    def __init__(self, skills: tuple[str, ...] | list[str] = SKILLED, seed: int = 0, patience: int = 30):
        unknown = [s for s in skills if s not in SCRIPTED]
        if unknown:
            names, known = ", ".join(map(repr, unknown)), ", ".join(sorted(SCRIPTED))
            raise ConfigError(f"skills: {names} not scripted; choose from {known}")
        if patience < 1:
            raise ConfigError(f"patience: {patience} must be at least 1 step")
        self.skills = frozenset(ALIASES.get(s, s) for s in skills)
        self.seed, self.patience = seed, patience
        self.completed = 0
        """Sub-goals carried out (their event happened) over all episodes."""
        self._episode = -1
        self.reset()

    def reset(self) -> None:
        """Start a new episode: forget the instruction and progress, draw from the next episode's seed."""
        self._episode += 1
        self._rng = np.random.default_rng(derive_seed(self.seed, "sampling", "crafter-player", self._episode))
        self._goals: tuple[str, ...] | None = None
        self._index = self._steps = 0
        self._baseline: dict[str, int] = {}
        self._slept = False
        self._facing = (0, 1)
        self._run: tuple[int, int] | None = None
        self._run_steps = 0

    @property
    def subgoal(self) -> str | None:
        """The sub-goal being worked on (None when exploring)."""
        return self._goals[self._index] if self._goals else None

    def act(self, info: dict[str, Any], subgoals: list[str]) -> int:
        """The action id to take given the env's latest info and the current instruction's sub-goals."""
        goals = tuple(subgoals)
        if goals != self._goals:
            self._goals = goals
            self._start(0, info)
        elif goals and self._finished(info):
            self._start((self._index + 1) % len(goals), info)
        sleeping = bool(info.get("sleeping"))
        self._slept |= sleeping
        facing = tuple(info["facing"]) if "facing" in info else self._facing
        action = self._choose(info, facing)
        if not sleeping:
            self._steps += 1
            if action in _MOVES.values():
                self._facing = next(d for d, a in _MOVES.items() if a == action)
        return action

    def _start(self, index: int, info: dict[str, Any]) -> None:
        self._index, self._steps, self._slept = index, 0, False
        self._baseline = dict(info["achievements"])

    def _finished(self, info: dict[str, Any]) -> bool:
        goal = self.subgoal
        event = event_of(goal)
        done = bool(event) and info["achievements"][event] > self._baseline.get(event, 0)
        done |= ALIASES.get(goal, goal) == "sleep" and self._slept and not info.get("sleeping")
        self.completed += done
        return done or self._steps >= self.patience

    def _choose(self, info: dict[str, Any], facing: tuple[int, int]) -> int:
        goal = ALIASES.get(self.subgoal, self.subgoal)
        if goal is None:
            return self._explore(info)
        if goal not in self.skills:
            return int(self._rng.integers(len(ACTIONS)))
        inventory = info["inventory"]
        if goal == "chop tree" or (goal == "place crafting table" and inventory["wood"] < _TABLE_WOOD):
            return self._reach(info, facing, {_TREE})
        if goal == "place crafting table":
            return self._place(info, facing, _WALKABLE, ACTIONS.index("place_table"))
        if goal == "collect sapling" or (goal == "place plant" and inventory["sapling"] < 1):
            return self._place(info, facing, {_GRASS}, _DO)
        if goal == "place plant":
            return self._place(info, facing, {_GRASS}, ACTIONS.index("place_plant"))
        if goal == "sleep":
            return _SLEEP
        targets = {"drink water": _WATER, "eat cow": _COW, "attack zombie": _ZOMBIE}[goal]
        return self._reach(info, facing, {targets})

    def _reach(self, info: dict[str, Any], facing: tuple[int, int], targets: set[int]) -> int:
        """Face a (non-walkable) target cell and `do`; walk to the nearest one in view first."""
        semantic, pos = info["semantic"], _pos(info)
        if _at(semantic, pos, facing) in targets:
            return _DO
        for d, move in _MOVES.items():
            if _at(semantic, pos, d) in targets:
                return move  # the cell is not free: the move only turns the player
        first = _path_to(semantic, pos, targets)
        return _MOVES[first] if first else self._explore(info)

    def _place(self, info: dict[str, Any], facing: tuple[int, int], kinds: set[int], action: int) -> int:
        """Face a free cell of one of `kinds` (walkable cells: turning toward one steps onto it) and act."""
        semantic, pos = info["semantic"], _pos(info)
        if _at(semantic, pos, facing) in kinds:
            return action
        for d, move in _MOVES.items():
            if _at(semantic, pos, d) in _WALKABLE and _at(semantic, pos, (2 * d[0], 2 * d[1])) in kinds:
                return move  # step there, then face the next cell on
        return self._explore(info)

    def _explore(self, info: dict[str, Any]) -> int:
        """Keep walking one way; a new random way every few steps or when blocked (never lava or water)."""
        semantic, pos = info["semantic"], _pos(info)
        free = [d for d in _MOVES if _at(semantic, pos, d) in _WALKABLE]
        if not free:
            return _NOOP
        if self._run not in free or self._run_steps >= _EXPLORE_RUN:
            self._run, self._run_steps = free[int(self._rng.integers(len(free)))], 0
        self._run_steps += 1
        return _MOVES[self._run]


def _pos(info: dict[str, Any]) -> tuple[int, int]:
    return int(info["player_pos"][0]), int(info["player_pos"][1])


def _at(semantic: np.ndarray, pos: tuple[int, int], offset: tuple[int, int]) -> int:
    """The semantic id at pos + offset, 0 outside the world."""
    x, y = pos[0] + offset[0], pos[1] + offset[1]
    if 0 <= x < semantic.shape[0] and 0 <= y < semantic.shape[1]:
        return int(semantic[x, y])
    return 0


def _path_to(semantic: np.ndarray, pos: tuple[int, int], targets: set[int]) -> tuple[int, int] | None:
    """The first step of a shortest walk, inside the 9x7 view, to a cell next to a target; None if none."""
    window = local_view(semantic, pos, TEXT_VIEW)
    if not np.isin(window, list(targets)).any():
        return None
    (w, h), (cx, cy) = TEXT_VIEW, (TEXT_VIEW[0] // 2, TEXT_VIEW[1] // 2)
    first: dict[tuple[int, int], tuple[int, int] | None] = {(cx, cy): None}
    queue = deque([(cx, cy)])
    while queue:
        x, y = queue.popleft()
        if (x, y) != (cx, cy) and any(
            0 <= x + dx < w and 0 <= y + dy < h and window[x + dx, y + dy] in targets for dx, dy in _MOVES
        ):
            return first[(x, y)]
        for dx, dy in _MOVES:
            nxt = (x + dx, y + dy)
            if 0 <= nxt[0] < w and 0 <= nxt[1] < h and nxt not in first and window[nxt] in _WALKABLE:
                first[nxt] = first[(x, y)] or (dx, dy)
                queue.append(nxt)
    return None
