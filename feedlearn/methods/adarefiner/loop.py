"""AdaRefiner's query loop: every `interval` steps of an episode, the adapter LM reads the game state and
the comprehension score of the last instruction and writes an analysis; the decision maker turns it into
three sub-goals; their embedding is the agent's instruction until the next query.

`GuidedVecEnv` runs the loop inside a Stable-Baselines3 vectorized environment: its observation is a dict
of the environment's own observation (`state`) and the instruction's embedding (`instruction`), so the
instruction stored with each step in PPO's rollout buffer is the one that chose its action. Each query is
recorded (prompt, analysis, sub-goals, the score before it and the score of its instruction after it ran,
achievements unlocked meanwhile) once its instruction has run, through `Guide.on_query`.

The prompts are the reference code's (PKU-RL/AdaRefiner, utils.py), word for word.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from feedlearn.backends.base import Backend, ParsedAsker, SamplingParams
from feedlearn.data.records import Message, Record
from feedlearn.envs.crafter_env import ITEMS, CrafterState, text_state
from feedlearn.feedback.comprehension import ActionText, Embedder, comprehension_scores, step_text
from feedlearn.feedback.subgoals import (
    MAX_REPLY_CHARS,
    SUBGOALS,
    parse_subgoals,
    rule_subgoals,
    template_analysis,
)
from feedlearn.seeds import derive_seed

ADAPTER_SYSTEM = (
    "You are a professional game analyst. A player is playing a 2D Minecraft game. You will get the "
    "player's observation, status information, and its comprehension score of language guidance. You will "
    "be asked to provide concise summaries and suggestions about this player."
)
TOOLS_AND_BLOCKS = [k for k in ITEMS if k not in ("health", "food", "drink", "energy")]
"""What a make or place action changes when it works (placing uses up wood, stone or a sapling; making
adds a tool): a change in these counts is the action's effect."""
DECISION_SYSTEM = (
    "You are a professional game analyst. A player is playing a 2D Minecraft game. You will also get "
    f"analysis about this player from another analyst. Available sub-goals are: <{', '.join(SUBGOALS)}>. "
    "You are asked to suggest 3 sub-goals from available sub-goals in one sentence without any other words."
)
QueryClock = Literal["episode", "world"]


class QueryRecord(Record):
    """One query of the loop, recorded when its instruction has run (the adapter's training data)."""

    id: str
    env: int
    episode: int
    step: int
    prompt: list[Message]
    analysis: str | None = None
    subgoals: list[str]
    fallback: bool = False
    score_before: float | None = None
    score_after: float | None = None
    achievements: list[str] = []
    reply: str | None = None
    """The decision model's reply, where it is the instruction as it is (`decision.instruction: reply`)."""


class CrafterEpisode(Record):
    """One finished episode."""

    id: str
    env: int
    episode: int
    length: int
    reward: float
    achievements: list[str]


def describe(state: CrafterState, past: str) -> str:
    """The fields both prompts share, as the reference writes them (an empty field is `<>`); `past` is the
    instruction in force, as text."""
    return (
        f"Player sees: <{', '.join(state.sees)}>. Player status: <{', '.join(state.status)}>. "
        f"Past action: <{state.past_action or ''}>. Past sub-goals: <{past}>."
    )


def adapter_prompt(state: CrafterState, past: str, score: float | None) -> list[Message]:
    """The adapter LM's prompt: the state, the instruction in force, and its comprehension score (empty
    before an instruction has run)."""
    shown = "" if score is None else f"{score:.3f}"
    user = f"{describe(state, past)} Player's comprehension score: <{shown}>."
    return [Message(role="system", content=ADAPTER_SYSTEM), Message(role="user", content=user)]


def decision_prompt(state: CrafterState, past: str, analysis: str | None) -> list[dict]:
    """The decision model's prompt: the same fields and the adapter's analysis (when there is one)."""
    user = describe(state, past)
    if analysis is not None:
        user += f" Analysis: <{analysis}>."
    return [{"role": "system", "content": DECISION_SYSTEM}, {"role": "user", "content": user}]


class Analyst(Protocol):
    """Writes one analysis per prompt (`states` are the same states as text-state fields)."""

    def analyze(self, prompts: list[list[Message]], states: list[CrafterState], keys: list[str]) -> list[str]:
        """One analysis per prompt; `keys` name the queries (samples are seeded by them)."""
        ...


@dataclass
class LMAnalyst:
    """The adapter LM behind a backend (local or remote)."""

    backend: Backend
    sampling: SamplingParams

    def analyze(self, prompts, states, keys):
        conversations = [[m.model_dump() for m in p] for p in prompts]
        return [r[0] for r in self.backend.generate(conversations, 1, self.sampling, keys=keys)]


@dataclass
class TemplateAnalyst:
    """Template analyses naming plausible sub-goals at random (the warm-up data of a tiny adapter)."""

    seed: int

    def analyze(self, prompts, states, keys):
        return [
            template_analysis(s.sees, s.status, random.Random(derive_seed(self.seed, "data", "template", k)))
            for s, k in zip(states, keys, strict=True)
        ]


