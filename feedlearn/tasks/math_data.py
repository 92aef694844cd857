"""Math problem sets: load GSM8K and MATH JSONL files, and read and write feedlearn's own problem files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feedlearn.data.jsonl import iter_jsonl, read_jsonl
from feedlearn.data.records import Record
from feedlearn.errors import DataError
from feedlearn.verifiers.math_answers import gsm8k_gold, math_gold

ProblemFormat = Literal["gsm8k", "math", "feedlearn"]


class MathProblem(Record):
    """A math problem with its gold final answer; the rows of a feedlearn problem file."""

    id: str = Field(description="Stable, unique id of the problem within its set.")
    question: str = Field(description="The problem statement shown to the model.")
    answer: str = Field(description="The gold final answer, as a string (e.g. '18', '\\frac{1}{2}').")
    solution: str | None = Field(default=None, description="A worked solution, if the source has one.")
    level: int | None = Field(default=None, description="Difficulty level (MATH: 1 to 5), if known.")
    source: str = Field(description="Where the problem comes from: 'gsm8k', 'math', 'synthetic', ...")
    reasoning_gym: dict[str, Any] | None = Field(
        default=None,
        description="reasoning-gym's entry (question, answer, metadata): its own check scores the answer.",
    )


class _RawRow(BaseModel):
    """A row of a public dataset: only the fields read are checked; others are allowed and ignored."""

    model_config = ConfigDict(extra="allow")


class Gsm8kRow(_RawRow):
    """A GSM8K row: the answer field holds the reasoning, then `#### <gold>`."""

    question: str
    answer: str
    id: str | int | None = None

    @field_validator("answer")
    @classmethod
    def _has_gold(cls, answer: str) -> str:
        gsm8k_gold(answer)  # ValueError, reported by iter_jsonl as file:line: field 'answer'
        return answer


class MathRow(_RawRow):
    """A MATH (Hendrycks) row: the gold answer is the last `\\boxed{}` of the solution."""

    problem: str
    solution: str
    level: str | int | None = None
    type: str | None = None
    id: str | int | None = None

    @field_validator("solution")
    @classmethod
    def _has_gold(cls, solution: str) -> str:
        math_gold(solution)  # ValueError, reported by iter_jsonl as file:line: field 'solution'
        return solution


_LEVEL = re.compile(r"\s*(?:level\s*)?(\d+)\s*", re.IGNORECASE)


def _parse_level(level: str | int | None) -> int | None:
    """`'Level 3'` or `3` -> 3; missing or unrecognised (MATH has some `'Level ?'`) -> None."""
    if isinstance(level, int):
        return level
    if isinstance(level, str) and (m := _LEVEL.fullmatch(level)):
        return int(m.group(1))
    return None


def load_gsm8k(path: str | Path) -> list[MathProblem]:
    """Problems of a GSM8K JSONL file (rows `{"question", "answer"}`, the answer ending in `#### <gold>`).

    The gold is what follows `####`, commas removed; the whole answer field is kept as the solution. The
    id is the row's `id` if it has one, else `gsm8k-<i>` with i the row's 0-based index (blank lines are
    not rows). A malformed row (bad JSON, a field missing or of the wrong type, no `####`) raises
    DataError naming file, line and field; so does a file with no rows.
    """
    problems = [
        MathProblem(
            id=str(row.id) if row.id is not None else f"gsm8k-{index}",
            question=row.question,
            answer=gsm8k_gold(row.answer),
            solution=row.answer,
            source="gsm8k",
        )
        for index, row in enumerate(iter_jsonl(path, Gsm8kRow))
    ]
    return _some(path, problems)


def load_math(path: str | Path) -> list[MathProblem]:
    """Problems of a MATH JSONL file (rows `{"problem", "level", "type", "solution"}`).

    The gold answer is the last `\\boxed{}` of the solution; the level `'Level 3'` becomes 3 (missing or
    unrecognised: None). The id is the row's `id` if it has one, else `math-<i>` (0-based row index). A
    malformed row, or a solution with no complete boxed answer, raises DataError naming file, line and
    field; so does a file with no rows.
    """
    problems = [
        MathProblem(
            id=str(row.id) if row.id is not None else f"math-{index}",
            question=row.problem,
            answer=math_gold(row.solution),
            solution=row.solution,
            level=_parse_level(row.level),
            source="math",
        )
        for index, row in enumerate(iter_jsonl(path, MathRow))
    ]
    return _some(path, problems)


def load_problems(path: str | Path, format: ProblemFormat) -> list[MathProblem]:
    """Problems of a JSONL file in `format`: 'gsm8k', 'math', or 'feedlearn' (`MathProblem` rows).

    A file with no problems (empty, or only blank lines) raises DataError.
    """
    if format == "gsm8k":
        return load_gsm8k(path)
    if format == "math":
        return load_math(path)
    if format == "feedlearn":
        return _some(path, read_jsonl(path, MathProblem))
    raise DataError(f"{path}: unknown problem format {format!r}; use 'gsm8k', 'math' or 'feedlearn'")


def _some(path: str | Path, problems: list[MathProblem]) -> list[MathProblem]:
    """`problems`, unless the file held none: that is reported now, naming the file."""
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems
