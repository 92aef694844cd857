"""reasoning-gym's own answer check (the optional `reasoning` extra), as RISE's right-or-wrong reward."""

from __future__ import annotations

from typing import Any

from feedlearn.errors import FeedlearnError

MISSING = "reasoning-gym problems need the reasoning-gym package: pip install 'feedlearn[reasoning]'"


def reasoning_gym():
    """The reasoning_gym module, or a clear error saying how to install it."""
    try:
        import reasoning_gym
    except ImportError:
        raise FeedlearnError(MISSING) from None
    return reasoning_gym


def score_entry(answer: str, entry: dict[str, Any]) -> float:
    """reasoning-gym's check of `answer` against its `entry` (question, answer, metadata): 1.0 when it
    scores the answer fully right, else 0.0 (its partial credit, 0.01 for any wrong answer among it,
    counts as wrong)."""
    check = reasoning_gym().get_score_answer_fn(entry["metadata"]["source_dataset"])
    return 1.0 if check(answer, entry) == 1.0 else 0.0
