"""Reflect-RL's rollouts: the policy's prompt, the player that plays episodes (the policy with its
reflection model, or a chat model), the episodes as records (the steps a policy took, what RL trains on,
and what each episode logged), and the success and cost summaries of a set of episodes, per level."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from feedlearn.backends.base import Backend, ParsedAsker, SamplingParams
from feedlearn.backends.local import sample_rows
from feedlearn.data.records import Record
from feedlearn.envs.catalog import EnvFactory, Level
from feedlearn.envs.text_env import TextObservation
from feedlearn.losses import cost_to_go
from feedlearn.models.chat import prompt_ids
from feedlearn.seeds import derive_seed
from feedlearn.teachers.reflections import agent_question, choice_parser, named_move

if TYPE_CHECKING:
    from feedlearn.methods.reflect_rl.objective import ChoiceObjective

ANALYZE = "\n# Analyze:"
ACTION = "\n# Action:"
LABELS = [*"123456789", *"abcdefghijklmnopqrstuvwxyz"]
"""The choice labels, in order; a state may offer at most this many choices."""


def policy_prompt(obs: TextObservation, reflection: str | None, order: list[int]) -> str:
    """The policy's input: the state, the analysis (if any), and the choices in the shown `order`."""
    shown = TextObservation(obs.state, [obs.choices[i] for i in order])
    analysis = f"{ANALYZE}\n{reflection}" if reflection is not None else ""
    return f"{obs.state}{analysis}\n{shown.render_choices(LABELS[: len(order)])}{ACTION}"


@dataclass
class Step:
    """One decision of the policy: its prompt's token ids, how many choices it had, the label it picked,
    and the cost-to-go from there (the RL target, set when the episode ends)."""

    input_ids: list[int]
    n: int
    label: int
    ret: float = 0.0

    def row(self) -> dict:
        """The step as `ChoiceObjective.collate` reads it, and as a checkpoint's replay buffer saves it."""
        return {"input_ids": self.input_ids, "n": self.n, "label": self.label, "return": self.ret}

    @classmethod
    def from_row(cls, row: dict) -> Step:
        return cls(row["input_ids"], row["n"], row["label"], row["return"])


@dataclass
class Episode:
    """One episode as it is played: the policy's steps, the rewards, and what the episode log keeps."""

    seed: int
    steps: list[Step] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    reflections: list[str] = field(default_factory=list)
    diagnosis: list[tuple[bool, bool]] = field(default_factory=list)
    """Greedy rollouts with reflection: per step, (the analysis names the oracle's move, the policy took the
    move the analysis names)."""
    success: bool = False
    cost: float = 0.0
    invalid: int = 0
    """Remote play: turns without a valid choice (the episode fails at the first)."""

    def act(self, env, action: str, analysis: str) -> tuple[TextObservation, bool]:
        """Act in `env` and record the move; (next observation, whether the episode ended)."""
        obs, reward, terminated, truncated, info = env.step(action)
        self.rewards.append(reward)
        self.cost -= reward
        self.actions.append(action)
        self.reflections.append(analysis)
        done = terminated or truncated
        if done:
            self.success = bool(info.get("success"))
        return obs, done

    def record(self, id: str, iteration: int, level: Level | None) -> EpisodeRecord:
        return EpisodeRecord(
            id=id,
            iteration=iteration,
            level=level_name(level),
            seed=self.seed,
            actions=self.actions,
            reflections=self.reflections,
            success=self.success,
            cost=self.cost,
        )


class EpisodeRecord(Record):
    """One episode, logged with its level, actions and the analysis before each action."""

    id: str
    iteration: int
    level: str
    seed: int
    actions: list[str]
    reflections: list[str]
    success: bool
    cost: float


def level_name(level: Level | None) -> str:
    """A level as records and metrics name it: `all` for None, `0+1` for merged depths."""
    if level is None:
        return "all"
    return "+".join(map(str, level)) if isinstance(level, tuple) else str(level)


def by_level(played: dict[Level | None, list[Episode]]) -> dict:
    """Success (%) and mean cost over all episodes, and per level when there are several; with reflection
    diagnoses, the % of steps whose analysis names the oracle's move and whose action is the named one."""

    def summary(episodes: list[Episode]) -> dict:
        out = {
            "success": round(100.0 * sum(ep.success for ep in episodes) / len(episodes), 2),
            "cost": round(sum(ep.cost for ep in episodes) / len(episodes), 4),
            "episodes": len(episodes),
        }
        steps = [d for ep in episodes for d in ep.diagnosis]
        if steps:
            out["reflection_names_best_move"] = round(
                100.0 * sum(right for right, _ in steps) / len(steps), 2
            )
            out["policy_follows_reflection"] = round(
                100.0 * sum(follows for _, follows in steps) / len(steps), 2
            )
        return out

    metrics = summary([ep for eps in played.values() for ep in eps])
    if len(played) > 1:
        metrics["levels"] = {level_name(level): summary(eps) for level, eps in played.items()}
    return metrics


