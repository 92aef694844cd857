"""DangerousTaxi (Reflect-RL): gymnasium's Taxi as a text environment where a wasted move ends the episode.

The dynamics are Taxi's own transition table; this module only renders states as text, rescales rewards
(Taxi's reward / 20) and adds the danger rule: an action that leaves the state unchanged (driving into a
wall, a pickup with no passenger there, a dropoff that drops no one) costs -0.5 and ends the episode.
Curriculum levels: `pickup` ends when the passenger is picked up, `dropoff` starts with the passenger
aboard and ends at the delivery, `full` is Taxi's whole task; as in the reference code, the move that first
picks the passenger up earns +1 (instead of Taxi's -1 / 20) on `pickup` and `full`, and a `dropoff` episode
starts where the passenger was picked up. Shortest full-task paths take 6-18 steps, so under the default
horizon of 15 about a fifth of full-level starts cannot be completed.
gymnasium 1.4 refuses the `Taxi-v3` id; its `TaxiEnv` class (used here) has the same dynamics.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

from gymnasium.envs.toy_text.taxi import MAP, TaxiEnv
from pydantic import BaseModel, ConfigDict, Field

from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import FeedlearnError

ACTIONS = ["south", "north", "east", "west", "pickup", "dropoff"]
"""The choices, in Taxi's action order (index = Taxi's action id)."""
IN_TAXI = 4
"""Taxi's passenger index for "in the taxi"; 0-3 index its four landmarks."""
TaxiLevel = Literal["pickup", "dropoff", "full"]
"""The curriculum levels."""
BONUS_LEVELS = ("pickup", "full")
"""The levels whose first pickup earns `PICKUP_BONUS`."""
DANGER_REWARD = -0.5
PICKUP_BONUS = 1.0


class TaxiSettings(BaseModel):
    """The curriculum level, horizon, dropoff start and seed of a DangerousTaxi."""

    model_config = ConfigDict(extra="forbid")

    level: TaxiLevel = Field(
        default="full",
        description="pickup: stop once the passenger is aboard; dropoff: start with the passenger aboard; "
        "full: Taxi's whole task. The first pickup earns +1 on pickup and full.",
    )
    max_steps: int = Field(default=15, ge=1, description="Horizon: the episode is truncated after it.")
    dropoff_start: Literal["pickup", "anywhere"] = Field(
        default="pickup",
        description="Where a dropoff episode starts. pickup: on the landmark where the passenger waited in "
        "Taxi's random start, the passenger aboard (the reference drives its oracle there); anywhere: on "
        "the taxi's own random start square, the passenger put aboard (more start states, a fifth of them "
        "3 moves or fewer from the goal).",
    )
    observation: Literal["summary", "history"] = Field(
        default="summary",
        description="What the state text holds besides the map. summary: one line giving the taxi's, "
        "passenger's and destination's squares in words (a small model reads coordinates far more easily "
        "than a grid); history: the moves taken so far, as the reference shows them, and no summary.",
    )
    seed: int | None = Field(
        default=None, description="Seeds the start states of resets without a seed of their own."
    )


