"""DPO's and Active DPO's recipes: their settings sections, `DPOConfig` and `ActiveDPOConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feedlearn.data.hub import DatasetSource, export_rows
from feedlearn.data.preferences import load_pairs
from feedlearn.data.records import PreferencePair
from feedlearn.feedback.labelers import DatasetLabelerSettings, LabelerSettings
from feedlearn.losses import (
    DPOLoss,
)
from feedlearn.methods.common import OneSource, RecipeConfig, Settings
from feedlearn.tasks.word_preferences import WordPreferenceTask
from feedlearn.training.trainer import TrainSettings


class SyntheticPairs(Settings):
    """Pairs generated from the hidden-rule word task (`feedlearn.tasks.word_preferences`)."""

    n: int = Field(gt=0, description="How many pairs.")
    seed: int = Field(default=0, description="Same seed, same pairs.")
    task: WordPreferenceTask = Field(
        default_factory=WordPreferenceTask, description="The hidden rule; keep it equal for train and eval."
    )


class PreferenceData(OneSource):
    """Where pairs come from: a file (JSONL, JSON or parquet, TRL's forms), or the synthetic task."""

    path: str | None = Field(default=None, description="A local .jsonl, .json or .parquet file.")
    dataset: DatasetSource | None = Field(
        default=None, description="A `datasets` split (hub id or save_to_disk folder), in TRL's forms."
    )
    synthetic: SyntheticPairs | None = Field(default=None, description="Generate pairs instead.")
    limit: int | None = Field(default=None, gt=0, description="Use only the first `limit` pairs.")

    def load(self, prefix: str, split: Literal["train", "test"] = "train") -> list[PreferencePair]:
        """The pairs, read or generated (generated test pairs never coincide with generated training ones)."""
        if self.dataset is not None:
            return load_pairs(export_rows(self.dataset), self.limit)
        if self.path is not None:
            return load_pairs(self.path, self.limit)
        s = self.synthetic
        return s.task.pairs(s.n, s.seed, prefix, split)[: self.limit]


class DPOSettings(Settings):
    """The preference loss and its reference."""

    beta: float = Field(default=0.1, gt=0, description="Strength of the KL anchor to the reference.")
    loss: DPOLoss = Field(default="sigmoid", description="sigmoid (DPO), ipo or hinge.")
    reference: Literal["precomputed", "live"] = Field(
        default="precomputed",
        description="precomputed: the reference's log-probs are computed once before training and cached "
        "in the run folder (exact: the reference is frozen); live: computed each step, with the LoRA "
        "adapter disabled, or from a frozen copy when all weights train.",
    )
    reference_model: str | None = Field(
        default=None,
        description="Another model as the reference (same tokenizer); None: the starting policy.",
    )


class ActiveSettings(Settings):
    """Active DPO's selection rule."""

    gamma: float = Field(
        default=1.3,
        ge=0,
        description="Ask for a label when |m| <= gamma, m = beta x log-ratio margin (beta-scaled units: "
        "rescale it when beta changes).",
    )
    pseudo_label: Literal["flip", "drop"] = Field(
        default="flip", description="Confident pairs: train on sign(m) (flip), or skip them (drop)."
    )
    reuse_labels: bool = Field(
        default=False,
        description="A confident pair whose label was bought earlier (an unsure pair in an earlier "
        "epoch) trains on that label instead of sign(m) (flip) or being skipped (drop). Off: the rule "
        "alone decides, as in the reference.",
    )


class DPOConfig(RecipeConfig):
    """A DPO recipe: every training pair's label is asked for (once) from the labeler."""

    method: Literal["dpo"] = "dpo"
    train_data: PreferenceData = Field(description="Training pairs (labeled, or unlabeled with a labeler).")
    eval_data: PreferenceData | None = Field(default=None, description="Held-out labeled pairs.")
    labeler: LabelerSettings = Field(
        default_factory=DatasetLabelerSettings, description="Who labels training pairs."
    )
    query_budget: int | None = Field(
        default=None,
        gt=0,
        description="Most labels to pay for; once spent, pairs still needing one get no gradient.",
    )
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="Loss and reference.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimization.")
    score_batch_size: int = Field(default=16, gt=0, description="Pairs per batch when scoring without grad.")
    max_prompt_length: int | None = Field(
        default=None,
        gt=0,
        description="A longer prompt keeps its last this many tokens (TRL's keep_end); None: no limit "
        "beyond train.max_length.",
    )
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="A pair with a side longer than train.max_length: cut that side at its end, as TRL does "
        "(truncate), or leave the pair out (drop). Either way the count is logged (`train/data`), and a "
        "pair whose prompt leaves no room for a response is left out.",
    )


class ActiveDPOConfig(DPOConfig):
    """An Active DPO recipe: labels are asked for only where the policy is unsure."""

    method: Literal["active-dpo"] = "active-dpo"
    active: ActiveSettings = Field(default_factory=ActiveSettings, description="Selection rule.")
