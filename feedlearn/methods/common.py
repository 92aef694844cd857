"""What every method's recipe shares: strict settings sections, the common recipe fields, and the base
of a method's stages."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedlearn.backends.base import Backend, ParsedAsker, SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.backends.openai_compat import OpenAIBackend, OpenAIBackendConfig
from feedlearn.backends.vllm_backend import VLLMBackend, VLLMSettings
from feedlearn.data.store import RunStore
from feedlearn.errors import FeedlearnError
from feedlearn.methods.layout import Layout
from feedlearn.models.loading import ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig
from feedlearn.training.trainer import Objective, TrainSettings, train


class Settings(BaseModel):
    """Base of every recipe section: an unknown key is an error, with a suggestion."""

    model_config = ConfigDict(extra="forbid")


class OneSource(Settings):
    """A data section that takes exactly one of `path`, `dataset` or `synthetic` (each subclass declares
    the three with its own types), or of its `reasoning_gym` too where it declares one."""

    @model_validator(mode="after")
    def _one_source(self):
        sources = [
            x for x in ("path", "dataset", "synthetic", "reasoning_gym") if x in type(self).model_fields
        ]
        if sum(getattr(self, x) is not None for x in sources) != 1:
            named = [repr(x) for x in sources]
            raise ValueError(f"give exactly one of {', '.join(named[:-1])} or {named[-1]}")
        return self


class BackendSettings(Settings):
    """A model behind a backend (a teacher, a judge, a model to compare with): at most one of the two."""

    openai: OpenAIBackendConfig | None = Field(default=None, description="An OpenAI-compatible endpoint.")
    local: ModelSettings | None = Field(default=None, description="A model loaded in this process.")

    @property
    def configured(self) -> bool:
        """Whether one of `openai` or `local` is set."""
        return self.openai is not None or self.local is not None

    def build(self, batch_size: int, seed: int, replies: Path | None = None) -> Backend:
        """The backend; local generation runs `batch_size` sequences at a time, seeded with `seed`; an
        endpoint's paid replies are kept in `replies` (see `OpenAIBackend`)."""
        if self.openai is not None:
            return OpenAIBackend(self.openai, seed=seed, replies=replies)
        if self.local is None:
            raise FeedlearnError("no backend configured: set 'openai' or 'local'")
        return LocalBackend(*load_policy(self.local), batch_size, seed=seed)

    @model_validator(mode="after")
    def _one_backend(self):
        if self.openai is not None and self.local is not None:
            raise ValueError("give one of 'openai' or 'local', not both")
        return self


class AskSettings(BackendSettings):
    """A model asked questions whose replies are parsed (a teacher, a model to compare with)."""

    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature (0: greedy).")
    max_new_tokens: int = Field(default=512, gt=0, description="Longest reply, in tokens.")
    max_attempts: int = Field(default=3, ge=1, description="Asks per question before it is given up.")

    def asker(self, batch_size: int, seed: int, replies: Path | None = None) -> ParsedAsker:
        """The backend (see `build`) behind a `ParsedAsker` with these sampling settings."""
        sampling = SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        return ParsedAsker(self.build(batch_size, seed, replies), sampling, self.max_attempts)


class GenerationSettings(Settings):
    """The engine behind the policy's own sampling in every generation stage."""

    backend: Literal["local", "vllm"] = Field(
        default="local",
        description="local: transformers' generate in this process, batched; vllm: a vLLM engine (the "
        "`vllm` extra), LoRA adapters through its LoRA requests.",
    )
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="vLLM's engine settings.")


class RecipeConfig(Settings):
    """The fields every recipe has; each method adds its own (and its `method` name)."""

    method: str = Field(description="Which method the recipe runs (each method narrows it to its name).")
    seed: int = Field(default=0, description="Seeds sampling, data order, LoRA init and generated data.")
    run_dir: str = Field(default="runs", description="Parent folder of run folders.")
    model: ModelSettings = Field(description="The policy to train; path 'tiny' builds a tiny model locally.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of a tiny model.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default=[],
        description="Experiment trackers that get every metric too (metrics.jsonl always does); wandb runs "
        "offline without WANDB_API_KEY.",
    )


class GeneratingRecipe(RecipeConfig):
    """The fields of a recipe whose stages sample from the policy (every method but DPO / Active DPO)."""

    generation_batch_size: int = Field(
        default=64, gt=0, description="Sequences per local generate call (the local backend's batch)."
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="How the policy generates (local or vLLM)."
    )


class Method:
    """Base of a method's stages: its recipe, its run folder (laid out by its `Layout`), and the helpers
    every method uses."""

    layout_class: type[Layout] = Layout
    """The method's run layout."""

    def __init__(self, config: RecipeConfig, store: RunStore, progress: bool = True):
        self.config = config
        self.store = store
        self.progress = progress
        self.layout = self.layout_class(store.path, config.method)
        self.layout.check_moved()

    def fit(
        self,
        folder: Path,
        model,
        tokenizer,
        rows: list[dict],
        objective: Objective,
        settings: TrainSettings,
    ) -> Path:
        """Train `model` on tokenized `rows` for `objective` with `settings` in the stage folder `folder`:
        saved in `folder/model` (returned), checkpointed and resumed there, its metrics logged under the
        folder's name in the run, seeded with the recipe's seed (see `training.trainer.train`)."""
        return train(
            model,
            tokenizer,
            rows,
            objective,
            settings,
            folder,
            self.store,
            self.layout.name(folder),
            self.progress,
            seed=self.config.seed,
        )

    def _settings(self, path: str) -> ModelSettings:
        """The recipe's model settings (LoRA, dtype, template) for the model at `path`."""
        return self.config.model.model_copy(update={"path": path, "gguf_file": None})

    def generation_backend(self, path: str) -> Backend:
        """The model at `path` (a model folder or hub id, or a LoRA adapter on its base) behind the recipe's
        generation backend, seeded with the recipe's seed."""
        generation = self.config.generation
        if generation.backend == "vllm":
            return VLLMBackend(path, generation.vllm, self.config.seed, self.config.model.chat_template)
        model, tokenizer = load_policy(self._settings(path))
        return LocalBackend(
            model, tokenizer, self.config.generation_batch_size, seed=self.config.seed, progress=self.progress
        )
