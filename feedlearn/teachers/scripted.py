"""An offline scripted teacher for Reflect-RL's SFT data: oracle trajectories with template reflections.

The environment's oracle plays the teacher and `reflect` writes what it thinks: the state in a sentence,
then the oracle's move. Data mix (spec, "SFT data": Taxi mixes oracle actions with random ones, p 0.1):
p is read as the chance of a random step, so DangerousTaxi defaults to `p_oracle` 0.9 and AutoExplore,
whose data the spec does not mix, to 1.0. Negatives follow the oracle, substitute a wrong step (the policy
is not trained on it), then reflect on the mistake and recover (the policy is trained on the recovery).
"""

from __future__ import annotations

import copy
import random
import sys
from typing import Literal

from pydantic import Field, model_validator

from feedlearn.data.records import Record
from feedlearn.envs.alfworld_env import ALFWorldEnv
from feedlearn.envs.autoexplore import AutoExplore
from feedlearn.envs.gymnasium_env import GymnasiumTextEnv
from feedlearn.envs.taxi import ACTIONS, IN_TAXI, DangerousTaxi
from feedlearn.envs.text_env import TextEnv, TextObservation
from feedlearn.envs.textworld_env import TextWorldEnv
from feedlearn.errors import FeedlearnError
from feedlearn.seeds import derive_seed

P_ORACLE = {DangerousTaxi: 0.9, AutoExplore: 1.0, ALFWorldEnv: 0.7, TextWorldEnv: 0.9, GymnasiumTextEnv: 0.9}
"""The default chance of taking the oracle's move, per environment type."""
TAXI_MOVES = ("south", "north", "east", "west")


class ReflectStep(Record):
    """One teacher step: the state and its choices, the reflection, and the action taken."""

    episode: str = Field(description="The episode's id.")
    step: int = Field(ge=0, description="Steps taken in the episode before this one.")
    state: str = Field(description="The state text, without the choices.")
    choices: list[str] = Field(description="The actions available in this state.")
    reflection: str = Field(description="The teacher's analysis of the state (always trained).")
    action: str = Field(description="The choice taken.")
    oracle: str = Field(description="The oracle's move in this state (what the reflection recommends).")
    mistake: str | None = Field(default=None, description="A recovery step's wrong move just before it.")
    kind: Literal["oracle", "random", "recovery"] = Field(
        description="oracle: the oracle's move; random: another safe move; recovery: the oracle's move "
        "right after a wrong one."
    )
    train_policy: bool = Field(description="Whether the policy is trained on `action` (not on random ones).")

    @property
    def id(self) -> str:
        """`<episode>-<step>`: unique in a set of teacher episodes."""
        return f"{self.episode}-{self.step}"

    @model_validator(mode="after")
    def _action_is_a_choice(self):
        if self.action not in self.choices:
            raise ValueError(f"action {self.action!r} is not one of the choices")
        return self


def reflect(env: TextEnv, mistake: str | None = None) -> str:
    """A template reflection on `env`'s current state that names the oracle's move.

    With `mistake` (the wrong action just taken) it first says what that move did wrong.
    """
    if isinstance(env, DangerousTaxi):
        return _taxi_reflection(env, mistake)
    if isinstance(env, AutoExplore):
        return _explore_reflection(env, mistake)
    if isinstance(env, TextWorldEnv):
        return _textworld_reflection(env, mistake)
    if isinstance(env, GymnasiumTextEnv):
        move = env.oracle_action()
        return f"{_lesson(mistake, 'the goal')}The best move here is {move}."
    raise FeedlearnError(_unsupported(env))


def teacher_episodes(
    env: TextEnv,
    n: int,
    seed: int,
    p_oracle: float | None = None,
    negatives: int = 0,
    templates: bool = True,
    key: str = "teacher",
) -> list[ReflectStep]:
    """`n` teacher episodes, then `negatives` recovery examples, deterministic given `seed` and `key` (which
    also prefixes the episodes' ids). Their episodes start from "teacher" seeds (`feedlearn.seeds`), never
    from a seed a test episode starts from.

    Each step takes the oracle's move with probability `p_oracle` (None: the env's default, see the module
    docstring), else a random other safe move (kind "random"; its reflection still names the oracle's
    move); an episode ends when the env terminates or truncates. A negative is a two-step episode: at a
    random state of an oracle path, a wrong safe move (kind "random"), then at the next state a reflection
    on that mistake and the oracle's move (kind "recovery"). With `templates` False the reflections are
    left empty, for a teacher model to write (environments without templates, such as ALFWorld).
    """
    if negatives and isinstance(env, ALFWorldEnv):
        raise FeedlearnError(
            "scripted teacher: no recovery negatives for ALFWorld (its games cannot be copied)"
        )
    think = reflect if templates else lambda env, mistake=None: ""
    if p_oracle is None:
        p_oracle = next((p for cls, p in P_ORACLE.items() if isinstance(env, cls)), None)
        if p_oracle is None:
            raise FeedlearnError(_unsupported(env))
    rng = random.Random(derive_seed(seed, "teacher", key, "moves"))
    steps = []
    for i in range(n):
        obs, _ = env.reset(seed=derive_seed(seed, "teacher", key, "episode", i))
        done, t = False, 0
        while not done:
            oracle = env.oracle_action()
            others = [a for a in _safe_choices(env, obs) if a != oracle]
            explore = bool(others) and rng.random() >= p_oracle
            action = rng.choice(others) if explore else oracle
            kind = "random" if explore else "oracle"
            steps.append(_record(f"{key}-{i}", t, obs, think(env), action, oracle, kind))
            obs, _, terminated, truncated, _ = env.step(action)
            done, t = terminated or truncated, t + 1
    made = 0
    for attempt in range(10 * negatives):
        if made == negatives:
            break
        start = derive_seed(seed, "teacher", key, "negative", attempt)
        pair = _negative(env, start, rng, f"{key}-negative-{made}", think)
        steps += pair
        made += bool(pair)
    if made < negatives:
        raise FeedlearnError(
            f"scripted teacher: made only {made} of {negatives} negatives; the horizon (max_steps "
            f"{env.max_steps}) leaves too little room for a wrong step and a recovery, raise it"
        )
    return steps