class DangerousTaxi:
    """Taxi-v3 as text, with dangerous moves and curriculum levels (a `TextEnv`).

    The state text is Taxi's 5x5 map (`|` a wall, `:` open) with T the taxi, P the waiting passenger,
    D the destination, O the taxi on the passenger's square and X the taxi with the passenger aboard, then
    one line giving the passenger's and the destination's squares (row, column; row 0 is the top).
    `info` carries `success`, `dangerous` and `taxi_state` (Taxi's state id).
    """

    def __init__(self, settings: TaxiSettings | None = None):
        self.settings = settings or TaxiSettings()
        self.max_steps = self.settings.max_steps
        self.taxi = TaxiEnv()
        self.taxi.reset(seed=self.settings.seed)  # seeds the start states of later unseeded resets
        self.taxi_state = 0
        self.steps = 0
        self.running = False
        self.bonus_paid, self.moves = False, []

    def reset(self, seed: int | None = None) -> tuple[TextObservation, dict[str, Any]]:
        """Start an episode from one of Taxi's start states (a function of `seed`)."""
        state, _ = self.taxi.reset(seed=seed)
        if self.settings.level == "dropoff":
            row, col, passenger, dest = self.taxi.decode(state)
            if self.settings.dropoff_start == "pickup":
                row, col = self.taxi.locs[passenger]
            state = self.taxi.encode(row, col, IN_TAXI, dest)
        self.taxi_state, self.steps, self.running = int(state), 0, True
        self.bonus_paid, self.moves = False, []
        return self.observation(), {"level": self.settings.level, "taxi_state": self.taxi_state}

    def step(self, action: str) -> tuple[TextObservation, float, bool, bool, dict[str, Any]]:
        """Act with one of `ACTIONS`; return (observation, reward, terminated, truncated, info)."""
        if not self.running:
            raise FeedlearnError("DangerousTaxi: no episode is running; call reset() first")
        if action not in ACTIONS:
            raise FeedlearnError(
                f"DangerousTaxi: unknown action {action!r}; choose one of {', '.join(ACTIONS)}"
            )
        _, next_state, taxi_reward, taxi_done = self.taxi.P[self.taxi_state][ACTIONS.index(action)][0]
        dangerous = next_state == self.taxi_state
        success = not dangerous and self._is_goal(next_state, taxi_done)
        reward = DANGER_REWARD if dangerous else taxi_reward / 20
        if self._first_pickup(next_state):
            reward, self.bonus_paid = PICKUP_BONUS, True
        self.taxi_state, self.steps = int(next_state), self.steps + 1
        self.moves.append(action)
        terminated = dangerous or success
        truncated = not terminated and self.steps >= self.max_steps
        self.running = not (terminated or truncated)
        info = {"success": success, "dangerous": dangerous, "taxi_state": self.taxi_state}
        return self.observation(), float(reward), terminated, truncated, info

    def oracle_action(self) -> str:
        """The first action of a shortest path to the level's goal (never a dangerous one)."""
        if not self.running:
            raise FeedlearnError("DangerousTaxi: no episode is running; call reset() first")
        start = self.taxi_state
        first_action = {start: -1}  # state -> the first action of a shortest path to it
        queue = deque([start])
        while queue:
            state = queue.popleft()
            for action in range(len(ACTIONS)):
                _, next_state, _, taxi_done = self.taxi.P[state][action][0]
                if next_state == state:  # a dangerous move
                    continue
                first = action if state == start else first_action[state]
                if self._is_goal(next_state, taxi_done):
                    return ACTIONS[first]
                if next_state not in first_action:
                    first_action[next_state] = first
                    queue.append(next_state)
        raise FeedlearnError(f"DangerousTaxi: no path to the goal from Taxi state {self.taxi_state}")

    def observation(self) -> TextObservation:
        """The current state as text, with all six actions as choices."""
        return TextObservation(state=self.render(), choices=list(ACTIONS))

    def render(self) -> str:
        """The map with the taxi, passenger and destination letters, then (`observation`) one line giving the
        three positions in words, or, before the map, the moves taken so far."""
        row, col, passenger, dest = self.taxi.decode(self.taxi_state)
        locs = self.taxi.locs
        letters = {locs[dest]: "D"}
        if passenger == IN_TAXI:
            letters[row, col] = "X"
        else:
            letters[locs[passenger]] = "P"
            letters[row, col] = "O" if locs[passenger] == (row, col) else "T"
        lines = []
        for r, map_row in enumerate(MAP[1:-1]):
            chars = list(map_row)
            for c in range(5):
                chars[2 * c + 1] = letters.get((r, c), ".")
            lines.append(" ".join(chars))
        border = "+" + "-" * (len(lines[0]) - 2) + "+"
        if self.settings.observation == "history":
            return "\n".join([f"Moves so far: {', '.join(self.moves) or 'none'}.", border, *lines, border])
        where = "in the taxi" if passenger == IN_TAXI else "at row {}, column {}".format(*locs[passenger])
        summary = (
            f"Taxi: row {row}, column {col}. Passenger: {where}. "
            f"Destination: row {locs[dest][0]}, column {locs[dest][1]}."
        )
        return "\n".join([border, *lines, border, summary])

    def _first_pickup(self, next_state: int) -> bool:
        """Whether a move into `next_state` is the episode's first pickup on a level that pays for it."""
        return (
            self.settings.level in BONUS_LEVELS
            and not self.bonus_paid
            and self.taxi.decode(self.taxi_state)[2] != IN_TAXI
            and self.taxi.decode(next_state)[2] == IN_TAXI
        )

    def _is_goal(self, next_state: int, taxi_done: bool) -> bool:
        """Whether a move into `next_state` (`taxi_done`: Taxi's terminated flag) reaches the goal."""
        if self.settings.level == "pickup":
            return self.taxi.decode(next_state)[2] == IN_TAXI
        return taxi_done  # Taxi ends its episode on the delivery
