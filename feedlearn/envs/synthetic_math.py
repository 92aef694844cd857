"""Seeded synthetic arithmetic word problems with worked solutions, for offline runs and tests.

Difficulty level k chains k operations (add, subtract, multiply by a small number) on two-digit numbers;
each solution writes one equation per step and ends with `\\boxed{answer}`.
"""

from __future__ import annotations

import random

from feedlearn.envs.math_data import MathProblem

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
        steps.append(f"{value}{op}{n}={new}.")
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


def generate_problems(n: int, seed: int, levels: list[int], prefix: str = "syn") -> list[MathProblem]:
    """`n` problems, levels drawn uniformly from `levels`; the same seed gives the same problems."""
    rng = random.Random(seed)
    return [make_problem(rng, rng.choice(levels), f"{prefix}-{seed}-{i}") for i in range(n)]