def episode_records(played: dict[Level | None, list[Episode]], prefix: str = "") -> list[EpisodeRecord]:
    """Test episodes (level -> episodes) as records with ids `<prefix><level>-<i>`."""
    return [
        ep.record(f"{prefix}{level_name(level)}-{i}", 0, level)
        for level, episodes in played.items()
        for i, ep in enumerate(episodes)
    ]


@dataclass
class Player:
    """Plays Reflect-RL episodes in the recipe's environments, one per seed, all at once."""

    envs: EnvFactory
    shuffle_labels: bool
    """Show the choices in a new random order every step (else the environment's)."""
    max_reflection_tokens: int
    temperature: float
    """The policy's sampling temperature (training rollouts; evaluation is greedy)."""
    reflection_temperature: float
    """The reflection model's, in training rollouts (evaluation: 0)."""

    def order(self, n: int, rng: random.Random) -> list[int]:
        """The order the choices are shown in: shuffled (no position bias) or the environment's."""
        order = list(range(n))
        if self.shuffle_labels:
            rng.shuffle(order)
        return order

    def play(
        self,
        policy,
        tok,
        reflector: Backend | None,
        objective: ChoiceObjective,
        seeds: list[int],
        split: str,
        level: Level | None,
        greedy: bool,
    ) -> list[Episode]:
        """The policy (reading `reflector`'s analysis, if any) plays one episode per seed; each step keeps its
        prompt ids, label and reward. Greedy (evaluation) rollouts with reflection also note, per step,
        whether the analysis names the oracle's move and whether the policy took the move it names."""
        envs = [self.envs.make(split, level) for _ in seeds]
        obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
        rngs = [random.Random(derive_seed(s, "order", "labels")) for s in seeds]
        actions = [torch.Generator().manual_seed(derive_seed(s, "sampling", "actions")) for s in seeds]
        episodes = [Episode(s) for s in seeds]
        active = list(range(len(envs)))
        sampling = SamplingParams(
            temperature=0.0 if greedy else self.reflection_temperature,
            max_new_tokens=self.max_reflection_tokens,
        )
        while active:
            reflections = [None] * len(active)
            if reflector is not None:
                convs = [[{"role": "user", "content": obs[i].state + ANALYZE}] for i in active]
                keys = [f"reflection/{seeds[i]}/step{len(episodes[i].steps)}" for i in active]
                reflections = [r[0] for r in reflector.generate(convs, 1, sampling, keys)]
            orders = [self.order(len(obs[i].choices), rngs[i]) for i in active]
            rows = [
                {
                    "input_ids": prompt_ids(tok, [{"role": "user", "content": policy_prompt(obs[i], r, o)}]),
                    "n": len(obs[i].choices),
                }
                for i, r, o in zip(active, reflections, orders, strict=True)
            ]
            with torch.no_grad():
                logps = objective.logprobs(policy, objective.collate([{**r, "label": 0} for r in rows]))
            if greedy:
                picks = logps.argmax(-1)
            else:  # each episode draws its actions from its own generator
                uniforms = torch.cat(
                    [torch.rand(1, generator=actions[i], dtype=torch.float64) for i in active]
                )
                picks = sample_rows(torch.softmax(logps / self.temperature, -1), uniforms)
            still = []
            for i, row, order, pick, reflection in zip(
                active, rows, orders, picks.tolist(), reflections, strict=True
            ):
                action = obs[i].choices[order[pick]]
                episodes[i].steps.append(Step(row["input_ids"], row["n"], pick))
                if greedy and reflection is not None:
                    named = named_move(reflection, obs[i].choices)
                    episodes[i].diagnosis.append((named == envs[i].oracle_action(), named == action))
                obs[i], done = episodes[i].act(envs[i], action, reflection or "")
                if not done:
                    still.append(i)
            active = still
        for ep in episodes:
            for step, g in zip(ep.steps, cost_to_go(ep.rewards), strict=True):
                step.ret = g
        return episodes

    def play_remote(self, asker: ParsedAsker, seeds: list[int], level: Level | None) -> list[Episode]:
        """A chat model plays one test episode per seed, all turns of a round asked at once; its reply is
        logged as the step's analysis."""
        envs = [self.envs.make("test", level) for _ in seeds]
        obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
        episodes = [Episode(s) for s in seeds]
        active = list(range(len(envs)))
        while active:
            labels = {i: LABELS[: len(obs[i].choices)] for i in active}
            convs = [[{"role": "user", "content": agent_question(obs[i], labels[i])}] for i in active]
            still = []
            answers = asker.ask(convs, [choice_parser(labels[i]) for i in active])
            for i, answer in zip(active, answers, strict=True):
                if answer is None:  # no valid choice: the episode fails here
                    episodes[i].invalid += 1
                    continue
                pick, reply = answer
                obs[i], done = episodes[i].act(envs[i], obs[i].choices[pick], reply)
                if not done:
                    still.append(i)
            active = still
        return episodes
