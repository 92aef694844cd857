"""RISE's pure pieces: degenerate-sample filter, best-of-n choice, conversion criteria, the windowed
context, and the evaluation's metrics (accuracy per turn, majority voting, pass@n), per problem and
compared problem by problem between two models."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Literal

from feedlearn.data.records import Episode, Message, SFTExample
from feedlearn.stats import paired_difference
from feedlearn.tasks.math_data import MathProblem
from feedlearn.verifiers.math_answers import answers_match

Criterion = Literal["all", "better", "best", "success"]
DedupeScope = Literal["kept", "trajectory"]


def is_degenerate(text: str, max_repeats: int = 150, max_word_chars: int = 300) -> bool:
    """A sample that repeats one word more than `max_repeats` times (case ignored, as the reference counts
    them) or has a word over `max_word_chars`."""
    words = text.lower().split()
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
    dedupe_scope: DedupeScope = "kept",
) -> list[SFTExample]:
    """Training examples of one trajectory: each kept turn's action in the context of the turns before it,
    weighted exp(reward / temperature); an example's id names the turn of the collected trajectory.

    With `dedupe`, empty and repeated actions are dropped: in scope `kept`, among the turns the criterion
    keeps, each example's context as collected; in scope `trajectory` (the reference's), every action is
    stripped and the empty and repeated ones leave the trajectory first, their retry messages with them,
    and the criterion and the contexts see only the turns left.
    """
    rewards = [t.reward for t in episode.turns]
    if only_successful and not any(r == 1.0 for r in rewards):
        return []
    if dedupe and dedupe_scope == "trajectory":
        return _examples_of_deduped_trajectory(episode, criterion, temperature)
    examples, seen = [], set()
    for i in kept_turns(rewards, criterion):
        action = episode.turns[i].action
        if dedupe and (not action.strip() or action in seen):
            continue
        seen.add(action)
        examples.append(_example(episode, i, episode.conversation(upto=i), action, rewards[i], temperature))
    return examples


def _examples_of_deduped_trajectory(
    episode: Episode, criterion: Criterion, temperature: float
) -> list[SFTExample]:
    """`episode_examples` with dedupe in scope `trajectory`."""
    left, seen = [], set()  # (index in the collected trajectory, turn with its action stripped)
    for i, turn in enumerate(episode.turns):
        action = turn.action.strip()
        if action and action not in seen:
            seen.add(action)
            left.append((i, turn.model_copy(update={"action": action})))
    trajectory = episode.model_copy(update={"turns": [turn for _, turn in left]})
    return [
        _example(
            episode,
            left[j][0],
            trajectory.conversation(upto=j),
            left[j][1].action,
            left[j][1].reward,
            temperature,
        )
        for j in kept_turns([turn.reward for _, turn in left], criterion)
    ]


def _example(
    episode: Episode, turn: int, context: list[Message], action: str, reward: float, temperature: float
) -> SFTExample:
    """The example training `action` (the episode's turn `turn`, 0-based) after `context`."""
    return SFTExample(
        id=f"{episode.id}-t{turn + 1}",
        messages=[*context, Message(role="assistant", content=action)],
        weight=math.exp(reward / temperature),
    )


def _norm(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent parsed answer (spaces ignored); a tie goes to the answer given first."""
    counts = Counter(_norm(a) for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(_norm(a) for a in answers if a is not None and counts[_norm(a)] == top)


def solved_by_turn(episodes: list[Episode], turns: int) -> dict[str, float]:
    """`success/turn<t>`: the share of `episodes` solved at turn t or before (an episode stops once
    solved)."""
    return {
        f"success/turn{t}": sum(any(x.reward == 1.0 for x in e.turns[:t]) for e in episodes) / len(episodes)
        for t in range(1, turns + 1)
    }


def windowed(episode: Episode, window: int | None) -> list[dict]:
    """The conversation so far; with a window w, the question plus only the last w-1 attempts."""
    turns = episode.turns if window is None else episode.turns[-(window - 1) :]
    return [m.model_dump() for m in episode.model_copy(update={"turns": turns}).conversation()]


def rise_outcomes(
    problems: list[MathProblem], episodes: list[Episode], parallel: list[list[tuple[float, str | None]]]
) -> dict[str, list[bool]]:
    """Per test problem, in order: right at turn k (acc@tk), right by majority of the T turns (m1@tT), right
    at any turn (p1@tT), and over n parallel first-turn samples right by majority (mn@t1) and at any
    sample (pn@t1); the metrics are their shares, and two models' outcomes on the same problems pair up."""
    n_turns, n_par = len(episodes[0].turns), len(parallel[0])

    def majority_correct(answers, gold) -> bool:
        top = majority_answer(answers)
        return top is not None and answers_match(top, gold)

    outcomes = {f"acc@t{k + 1}": [e.turns[k].reward == 1.0 for e in episodes] for k in range(n_turns)}
    outcomes["m1@t1"] = outcomes["acc@t1"]
    outcomes[f"m1@t{n_turns}"] = [
        majority_correct([t.answer for t in e.turns], p.answer)
        for p, e in zip(problems, episodes, strict=True)
    ]
    outcomes[f"p1@t{n_turns}"] = [any(t.reward == 1.0 for t in e.turns) for e in episodes]
    if n_par > 1:  # one parallel sample is just another first turn: m1@t1 already says it
        outcomes[f"m{n_par}@t1"] = [
            majority_correct([a for _, a in par], p.answer) for p, par in zip(problems, parallel, strict=True)
        ]
        outcomes[f"p{n_par}@t1"] = [any(r == 1.0 for r, _ in par) for par in parallel]
    return outcomes


def percentages(outcomes: dict[str, list[bool]]) -> dict[str, float]:
    """Each metric's share of right problems, in percent (`rise_outcomes` -> the metrics)."""
    return {name: round(100.0 * sum(flags) / len(flags), 2) for name, flags in outcomes.items()}


def paired_comparison(base: dict[str, list[bool]], new: dict[str, list[bool]]) -> dict[str, dict]:
    """Two models' outcomes on the same test problems (`rise_outcomes`), compared problem by problem, in
    points with the standard error of the paired difference: each metric's difference (`new - base`),
    each model's gain over its own turns without an oracle (m1@tT - m1@t1), and how much more `new`
    gains over its turns than `base` does."""

    def points(a: list[bool], b: list[bool]) -> dict[str, float]:
        diff, se = paired_difference([float(x) for x in a], [float(y) for y in b])
        return {"points": round(100 * diff, 2), "se": round(100 * se, 2)}

    last = max(int(k[5:]) for k in base if k.startswith("acc@t"))
    majority = f"m1@t{last}"
    gains = {
        name: [float(x) - float(y) for x, y in zip(o[majority], o["m1@t1"], strict=True)]
        for name, o in (("base", base), ("new", new))
    }
    return {
        "difference": {k: points(new[k], base[k]) for k in base if k in new},
        f"{majority} - m1@t1": {
            "base": points(base[majority], base["m1@t1"]),
            "new": points(new[majority], new["m1@t1"]),
            "new - base": points(gains["new"], gains["base"]),
        },
    }
