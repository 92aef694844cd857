"""RISE's pure pieces: degenerate-sample filter, best-of-n choice, conversion criteria, voting metrics."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Literal

from feedlearn.data.records import Episode, Message, SFTExample

Criterion = Literal["all", "better", "best", "success"]


def is_degenerate(text: str, max_repeats: int = 150, max_word_chars: int = 300) -> bool:
    """A sample that repeats one word more than `max_repeats` times or has a word over `max_word_chars`."""
    words = text.split()
    if not words:
        return False
    if max(len(w) for w in words) > max_word_chars:
        return True
    return Counter(words).most_common(1)[0][1] > max_repeats


def best_sample(samples: list[str], rewards: list[float]) -> int:
    """Index of the first highest-reward sample."""
    return max(range(len(samples)), key=lambda i: (rewards[i], -i))


def kept_turns(rewards: list[float], criterion: Criterion) -> list[int]:
    """Which turns of a trajectory become training examples.

    all: every turn; better: turn i if r_i > r_{i-1}; best: turn i if r_i >= every earlier reward;
    success: turns with r = 1. The first turn has no predecessor, so `better` and `best` keep it.
    """
    if criterion == "all":
        return list(range(len(rewards)))
    if criterion == "success":
        return [i for i, r in enumerate(rewards) if r == 1.0]
    if criterion == "better":
        return [i for i, r in enumerate(rewards) if i == 0 or r > rewards[i - 1]]
    return [i for i, r in enumerate(rewards) if all(r >= e for e in rewards[:i])]


def episode_examples(
    episode: Episode,
    criterion: Criterion,
    temperature: float,
    dedupe: bool,
    only_successful: bool,
) -> list[SFTExample]:
    """Training examples of one trajectory: each kept turn's action in the context of the turns before it,
    weighted exp(reward / temperature)."""
    rewards = [t.reward for t in episode.turns]
    if only_successful and not any(r == 1.0 for r in rewards):
        return []
    examples, seen = [], set()
    for i in kept_turns(rewards, criterion):
        action = episode.turns[i].action
        if dedupe and (not action.strip() or action in seen):
            continue
        seen.add(action)
        examples.append(
            SFTExample(
                id=f"{episode.id}-t{i + 1}",
                messages=[*episode.conversation(upto=i), Message(role="assistant", content=action)],
                weight=math.exp(rewards[i] / temperature),
            )
        )
    return examples


def _norm(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent parsed answer (spaces ignored); a tie goes to the answer given first."""
    counts = Counter(_norm(a) for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(_norm(a) for a in answers if a is not None and counts[_norm(a)] == top)
