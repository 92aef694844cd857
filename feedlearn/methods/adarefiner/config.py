"""AdaRefiner's recipe: its settings sections and `AdaRefinerConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from feedlearn.envs.crafter_player import SCRIPTED, SKILLED
from feedlearn.feedback.comprehension import ActionText
from feedlearn.methods.adarefiner.agent import (
    Network,
)
from feedlearn.methods.adarefiner.loop import (
    QueryClock,
)
from feedlearn.methods.common import AskSettings, GeneratingRecipe, Settings
from feedlearn.training.trainer import TrainSettings


class CrafterSettings(Settings):
    """The Crafter worlds."""

    area: tuple[int, int] = Field(default=(64, 64), description="World size in cells (resets cost ~area).")
    view: tuple[int, int] = Field(default=(9, 9), description="The image's view in cells (crafter's).")
    size: tuple[int, int] = Field(default=(64, 64), description="The image's size in pixels.")
    length: int = Field(default=10000, gt=0, description="Steps after which an episode is truncated.")
    observation: Literal["image", "symbolic"] = Field(
        default="image",
        description="image: crafter's RGB frame; symbolic: one-hot 9x7 local view + inventory (no render).",
    )


class AgentSettings(Settings):
    """The acting agent: PPO (SB3's names and the spec's defaults), or the scripted player."""

    kind: Literal["ppo", "scripted"] = Field(
        default="ppo", description="ppo: learns; scripted: a skill-limited scripted player (no learning)."
    )
    envs: int = Field(default=1, gt=0, description="Worlds stepped in parallel (queries are batched).")
    network: Network = Field(default="reference", description="reference (GPU), cnn (image), mlp (symbolic).")
    features: int = Field(default=512, gt=0, description="Width of the features the heads read.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Adam learning rate.")
    n_steps: int = Field(
        default=4096, gt=0, description="Steps per world per PPO update (and per iteration)."
    )
    batch_size: int = Field(default=128, gt=1, description="PPO minibatch size.")
    n_epochs: int = Field(default=4, gt=0, description="PPO epochs per update.")
    gamma: float = Field(default=0.95, gt=0, le=1, description="Discount.")
    gae_lambda: float = Field(default=0.65, gt=0, le=1, description="GAE lambda.")
    clip_range: float = Field(default=0.2, gt=0, description="PPO clip range.")
    ent_coef: float = Field(default=0.0, ge=0, description="Entropy bonus coefficient.")
    vf_coef: float = Field(default=0.5, ge=0, description="Value loss coefficient.")
    max_grad_norm: float = Field(default=0.5, gt=0, description="Gradient clipping norm.")
    device: str = Field(
        default="auto", description="Torch device of the agent (auto: a GPU when there is one)."
    )
    skills: list[str] = Field(
        default_factory=lambda: list(SKILLED),
        description="scripted: the sub-goals the player carries out well; the rest it does at random.",
    )
    patience: int = Field(default=30, gt=0, description="scripted: steps on one sub-goal before the next.")
    instruction: Literal["embedder", "reinitialized"] = Field(
        default="embedder",
        description="What embeds the instruction the agent reads. embedder: the comprehension score's "
        "embedder (unit-norm rows); reinitialized: a copy of the sentence-transformers `embedder.model` "
        "whose linear layers are orthogonally re-initialized (gain sqrt 2, biases 0), its raw output: the "
        "reference's, whose policy holds its own copy of the embedder inside the features extractor, "
        "where PPO's orthogonal initialization overwrites it.",
    )

    def ppo(self) -> dict:
        """PPO's keyword arguments."""
        names = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range")
        names += ("ent_coef", "vf_coef", "max_grad_norm")
        return {name: getattr(self, name) for name in names}

    @model_validator(mode="after")
    def _known_skills(self):
        unknown = sorted(set(self.skills) - set(SCRIPTED))
        if unknown:
            raise ValueError(f"unknown skills {unknown}: the scripted player knows {sorted(SCRIPTED)}")
        return self


class AdapterSettings(Settings):
    """Generation by the adapter LM (the recipe's `model`)."""

    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Nucleus sampling mass (the reference samples with Llama-2-chat's generation config: "
        "temperature 0.6, top_p 0.9).",
    )
    max_new_tokens: int = Field(default=100, gt=0, description="Longest analysis, in tokens.")
    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Scripted-play steps (over all worlds) whose template analyses warm the adapter up "
        "before iteration 1 (a tiny one trained from scratch, a pretrained one fine-tuned); 0: start from "
        "the model as it is (the paper's).",
    )
    warmup: TrainSettings = Field(
        default_factory=lambda: TrainSettings(learning_rate=1e-3, batch_size=16, grad_accum=1, epochs=2),
        description="Training of the warm-up.",
    )


class DecisionSettings(AskSettings):
    """The decision model: `openai` (the paper: GPT-4) or `local`; neither: the offline decision maker
    (the first three sub-goals the analysis names, else a rule)."""

    max_new_tokens: int = Field(default=64, gt=0, description="Longest reply, in tokens.")
    instruction: Literal["subgoals", "reply"] = Field(
        default="subgoals",
        description="subgoals: the instruction is the allowed sub-goals the reply names (garbage asked "
        "again, then the rule); reply: the reply itself, whatever it says, never asked again (the "
        "reference's: the agent embeds it, the score compares with it, the next prompts show it).",
    )