class Decider(Protocol):
    """Turns states and analyses into instructions: (sub-goals, whether the fallback rule chose them, the
    instruction as text: what the agent embeds and the score compares its actions with)."""

    def decide(
        self, states: list[CrafterState], past: list[str], analyses: list[str | None]
    ) -> list[tuple[list[str], bool, str]]: ...


class NamedDecider:
    """The offline decision maker: the first three allowed sub-goals the analysis names, or the rule."""

    def decide(self, states, past, analyses):
        out = []
        for state, analysis in zip(states, analyses, strict=True):
            named = parse_subgoals(analysis) if analysis else None
            goals, fallback = (named, False) if named else (rule_subgoals(state.sees, state.status), True)
            out.append((goals, fallback, ", ".join(goals)))
        return out


@dataclass
class ModelDecider:
    """A decision model (an API such as GPT-4, or a local model). `reply` False: its reply parsed against
    the allowed sub-goals, garbage asked again (`asker.max_attempts`), then the rule; the instruction is
    the sub-goals' names. `reply` True (the reference's): the reply itself is the instruction, whatever it
    says, never asked again; the sub-goals it names are recorded."""

    asker: ParsedAsker
    reply: bool = False

    def decide(self, states, past, analyses):
        conversations = [decision_prompt(s, p, a) for s, p, a in zip(states, past, analyses, strict=True)]
        if self.reply:  # a one-element tuple is never empty: no reply is asked again
            replies = self.asker.ask(conversations, lambda r: (r[:MAX_REPLY_CHARS].strip(),))
            return [(parse_subgoals(text) or [], False, text) for (text,) in replies]
        parsed = self.asker.ask(conversations, parse_subgoals)
        out = []
        for state, goals in zip(states, parsed, strict=True):
            goals, fallback = (goals, False) if goals else (rule_subgoals(state.sees, state.status), True)
            out.append((goals, fallback, ", ".join(goals)))
        return out


@dataclass
class Track:
    """The loop's state for one environment (picklable: it goes into checkpoints)."""

    episode: int = -1
    t: int = 0
    queries: int = 0
    subgoals: list[str] = field(default_factory=list)
    text: str = ""
    """The instruction in force as text (what the score compares the actions with)."""
    instruction: np.ndarray | None = None
    actions: list[str] = field(default_factory=list)
    inventory: dict[str, int] = field(default_factory=dict)
    last_action: str | None = None
    score: float | None = None
    pending: QueryRecord | None = None
    reward: float = 0.0
    unlocked: list[str] = field(default_factory=list)
    clock: int = 0
    """Steps taken in this world, over all its episodes."""


