"""What every method's recipe shares: strict settings sections, the common recipe fields, and the rule
that generation stages run in one process."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from feedlearn.backends.local import LocalBackend
from feedlearn.data.store import RunStore
from feedlearn.errors import FeedlearnError
from feedlearn.models.loading import ModelSettings
from feedlearn.models.tiny import TinyModelConfig


class Settings(BaseModel):
    """Base of every recipe section: an unknown key is an error, with a suggestion."""

    model_config = ConfigDict(extra="forbid")


class RecipeConfig(Settings):
    """The fields every recipe has; each method adds its own (and its `method` name)."""

    method: str = Field(description="Which method the recipe runs (each method narrows it to its name).")
    seed: int = Field(default=0, description="Seeds sampling, data order, LoRA init and generated data.")
    run_dir: str = Field(default="runs", description="Parent folder of run folders.")
    model: ModelSettings = Field(description="The policy to train; path 'tiny' builds a tiny model locally.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of a tiny model.")


def single_process(stage: str) -> None:
    """Generation stages run in one process; `accelerate launch` is for the train stages."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FeedlearnError(
            f"{stage} runs in a single process: launch it with plain `feedlearn`, and use "
            "`accelerate launch -m feedlearn.cli <method> train ...` for the training stages"
        )


class Method:
    """Base of a method's stages: its recipe, its run folder, and the helpers every method uses."""

    def __init__(self, config: RecipeConfig, store: RunStore, progress: bool = True):
        self.config = config
        self.store = store
        self.progress = progress

    def _settings(self, path: str) -> ModelSettings:
        """The recipe's model settings (LoRA, dtype, template) for the model at `path`."""
        return self.config.model.model_copy(update={"path": path})

    def _backend(self, model, tokenizer) -> LocalBackend:
        """A local generation backend, seeded with the recipe's seed."""
        return LocalBackend(
            model, tokenizer, self.config.generation_batch_size, seed=self.config.seed, progress=self.progress
        )