class EmbedderSettings(Settings):
    """The sentence embedder of the comprehension score and the instruction."""

    kind: Literal["concepts", "sentence-transformers"] = Field(
        default="concepts",
        description="concepts: the offline bag of Crafter concepts; sentence-transformers: `model`.",
    )
    model: str = Field(
        default="sentence-transformers/paraphrase-MiniLM-L6-v2",
        description="sentence-transformers: a hub id or local folder (the paper's model by default).",
    )
    action_text: ActionText = Field(
        default="effects",
        description="names: the actions' names (the paper); effects: each `do` with what it was done to.",
    )


class RefineSettings(Settings):
    """How the adapter is refined after each iteration's play."""

    mode: Literal["self", "feedback", "frozen"] = Field(
        default="feedback",
        description="self: every record (the reference's self-training); feedback: records weighted by the "
        "comprehension score of the instruction that followed (feedlearn's); frozen: never refined.",
    )
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="feedback: records scored below this are not trained on."
    )
    start: Literal["initial", "previous"] = Field(
        default="initial",
        description="What iteration i's SFT starts from. initial: the starting adapter, every iteration "
        "(a refit on all the records so far); previous: iteration i-1's refined adapter (the reference's), "
        "a LoRA adapter merged into its base first (saved in `stage<i-1>/sft/merged`, what iteration i "
        "also generates with) and a fresh LoRA trained on top.",
    )
    holdout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of the records, the newest, held out of each SFT; their loss is logged as "
        "eval/loss every 5 steps (the reference: 0.1, for logging only).",
    )
    sft: TrainSettings = Field(
        default_factory=lambda: TrainSettings(learning_rate=2e-4, max_grad_norm=0.3, grad_accum=16),
        description="The adapter's SFT (the paper: 1 epoch, lr 2e-4, grad-norm clip 0.3).",
    )


class AdaRefinerEvaluateSettings(Settings):
    """Evaluation on test worlds."""

    episodes: int = Field(default=10, gt=0, description="Test episodes (spread over agent.envs worlds).")
    query_interval: int = Field(default=10, gt=0, description="Steps between queries at test time.")
    seed: int = Field(default=0, description="Seeds the test worlds and the agent's sampled actions.")


class AdaRefinerConfig(GeneratingRecipe):
    """An AdaRefiner recipe. `model` is the adapter LM (paper: Llama-2-7b-chat with LoRA r 64, alpha 16)."""

    method: Literal["adarefiner"]
    env: CrafterSettings = Field(default_factory=CrafterSettings, description="The Crafter worlds.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The acting agent.")
    guidance: Literal["adapter", "decision", "none"] = Field(
        default="adapter",
        description="adapter: AdaRefiner; decision: the decision model without an adapter's analysis; "
        "none: the agent alone (its instruction input stays zero).",
    )
    adapter: AdapterSettings = Field(default_factory=AdapterSettings, description="The adapter's generation.")
    decision: DecisionSettings = Field(default_factory=DecisionSettings, description="The decision model.")
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings, description="The sentence embedder.")
    refine: RefineSettings = Field(default_factory=RefineSettings, description="Refinement of the adapter.")
    evaluate: AdaRefinerEvaluateSettings = Field(
        default_factory=AdaRefinerEvaluateSettings, description="Evaluation."
    )
    iterations: int = Field(
        default=5,
        gt=0,
        description="Iterations of play (`train`) then refinement (`sft`); the paper's stages.",
    )
    steps_per_iteration: int = Field(
        default=1_000_000,
        gt=0,
        description="Environment steps per iteration's play, over all worlds (rounded up to whole PPO "
        "updates of `agent.n_steps` steps in each world).",
    )
    query_interval: int = Field(default=100, gt=0, description="Steps between queries in training.")
    query_clock: QueryClock = Field(
        default="episode",
        description="episode: every episode starts afresh (a query at its first step; no instruction, "
        "action history or score carried over); world: the instruction in force, its action history, its "
        "score and the query clock run on across a world's episodes (the reference's, which restarts them "
        "at every PPO rollout instead: a defect not reproduced).",
    )
    checkpoint_every: int = Field(default=1, gt=0, description="PPO updates between checkpoints.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        """The keys an older feedlearn had, refused with their new names."""
        for old, new in (("stages", "iterations"), ("steps_per_stage", "steps_per_iteration")):
            if isinstance(data, dict) and old in data:
                raise ValueError(f"'{old}' is now '{new}' (AdaRefiner's numbered rounds are iterations)")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.agent.kind == "ppo":
            wanted = "symbolic" if self.agent.network == "mlp" else "image"
            if self.env.observation != wanted:
                raise ValueError(f"agent.network {self.agent.network} needs env.observation: {wanted}")
        if self.agent.instruction == "reinitialized" and self.embedder.kind != "sentence-transformers":
            raise ValueError("agent.instruction reinitialized needs embedder.kind: sentence-transformers")
        return self
