"""C3PO's records and prompts: the samples of each scope, the teacher's saved replies, and how the policy is
asked (plainly, with the feedback in context, or reasoning first whether it applies)."""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from feedlearn.backends.base import Backend, SamplingParams
from feedlearn.data.records import Record

Scope = Literal["in", "near", "out"]
IN_CONTEXT = "{prompt} (If applicable, apply the following feedback: {content})"
COT = (
    "{prompt}\n\nBefore answering, think about whether this feedback applies to the request: "
    "{content}\nFirst write one line 'Applies: yes' or 'Applies: no', then the answer after 'Answer:'."
)


class C3POSample(Record):
    """One prompt of one scope, with the base policy's responses and the teacher's revision."""

    id: str
    scope: Literal["in", "near", "out"]
    split: Literal["train", "test"]
    category: str = Field(description="The teacher's category ('general' out of scope).")
    prompt: str
    baseline: str = Field(description="The base policy's response (sampled).")
    revised: str | None = Field(default=None, description="The teacher's revision (in-scope train rows).")
    in_context: str | None = Field(default=None, description="Response with the feedback in the prompt.")
    cot: str | None = Field(default=None, description="Response after reasoning whether it applies.")


class TeacherPrompts(Record):
    """One teacher reply: the categories, or the prompts of one scope and category."""

    id: str
    prompts: list[str]


class PromptRow(Record):
    """One prompt of a scope and split, as the sample stage saves it before answering."""

    id: str
    scope: Literal["in", "near", "out"]
    split: Literal["train", "test"]
    category: str
    prompt: str


def split_prompts(prompts: list[dict], test_fraction: float, seed: int) -> list[PromptRow]:
    """The prompts (`scope`, `category`, `prompt`) of each scope, shuffled by `seed` and split: the first
    `test_fraction` (at least one) of each scope is the test split. A prompt lives in one scope and one
    split: the first scope that has it keeps it, so no test prompt is also a training prompt."""
    first: dict[str, dict] = {}
    for p in prompts:
        first.setdefault(p["prompt"], p)
    unique = list(first.values())
    rng = random.Random(seed)
    rows = []
    for scope in ("in", "near", "out"):
        group = [p for p in unique if p["scope"] == scope]
        rng.shuffle(group)
        n_test = max(1, round(test_fraction * len(group)))
        for i, p in enumerate(group):
            rows.append(PromptRow(id=f"{scope}-{i}", split="test" if i < n_test else "train", **p))
    return rows


def chat(prompt: str) -> list[dict]:
    """A one-message user conversation."""
    return [{"role": "user", "content": prompt}]


def answer_each(
    backend: Backend, sampling: SamplingParams, prompts: list[str], keys: list[str] | None = None
) -> list[str]:
    """One reply per prompt; `keys` name the prompts' records (see `Backend.generate`)."""
    return [r[0] for r in backend.generate([chat(p) for p in prompts], 1, sampling, keys)] if prompts else []


def after_answer(text: str) -> str:
    """The answer part of a CoT response (after the last 'Answer:'), or the whole text."""
    parts = re.split(r"(?i)answer:", text)
    return parts[-1].strip() if len(parts) > 1 else text.strip()