def _negative(env: TextEnv, start: int, rng: random.Random, episode: str, think) -> list[ReflectStep]:
    """A wrong safe move at a random state of the oracle path from the episode seeded `start`, and the
    recovery after it ([] if none)."""
    obs, _ = env.reset(seed=start)
    length = _oracle_length(env)
    span = min(length, env.max_steps - 1)  # the recovery step must fit in the horizon
    if span < 1:
        return []
    k = rng.randrange(span)
    for _ in range(k):
        obs, *_ = env.step(env.oracle_action())
    oracle = env.oracle_action()
    wrong = [a for a in _safe_choices(env, obs) if a != oracle and _oracle_length(env, a) > length - k]
    if not wrong:
        return []
    action = rng.choice(wrong)
    first = _record(episode, k, obs, think(env), action, oracle, "random")
    obs, _, terminated, truncated, _ = env.step(action)
    if terminated or truncated:
        return []
    fix = env.oracle_action()
    return [first, _record(episode, k + 1, obs, think(env, action), fix, fix, "recovery", mistake=action)]


def _record(
    episode: str,
    step: int,
    obs: TextObservation,
    reflection: str,
    action: str,
    oracle: str,
    kind: str,
    mistake: str | None = None,
) -> ReflectStep:
    return ReflectStep(
        oracle=oracle,
        mistake=mistake,
        episode=episode,
        step=step,
        state=obs.state,
        choices=list(obs.choices),
        reflection=reflection,
        action=action,
        kind=kind,
        train_policy=kind != "random",
    )


def _safe_choices(env: TextEnv, obs: TextObservation) -> list[str]:
    """The choices that cannot end the episode badly: Taxi moves that change the state; `cd` and `cat`."""
    if isinstance(env, DangerousTaxi):
        table = env.taxi.P[env.taxi_state]
        return [a for a in obs.choices if table[ACTIONS.index(a)][0][1] != env.taxi_state]
    return [a for a in obs.choices if not a.startswith("id ")]


def _oracle_length(env: TextEnv, first: str | None = None) -> int:
    """Steps to the end of the episode following the oracle (after `first`), played on a copy of `env`."""
    sim = copy.deepcopy(env)
    sim.max_steps = sys.maxsize  # never truncated
    steps, terminated = 0, False
    if first is not None:
        steps, terminated = 1, sim.step(first)[2]
    while not terminated:
        steps, terminated = steps + 1, sim.step(sim.oracle_action())[2]
    return steps


def _taxi_reflection(env: DangerousTaxi, mistake: str | None) -> str:
    row, col, passenger, dest = env.taxi.decode(env.taxi_state)
    move = env.oracle_action()
    taxi = f"the taxi is at row {row}, column {col}"
    if passenger == IN_TAXI:
        target = "the destination"
        situation = "The passenger is aboard, the destination is row {}, column {} and {}.".format(
            *env.taxi.locs[dest], taxi
        )
    else:
        target = "the passenger"
        situation = "The passenger waits at row {}, column {} and {}.".format(*env.taxi.locs[passenger], taxi)
    if move == "pickup":
        plan = "I should pick the passenger up, so pickup is the best move."
    elif move == "dropoff":
        plan = "I should drop the passenger off here, so dropoff is the best move."
    else:
        plan = f"I should head {move} toward {target}, so {move} is the best move."
    return f"{_lesson(mistake, target)}{situation} {plan}"


def _explore_reflection(env: AutoExplore, mistake: str | None) -> str:
    move = env.oracle_action()
    verb, _, name = move.partition(" ")
    question = env.task.question
    if question.startswith("Which file ") and question.endswith("?"):
        goal = f"the file that {question.removeprefix('Which file ')[:-1]}"
    else:
        goal = f'the answer to "{question}"'
    situation = f"I am in /{'/'.join(env.cwd)} looking for {goal}."
    if move == "cd ..":
        plan = "It is not under this folder, so I should go back up: cd .. is the best move."
    elif verb == "cd":
        plan = f"It is not here, but the folder {name} should hold it, so cd {name} is the best move."
    else:
        plan = f"It is the file {name} here, so I should answer: id {name} is the best move."
    return f"{_lesson(mistake, 'the answer')}{situation} {plan}"


def _textworld_reflection(env: TextWorldEnv, mistake: str | None) -> str:
    move = env.oracle_action()
    came = f" after {env.commands[-1]}" if env.commands and mistake is None else ""
    where = f"I am in the {env.room}{came}" if env.room else "I am here"
    return (
        f"{_lesson(mistake, 'the goal')}{where}. "
        f"The goal's route goes on with {move}, so {move} is the best move."
    )


def _lesson(mistake: str | None, target: str) -> str:
    """The sentence on a wrong last move ('' without one): it took me away from `target`, or was wasted."""
    if mistake is None:
        return ""
    if mistake in TAXI_MOVES or mistake.startswith(("cd ", "go ")):
        return f"My last move {mistake} took me away from {target}. "
    return f"My last move {mistake} was a wasted step. "


def _unsupported(env: object) -> str:
    return (
        f"scripted teacher: no template reflections for {type(env).__name__}; "
        f"supported: {', '.join(cls.__name__ for cls in P_ORACLE)}"
    )
