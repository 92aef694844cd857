"""Seeded synthetic arithmetic word problems with worked solutions, for offline runs and tests.

Difficulty level k chains k operations (add, subtract, multiply by a small number) on two-digit numbers.
Each solution works every operation digit by digit, the way one does it on paper (`56+95: 6+5=11,
5+9+1=15, 56+95=151.`), and ends with `\\boxed{answer}`: small models can learn that, and their slips
are the kind of errors a second attempt can fix. A problem is a test problem when its question hashes into
the first `TEST_SHARE` of the range, so train and test sets never share a question, whatever their seeds.
"""

from __future__ import annotations

import random
from typing import Literal

from feedlearn.errors import FeedlearnError
from feedlearn.seeds import derive_seed, held_out
from feedlearn.tasks.math_data import MathProblem

TEST_SHARE = 0.2
"""Share of all possible questions that only test sets draw."""

NAMES = ["Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Mo", "Nia"]
OBJECTS = ["apples", "books", "coins", "shells", "stamps", "marbles", "pens", "cards", "eggs", "rocks"]
STEP_TEXT = {
    "+": ["{name} gets {n} more.", "{name} buys {n} more.", "A friend gives {name} {n} more."],
    "-": ["{name} gives away {n}.", "{name} loses {n}.", "{name} sells {n}."],
    "*": ["Then the number of {obj} is multiplied by {n}.", "Then {name} ends up with {n} times as many."],
}


def _step(rng: random.Random, value: int) -> tuple[str, int]:
    ops = ["+", "-"] + (["*"] if value <= 150 else [])
    op = rng.choice(ops)
    if op == "+":
        n = rng.randint(10, 99)
        return op, n
    if op == "-":
        return op, rng.randint(1, max(1, min(value - 1, 99)))
    return op, rng.randint(2, 5)


def column_steps(a: int, op: str, b: int) -> str:
    """One operation worked digit by digit from the units, with carries and borrows written out."""
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    width = max(len(str(a)), len(str(b)))
    da = [int(d) for d in reversed(str(a).zfill(width if op != "*" else 0))]
    parts = []
    if op == "*":
        carry = 0
        for d in da:
            value = d * b + carry
            parts.append(f"{d}*{b}" + (f"+{carry}" if carry else "") + f"={value}")
            carry = value // 10
    else:
        db = [int(d) for d in reversed(str(b).zfill(width))]
        carry = 0
        for x, y in zip(da, db, strict=True):
            if op == "+":
                value = x + y + carry
                parts.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={value}")
                carry = value // 10
            else:
                x -= carry
                carry = int(x < y)
                parts.append(f"{x + 10 * carry}-{y}={x + 10 * carry - y}")
    return f"{a}{op}{b}: {', '.join(parts)}, {a}{op}{b}={result}."


def make_problem(rng: random.Random, level: int, problem_id: str) -> MathProblem:
    """One problem of `level` operations, its worked solution and its answer."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    value = rng.randint(10, 99)
    sentences = [f"{name} has {value} {obj}."]
    steps = []
    for _ in range(level):
        op, n = _step(rng, value)
        new = {"+": value + n, "-": value - n, "*": value * n}[op]
        sentences.append(rng.choice(STEP_TEXT[op]).format(name=name, obj=obj, n=n))
        steps.append(column_steps(value, op, n))
        value = new
    sentences.append(f"How many {obj} does {name} have now?")
    return MathProblem(
        id=problem_id,
        question=" ".join(sentences),
        answer=str(value),
        solution=" ".join(steps) + f" \\boxed{{{value}}}",
        level=level,
        source="synthetic",
    )


def generate_problems(
    n: int, seed: int, levels: list[int], prefix: str = "syn", split: Literal["train", "test"] = "train"
) -> list[MathProblem]:
    """`n` problems of `split`, levels drawn uniformly from `levels`; one seed, one set of problems."""
    rng = random.Random(derive_seed(seed, "data", "synthetic-math"))
    problems: list[MathProblem] = []
    for _ in range(100 * n + 1000):
        if len(problems) == n:
            return problems
        problem = make_problem(rng, rng.choice(levels), f"{prefix}-{seed}-{len(problems)}")
        if held_out(problem.question, TEST_SHARE) == (split == "test"):
            problems.append(problem)
    raise FeedlearnError(
        f"synthetic math: found only {len(problems)} of {n} {split} problems at levels {levels}"
    )
