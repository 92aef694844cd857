"""C3PO's recipe: its settings sections and `C3POConfig`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from feedlearn.data.hub import DatasetSource
from feedlearn.methods.c3po.objective import LossSettings, TrainMethod
from feedlearn.methods.common import AskSettings, GeneratingRecipe, Settings
from feedlearn.training.trainer import TrainSettings


class TeacherSettings(AskSettings):
    """Who proposes categories and prompts and revises responses."""

    kind: Literal["offline", "llm"] = Field(
        default="llm",
        description="llm: a model through a backend (`openai` or `local`); offline: templates for "
        "built-in feedbacks.",
    )
    max_new_tokens: int = Field(default=1024, gt=0, description="Longest teacher reply, in tokens.")

    @model_validator(mode="after")
    def _llm_has_a_backend(self):
        if self.kind == "llm" and not self.configured:
            raise ValueError("an llm teacher needs one of 'openai' or 'local'")
        return self


class SampleSettings(Settings):
    """How many prompts, and how the policy answers them."""

    prompts_per_scope: int = Field(default=960, gt=0, description="In-scope (and near-scope) prompts.")
    prompts_per_category: int = Field(default=32, gt=0, description="Prompts asked per category.")
    test_fraction: float = Field(default=0.1, gt=0, lt=1, description="Share of each scope held out.")
    temperature: float = Field(default=0.7, ge=0, description="Policy sampling temperature.")
    top_p: float = Field(default=0.7, gt=0, le=1, description="Policy nucleus sampling mass.")
    max_new_tokens: int = Field(default=256, gt=0, description="Longest policy response, in tokens.")
    chunk_size: int = Field(default=256, gt=0, description="Prompts answered, then saved, together.")
    reviser: Literal["policy", "teacher"] = Field(
        default="policy",
        description="Who revises the in-scope training baselines: `policy`, the base policy itself, sampled "
        "like its answers (the paper's self-revision); `teacher`, the teacher (for a policy that cannot "
        "follow a revision request, such as a tiny model). A reply without the revised response is a "
        "missing completion: its row is dropped.",
    )


class C3POEvaluateSettings(Settings):
    """Held-out evaluation."""

    prompts_per_scope: int = Field(default=75, gt=0, description="Test prompts per scope, at most.")
    max_new_tokens: int = Field(default=256, gt=0, description="Longest response (greedy), in tokens.")
    baseline: Literal["sampled", "greedy"] = Field(
        default="sampled",
        description="What every row (each adapter, in-context, CoT, and the base model as `base`) is "
        "compared with: `sampled`, the base policy's sampled answer of the sample stage (the paper's); "
        "`greedy`, the base model's greedy answer (an adapter's change then holds no sampling noise; "
        "in-context and CoT are samples either way).",
    )
    judge: AskSettings | None = Field(
        default=None,
        description="Likert judge for qualitative feedback and for `answer_quality`: `openai` (any "
        "OpenAI-compatible endpoint) or `local`; an unparseable judgment is asked again up to "
        "`max_attempts`, then counted and dropped.",
    )
    answer_quality: bool = Field(
        default=False,
        description="Also ask `judge` whether each response answers its prompt as well as the baseline "
        "(1-5, 3 = as well; `<scope>_scope_answer_quality`), whatever the feedback. Needs `judge`.",
    )

    @model_validator(mode="after")
    def _judge_has_a_backend(self):
        if self.judge is not None and not self.judge.configured:
            raise ValueError("the judge needs one of 'openai' or 'local'")
        if self.answer_quality and self.judge is None:
            raise ValueError("answer_quality asks the judge: set evaluate.judge")
        return self


class SFTSettings(Settings):
    """Warm start of a tiny model on the synthetic instruction corpus (offline runs)."""

    chats: int = Field(default=20000, gt=0, description="Corpus size.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimization.")


class C3POConfig(GeneratingRecipe):
    """A C3PO recipe."""

    method: Literal["c3po"] = "c3po"
    sft: SFTSettings | None = Field(default=None, description="Warm start on the synthetic corpus.")
    feedback_file: str | DatasetSource = Field(
        description="YAML/JSON/JSONL feedback file, a `datasets` split (hub id or save_to_disk folder) with "
        "the feedbacks' fields as columns, or 'builtin' (the offline feedbacks)."
    )
    feedback_ids: list[str] | None = Field(default=None, description="Keep feedbacks whose id starts so.")
    feedback_categories: list[str] | None = Field(default=None, description="Keep feedbacks so tagged.")
    general_prompts: str | DatasetSource = Field(
        description="Out-of-scope prompts: a .txt (one per line) or .jsonl ({'prompt'}) file, a `datasets` "
        "split with a 'prompt' column (map another with `columns`), or 'builtin'."
    )
    teacher: TeacherSettings = Field(
        description="The teacher (required: an llm teacher needs a backend, so there is no default)."
    )
    sample: SampleSettings = Field(default_factory=SampleSettings, description="Sampling.")
    methods: list[TrainMethod] = Field(
        default=["c3po", "scd", "scd_negatives", "dpo"], description="Methods trained and evaluated."
    )
    loss: LossSettings = Field(default_factory=LossSettings, description="C3PO's loss.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimization of each adapter.")
    evaluate: C3POEvaluateSettings = Field(default_factory=C3POEvaluateSettings, description="Evaluation.")

    @model_validator(mode="after")
    def _lora(self):
        if self.model.lora is None:
            raise ValueError("C3PO trains LoRA adapters: set model.lora")
        return self
