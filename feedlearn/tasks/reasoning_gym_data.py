"""reasoning-gym's procedural problems (e.g. `gsm_symbolic`: GSM8K's templates with fresh names and
numbers) as RISE problem sets, scored by reasoning-gym's own answer check.

A set is exported once into feedlearn's cache as a JSONL file of `MathProblem` rows (so a bad row names a
file and a line, as a hub data set's does), each with reasoning-gym's entry for the check. Training and
test sets draw from generators seeded by their purpose, and a question belongs to one split only (by a
hash of it, as the synthetic problems), so no test question is trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedlearn.cache import cache_home
from feedlearn.data.jsonl import read_jsonl, write_jsonl_atomic
from feedlearn.errors import ConfigError
from feedlearn.seeds import derive_seed, held_out
from feedlearn.tasks.math_data import MathProblem
from feedlearn.verifiers.reasoning_gym_check import reasoning_gym

TEST_SHARE = 0.2
"""Share of all questions that only test sets draw."""


class ReasoningGymSettings(BaseModel):
    """A reasoning-gym task's problems."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="The task's name, e.g. gsm_symbolic, basic_arithmetic, chain_sum.")
    size: int = Field(gt=0, description="How many problems.")
    seed: int = Field(default=0, description="Same seed, same problems.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The task's own settings (reasoning-gym's config fields)."
    )


def export_problems(settings: ReasoningGymSettings, split: Literal["train", "test"]) -> Path:
    """The JSONL file of the set's problems of `split`, exported on first use."""
    key = hashlib.sha256(json.dumps([settings.model_dump(), split], sort_keys=True).encode()).hexdigest()
    path = cache_home() / "reasoning_gym" / f"{settings.task}-{split}-{key[:16]}.jsonl"
    if path.exists():
        return path
    rg = reasoning_gym()
    seed = derive_seed(settings.seed, split, "reasoning_gym", settings.task) % 2**31
    pool = 10 * settings.size + 100  # enough that the split's share of them holds `size` problems
    try:
        data = rg.create_dataset(settings.task, size=pool, seed=seed, **settings.config)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"reasoning_gym task {settings.task!r} with config {settings.config}: {e}"
        ) from None
    problems: list[MathProblem] = []
    seen: set[str] = set()
    for entry in data:
        if len(problems) == settings.size:
            break
        question = entry["question"]
        if held_out(question, TEST_SHARE) != (split == "test") or question in seen:
            continue
        seen.add(question)
        entry = json.loads(json.dumps(entry, default=str))  # plain JSON, as it will be read back
        problems.append(
            MathProblem(
                id=f"rg-{settings.task}-{split}-{settings.seed}-{len(problems)}",
                question=question,
                answer=str(entry["answer"]),
                solution=_worked_solution(entry),
                source=f"reasoning_gym:{settings.task}",
                reasoning_gym=entry,
            )
        )
    if len(problems) < settings.size:
        raise ConfigError(
            f"reasoning_gym {settings.task}: only {len(problems)} distinct {split} questions of "
            f"{settings.size} in {pool} generated; ask for fewer or widen the task's config"
        )
    write_jsonl_atomic(path, problems)
    return path


def load_reasoning_gym(settings: ReasoningGymSettings, split: Literal["train", "test"]) -> list[MathProblem]:
    """The set's problems of `split` (exported once, then read from the cache)."""
    return read_jsonl(export_problems(settings, split), MathProblem)


def _worked_solution(entry: dict[str, Any]) -> str | None:
    """The worked solution where the task writes one (gsm_symbolic: GSM8K's, ending `#### answer`), for a
    warm start; None elsewhere."""
    cot = entry.get("metadata", {}).get("answer_cot")
    return cot if isinstance(cot, str) and cot.strip() else None
