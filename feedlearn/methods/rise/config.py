"""RISE's recipe: its settings sections and `RiseConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feedlearn.backends.openai_compat import OpenAIBackendConfig
from feedlearn.data.hub import DatasetSource, export_rows
from feedlearn.envs.math_env import MathPrompt
from feedlearn.methods.common import GeneratingRecipe, OneSource, Settings
from feedlearn.methods.rise.data import (
    Criterion,
    DedupeScope,
)
from feedlearn.tasks.math_data import MathProblem, ProblemFormat, load_problems
from feedlearn.tasks.reasoning_gym_data import ReasoningGymSettings, load_reasoning_gym
from feedlearn.tasks.synthetic_math import generate_problems
from feedlearn.training.trainer import TrainSettings


class SyntheticSettings(Settings):
    """Generated arithmetic word problems."""

    n: int = Field(gt=0, description="How many problems.")
    seed: int = Field(default=0, description="Same seed, same problems.")
    levels: list[int] = Field(default=[1, 2, 3], description="Difficulty levels (operations per problem).")


class ProblemSet(OneSource):
    """Where problems come from: a file, a data set, the synthetic generator or reasoning-gym."""

    path: str | None = Field(default=None, description="A JSONL file of problems.")
    dataset: DatasetSource | None = Field(
        default=None, description="A `datasets` split (hub id or save_to_disk folder) with rows in `format`."
    )
    format: ProblemFormat = Field(default="gsm8k", description="Row format of `path` or `dataset`.")
    synthetic: SyntheticSettings | None = Field(default=None, description="Generate problems instead.")
    reasoning_gym: ReasoningGymSettings | None = Field(
        default=None,
        description="Or a reasoning-gym task's problems, scored by its own check (the reasoning extra).",
    )
    limit: int | None = Field(default=None, gt=0, description="Use only the first `limit` problems.")

    def load(self, prefix: str, split: Literal["train", "test"] = "train") -> list[MathProblem]:
        """The problems, read or generated (generated test problems never share a question with generated
        training problems)."""
        if self.dataset is not None:
            problems = load_problems(export_rows(self.dataset), self.format)
        elif self.path is not None:
            problems = load_problems(self.path, self.format)
        elif self.reasoning_gym is not None:
            problems = load_reasoning_gym(self.reasoning_gym, split)
        else:
            s = self.synthetic
            problems = generate_problems(s.n, s.seed, s.levels, prefix, split)
        return problems[: self.limit]


class TurnSpec(Settings):
    """One collection turn: how many samples, from which model, sampled how."""

    n: int = Field(default=1, gt=0, description="Samples drawn; the first highest-reward one is kept.")
    teacher: OpenAIBackendConfig | None = Field(
        default=None, description="A remote OpenAI-compatible model for this turn; None = the policy."
    )
    temperature: float | None = Field(
        default=None, ge=0, description="This turn's sampling temperature; None = collect.temperature."
    )
    max_new_tokens: int | None = Field(
        default=None,
        gt=0,
        description="This turn's longest action, in tokens; None = collect.max_new_tokens.",
    )
    fresh: bool = Field(
        default=False,
        description="Draw this turn's samples on the opening alone, as a first attempt that never saw the "
        "earlier ones, and record the best as the answer to the retry message (a teacher that starts "
        "over). False: they see the dialogue so far (the reference's).",
    )


class CollectSettings(Settings):
    """Multi-turn data collection."""

    turns: list[TurnSpec] = Field(
        default_factory=lambda: [TurnSpec(n=1), TurnSpec(n=16)],
        description="One entry per turn; the default is self-distillation, best-of-16 at turn 2.",
    )
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature of every turn.")
    max_new_tokens: int = Field(default=512, gt=0, description="Longest action, in tokens.")
    redraws: int = Field(
        default=0,
        ge=0,
        description="When every sample of a turn is degenerate, draw the turn's n samples again, up to this "
        "many times; still none left: the action is empty (reward -1).",
    )
    chunk_size: int = Field(
        default=256, gt=0, description="Problems rolled out together; each finished chunk is saved."
    )


class ConvertSettings(Settings):
    """Turning trajectories into weighted SFT examples."""

    criterion: Criterion = Field(default="all", description="Which turns become examples.")
    temperature: float = Field(default=0.4, gt=0, description="Weight = exp(reward / temperature).")
    dedupe: bool = Field(default=True, description="Drop empty actions and repeats within a trajectory.")
    dedupe_scope: DedupeScope = Field(
        default="kept",
        description="kept: dedupe among the turns the criterion keeps, each example's context as collected; "
        "trajectory (the reference's): strip every action, drop the empty and repeated ones (and the retry "
        "message after each) from the whole trajectory, then apply the criterion to the turns left.",
    )
    only_successful: bool = Field(default=False, description="Keep only trajectories that end correct.")


class RiseEvaluateSettings(Settings):
    """Evaluation without an oracle: sequential turns and parallel samples."""

    turns: int = Field(
        default=5, gt=0, description="Sequential turns T; each is followed by the retry message."
    )
    context_window: int | None = Field(
        default=None, gt=1, description="At turn k >= w keep the question and only the last w-1 attempts."
    )
    parallel_samples: int = Field(
        default=5, gt=0, description="Independent first-turn samples n (mn@t1, pn@t1 when n > 1)."
    )
    temperature: float = Field(
        default=1.0, ge=0, description="Sampling temperature, sequential and parallel."
    )
    max_new_tokens: int = Field(default=512, gt=0, description="Longest answer, in tokens.")


class SFTSettings(Settings):
    """Optional warm start on worked solutions before RISE (a tiny model knows nothing yet)."""

    problems: ProblemSet = Field(description="Problems with worked solutions.")
    chat_turns: int = Field(
        default=1,
        ge=1,
        description="Each training row is a chat of 1 to chat_turns unrelated problems in a row, every "
        "answer trained, so the model also answers later turns of a chat as instruct models do (it never "
        "sees a correction).",
    )
    retries: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of warm-start problems asked again right after their solution, with the retry "
        "message, and solved again (the same worked solution): the base then re-answers a retried question "
        "as instruct models do, without ever seeing a correction. 0: a retry is new to the base.",
    )
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimization.")


class RiseConfig(GeneratingRecipe):
    """A RISE recipe."""

    method: Literal["rise"] = "rise"
    prompt: MathPrompt = Field(default_factory=MathPrompt, description="Instruction and retry message.")
    train_problems: ProblemSet = Field(description="Problems to collect trajectories on.")
    test_problems: ProblemSet = Field(description="Held-out problems to evaluate on.")
    sft: SFTSettings | None = Field(default=None, description="Warm start before the first iteration.")
    iterations: int = Field(default=1, gt=0, description="Rounds of collect, convert, train, evaluate.")
    collect: CollectSettings = Field(default_factory=CollectSettings, description="Data collection.")
    convert: ConvertSettings = Field(default_factory=ConvertSettings, description="Conversion.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="RWR training.")
    evaluate: RiseEvaluateSettings = Field(default_factory=RiseEvaluateSettings, description="Evaluation.")
