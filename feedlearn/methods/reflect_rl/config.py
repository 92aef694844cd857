"""Reflect-RL's recipe: its settings sections and `ReflectRLConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from feedlearn.envs.catalog import (
    ALFWorldEnvSettings,
    AutoExploreEnvSettings,
    EnvSettings,
    Level,
    TaxiEnvSettings,
)
from feedlearn.methods.common import AskSettings, GeneratingRecipe, Settings
from feedlearn.training.trainer import TrainSettings


class TeacherData(AskSettings):
    """Teacher trajectories for SFT: the environment's oracle plays; reflections come from templates or
    from a teacher model (`openai` or `local`)."""

    episodes: int = Field(default=300, gt=0, description="Teacher episodes (split evenly over the levels).")
    p_oracle: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of oracle actions (else random safe ones); None: the environment's default "
        "(Taxi 0.9, AutoExplore 1.0, ALFWorld 0.7).",
    )
    negatives: int = Field(default=100, ge=0, description="Recovery examples (a wrong step, then a fix).")
    reflections: Literal["template", "llm"] = Field(
        default="template",
        description="template: the scripted teacher's sentences (Taxi, AutoExplore); llm: the teacher "
        "model writes each reflection, told the best move (a template stands in where it gives none).",
    )
    tasks: int = Field(
        default=0, ge=0, description="AutoExplore: extra questions the teacher model writes about files."
    )
    temperature: float = Field(default=0.7, ge=0, description="Teacher sampling temperature.")
    max_new_tokens: int = Field(default=160, gt=0, description="Longest teacher reply, in tokens.")

    @model_validator(mode="after")
    def _model_when_needed(self):
        if (self.reflections == "llm" or self.tasks) and not self.configured:
            raise ValueError(
                "llm reflections and teacher tasks need a teacher model: set 'openai' or 'local'"
            )
        return self


class RLSettings(Settings):
    """Online RL of the policy."""

    algorithm: Literal["reinforce", "ppo"] = Field(
        default="reinforce",
        description="reinforce: REINFORCE on the cost-to-go, no critic; ppo: clipped PPO with a linear "
        "critic head on the policy's last hidden state (detached, so the critic does not train the policy).",
    )
    iterations: int = Field(default=30, gt=0, description="Policy-gradient iterations.")
    episodes_per_iteration: int = Field(default=16, gt=0, description="Episodes rolled out per iteration.")
    curriculum: list[Level] | None = Field(
        default=None,
        description="Levels trained in turn (Taxi: pickup, dropoff, full; AutoExplore: target depths, or "
        "lists of depths trained as one level, [[0, 1], 2] being the reference's merge_first_two); None: "
        "the env's own level.",
    )
    curriculum_share: Literal["tasks", "equal"] = Field(
        default="tasks",
        description="Each level's share of the iterations. tasks: in proportion to its training tasks, as "
        "the reference shares them (AutoExplore; levels without tasks, Taxi's, share equally); equal: the "
        "same share for every level.",
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.001, ge=0, description="Adam weight decay.")
    max_grad_norm: float = Field(default=0.3, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(
        default=64,
        gt=0,
        description="Steps per forward pass in an update; gradients accumulate over the rest.",
    )
    replay_size: int = Field(
        default=50,
        ge=0,
        description="Successful episodes the replay buffer keeps (the newest); it is emptied when the "
        "curriculum moves to the next level, as in the reference. 0: no replay.",
    )
    replay_batch: int | None = Field(
        default=None,
        gt=0,
        description="Episodes drawn from the buffer, with replacement, for each iteration's replay update, "
        "as the reference draws them; None: as many as `episodes_per_iteration`.",
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the policy.")
    reflection_temperature: float = Field(
        default=1.0,
        ge=0,
        description="Sampling temperature of the reflection model in RL rollouts (0: greedy, as in "
        "evaluation); a small reflector's sampled analyses can be noise that misleads the policy.",
    )
    ppo_clip: float = Field(default=0.1, gt=0, description="PPO: the ratio's clip range.")
    ppo_epochs: int = Field(default=3, gt=0, description="PPO: update passes over each batch.")
    value_coef: float = Field(default=0.5, ge=0, description="PPO: weight of the critic's squared error.")
    checkpoint_every: int = Field(
        default=5, gt=0, description="Iterations between checkpoints (policy, critic, optimizer, replay)."
    )


class RemoteAgentSettings(AskSettings):
    """A chat model that plays the test episodes through a backend (prompted to analyze, then choose)."""

    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature (0: greedy).")
    max_attempts: int = Field(
        default=2, ge=1, description="Asks per turn; a turn without a valid choice fails the episode."
    )


class ReflectRLEvaluateSettings(Settings):
    """Test episodes."""

    episodes: int = Field(default=100, gt=0, description="Episodes per level.")
    seed: int = Field(
        default=0,
        description="Picks the test episodes; their seeds are of purpose 'test' (feedlearn.seeds), which no "
        "training or teacher episode has.",
    )
    levels: list[Level] | None = Field(
        default=None, description="Levels evaluated, each reported apart; None: the env's own level."
    )
    sampled: bool = Field(
        default=True,
        description="Also play the test episodes with sampled actions and reflections (the temperatures "
        "of RL rollouts, `rl.temperature` and `rl.reflection_temperature`), as the reference evaluates; "
        "reported under `sampled` beside the greedy numbers.",
    )
    remote: RemoteAgentSettings | None = Field(
        default=None, description="A chat model to evaluate on the same episodes (stage evaluate-remote)."
    )


class ReflectRLConfig(GeneratingRecipe):
    """A Reflect-RL recipe."""

    method: Literal["reflect-rl"] = "reflect-rl"
    env: EnvSettings = Field(
        default_factory=lambda: TaxiEnvSettings(name="taxi"),
        description="The environment: {name: taxi | autoexplore | alfworld | textworld | gymnasium, ...its "
        "settings}.",
    )
    reflection: bool = Field(default=True, description="Use a reflection model before each action.")
    shuffle_labels: bool = Field(
        default=True,
        description="Show the choices in a new random order every step, so the policy cannot learn a "
        "position instead of an action; off, they keep the environment's order.",
    )
    teacher: TeacherData = Field(default_factory=TeacherData, description="SFT data.")
    sft: TrainSettings = Field(
        default_factory=TrainSettings, description="SFT of the policy (and reflector)."
    )
    reflector_sft: TrainSettings | None = Field(
        default=None,
        description="SFT of the reflection model when it differs from `sft` (None: `sft`). Its decisive "
        "words are a few tokens of a long analysis, so it may need more epochs than the policy.",
    )
    rl: RLSettings = Field(default_factory=RLSettings, description="Online RL of the policy.")
    evaluate: ReflectRLEvaluateSettings = Field(
        default_factory=ReflectRLEvaluateSettings, description="Evaluation."
    )
    max_reflection_tokens: int = Field(default=64, gt=0, description="Longest reflection, in tokens.")

    @model_validator(mode="after")
    def _env_needs(self):
        if (
            isinstance(self.env, ALFWorldEnvSettings)
            and self.teacher.reflections != "llm"
            and self.reflection
        ):
            raise ValueError("ALFWorld has no template reflections: set teacher.reflections: llm")
        if self.teacher.tasks and not isinstance(self.env, AutoExploreEnvSettings):
            raise ValueError("teacher.tasks writes AutoExplore questions; this env is not AutoExplore")
        return self
