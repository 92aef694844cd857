"""Reflect-RL's episodes as records: the steps a policy took (what RL trains on), what each episode logged,
and the success and cost summaries of a set of episodes, per level."""

from __future__ import annotations

from dataclasses import dataclass, field

from feedlearn.data.records import Record
from feedlearn.envs.catalog import Level
from feedlearn.envs.text_env import TextObservation


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
    return "all" if level is None else str(level)


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