@dataclass
class Guide:
    """Runs the queries of a set of environments (None `analyst`: no adapter; None `decider`: no guidance
    at all, the instruction stays zero). `prefix` names this run's records, `worlds` the environments'
    numbers in them (default: their positions; a process playing a share of the worlds gives theirs).
    `encoder` embeds the instruction the agent reads (None: `embedder`, which scores). `clock` `episode`:
    every episode starts afresh (a query at its first step, no instruction, action history or score
    carried over); `world`: all of that runs on across a world's episodes, a query every `interval` steps
    of the world."""

    analyst: Analyst | None
    decider: Decider | None
    embedder: Embedder
    interval: int
    action_text: ActionText
    prefix: str
    worlds: Sequence[int] | None = None
    encoder: Embedder | None = None
    clock: QueryClock = "episode"
    on_query: Callable[[QueryRecord], None] = lambda record: None
    on_episode: Callable[[CrafterEpisode], None] = lambda episode: None

    @property
    def instruction_encoder(self) -> Embedder:
        """What embeds the instruction the agent reads."""
        return self.embedder if self.encoder is None else self.encoder

    def start(self, track: Track, info: dict) -> None:
        """A new episode begins for `track`, at the state of `info`."""
        fresh = self.clock == "episode" or track.episode < 0
        track.inventory = dict(info["inventory"])
        track.episode += 1
        track.t, track.reward, track.unlocked = 0, 0.0, []
        if fresh:
            track.subgoals, track.text, track.actions = [], "", []
            track.last_action, track.score = None, None
            track.instruction = np.zeros(self.instruction_encoder.dim, dtype=np.float32)

    def observe(self, track: Track, info: dict, reward: float) -> None:
        """One step of `track`'s episode was taken."""
        track.t += 1
        track.clock += 1
        track.reward += float(reward)
        track.last_action = info["action"]
        changed = any(info["inventory"][k] != track.inventory.get(k, 0) for k in TOOLS_AND_BLOCKS)
        track.actions.append(step_text(info["action"], info["faced"], changed, self.action_text))
        track.inventory = dict(info["inventory"])
        track.unlocked += info["unlocked"]
        if track.pending is not None:
            track.pending.achievements += info["unlocked"]

    def finish(self, index: int, track: Track) -> None:
        """`track`'s episode ended: the episode is recorded, and its last query (on the `episode` clock;
        on the `world` clock the query runs on into the next episode)."""
        if self.clock == "episode":
            self.close_query(track)
        self.on_episode(
            CrafterEpisode(
                id=f"{self.prefix}-env{self.world(index)}-ep{track.episode}",
                env=self.world(index),
                episode=track.episode,
                length=track.t,
                reward=round(track.reward, 6),
                achievements=sorted(set(track.unlocked)),
            )
        )

    def world(self, index: int) -> int:
        """The number of the environment at position `index`."""
        return index if self.worlds is None else self.worlds[index]

    def due(self, track: Track) -> bool:
        """Whether `track` queries now."""
        steps = track.t if self.clock == "episode" else track.clock
        return self.decider is not None and steps % self.interval == 0

    def query(self, indices: list[int], tracks: Sequence[Track], infos: Sequence[dict]) -> None:
        """Query for the environments `indices` (batched), given each one's latest info."""
        if not indices or self.decider is None:
            return
        states, prompts, keys, past = [], [], [], []
        for i in indices:
            track = tracks[i]
            self.close_query(track)
            state = text_state(infos[i], track.last_action)
            states.append(state)
            prompts.append(adapter_prompt(state, track.text, track.score))
            keys.append(f"{self.prefix}-env{self.world(i)}-q{track.queries}")
            past.append(track.text)
        analyses = self.analyst.analyze(prompts, states, keys) if self.analyst else [None] * len(indices)
        decisions = self.decider.decide(states, past, analyses)
        vectors = self.instruction_encoder.encode([text for _, _, text in decisions])
        for row, i in enumerate(indices):
            track, (goals, fallback, text) = tracks[i], decisions[row]
            track.pending = QueryRecord(
                id=keys[row],
                env=self.world(i),
                episode=track.episode,
                step=track.t,
                prompt=prompts[row],
                analysis=analyses[row],
                subgoals=goals,
                fallback=fallback,
                score_before=track.score,
                reply=text if getattr(self.decider, "reply", False) else None,
            )
            track.queries += 1
            track.subgoals, track.text = goals, text
            track.instruction = vectors[row]

    def close_query(self, track: Track) -> None:
        """Score the instruction in force on the actions taken under it, and record its query."""
        if track.pending is None:
            return
        score = None
        if track.actions:
            text = ", ".join(track.actions)
            score = round(comprehension_scores(self.embedder, [text], [track.text])[0], 6)
        track.pending.score_after = score
        self.on_query(track.pending)
        track.pending, track.score, track.actions = None, score, []


class GuidedVecEnv(VecEnvWrapper):
    """A vectorized Crafter whose observations carry the instruction in force (see the module's text).
    `infos[i]` is environment i's latest info (after an episode ends: the new episode's first)."""

    def __init__(self, venv: VecEnv, guide: Guide):
        space = spaces.Dict(
            {
                "state": venv.observation_space,
                # unit-norm rows from the embedder; the reference's reinitialized encoder is unbounded
                "instruction": spaces.Box(
                    -1.0 if guide.encoder is None else -np.inf,
                    1.0 if guide.encoder is None else np.inf,
                    (guide.instruction_encoder.dim,),
                    np.float32,
                ),
            }
        )
        super().__init__(venv, observation_space=space)
        self.guide = guide
        self.tracks = [Track() for _ in range(venv.num_envs)]
        self.infos: list[dict] = [{} for _ in range(venv.num_envs)]
        self._actions = None

    def __getstate__(self):  # the guide holds models: checkpoints keep the environments and tracks only
        return {k: v for k, v in self.__dict__.items() if k not in ("guide", "class_attributes")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.class_attributes = dict(inspect.getmembers(self.__class__))  # what VecEnvWrapper looks up

    def reset(self):
        obs = self.venv.reset()
        self.infos = list(self.venv.reset_infos)
        for track, info in zip(self.tracks, self.infos, strict=True):
            self.guide.start(track, info)
        self.guide.query(list(range(self.num_envs)), self.tracks, self.infos)
        return self._observation(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        acting = [t.instruction for t in self.tracks]
        for i, track in enumerate(self.tracks):
            self.guide.observe(track, infos[i], rewards[i])
            self.infos[i] = infos[i]
            if dones[i]:
                self.guide.finish(i, track)
                self.infos[i] = self.venv.reset_infos[i]
                self.guide.start(track, self.infos[i])
                if infos[i].get("terminal_observation") is not None:
                    infos[i]["terminal_observation"] = {
                        "state": infos[i]["terminal_observation"],
                        "instruction": acting[i],
                    }
        due = [i for i, t in enumerate(self.tracks) if self.guide.due(t)]
        self.guide.query(due, self.tracks, self.infos)
        return self._observation(obs), rewards, dones, infos

    def _observation(self, obs) -> dict[str, np.ndarray]:
        return {"state": obs, "instruction": np.stack([t.instruction for t in self.tracks])}
