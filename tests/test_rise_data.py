"""RISE's pure pieces, no model: conversion criteria, example building, filters, voting and metrics."""

from __future__ import annotations

import math

import pytest

from feedlearn.data.records import Episode, Message, Turn
from feedlearn.methods.rise.data import (
    best_sample,
    episode_examples,
    is_degenerate,
    kept_turns,
    majority_answer,
    percentages,
    rise_outcomes,
    windowed,
)
from feedlearn.tasks.math_data import MathProblem

# --- kept_turns ------------------------------------------------------------------------------------------

# Written out by hand from the spec: all = every turn; better = r_i > r_{i-1}; best = r_i >= every earlier
# reward; success = r_i == 1. The first turn has no predecessor, so better and best always keep it.
KEPT = [
    # rewards           all            better      best          success
    ([0, 1], [0, 1], [0, 1], [0, 1], [1]),
    ([-1, 0, 1], [0, 1, 2], [0, 1, 2], [0, 1, 2], [2]),
    ([0, 0, 1], [0, 1, 2], [0, 2], [0, 1, 2], [2]),
    ([1], [0], [0], [0], [0]),
    ([0, -1, 0, 1], [0, 1, 2, 3], [0, 2, 3], [0, 2, 3], [3]),
    ([0, 0], [0, 1], [0], [0, 1], []),
]


@pytest.mark.parametrize(("rewards", "all_", "better", "best", "success"), KEPT)
def test_kept_turns(rewards, all_, better, best, success):
    rewards = [float(r) for r in rewards]
    assert kept_turns(rewards, "all") == all_
    assert kept_turns(rewards, "better") == better
    assert kept_turns(rewards, "best") == best
    assert kept_turns(rewards, "success") == success


def test_kept_turns_best_compares_with_every_earlier_turn_not_just_the_last():
    # turn 2 (0) beats turn 1 (-1) but not turn 0 (1): better keeps it, best does not.
    assert kept_turns([1.0, -1.0, 0.0], "better") == [0, 2]
    assert kept_turns([1.0, -1.0, 0.0], "best") == [0]


# --- episode_examples ------------------------------------------------------------------------------------

PROMPT = [Message(role="user", content="Q: 2+3?")]
RETRY = "Wrong, try again: 2+3?"


def episode(*turns: tuple[str, float], id: str = "ep") -> Episode:
    """An episode whose turns are (action, reward); every turn but the last is followed by RETRY."""
    return Episode(
        id=id,
        task_id=id,
        prompt=list(PROMPT),
        turns=[
            Turn(action=a, reward=r, feedback=RETRY if i < len(turns) - 1 else None)
            for i, (a, r) in enumerate(turns)
        ],
    )


def roles_contents(messages) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def test_episode_examples_ids_messages_and_weights():
    ep = episode(("no box", -1.0), (r"\boxed{4}", 0.0), (r"\boxed{5}", 1.0), id="p7")
    examples = episode_examples(ep, "all", 0.4, dedupe=True, only_successful=False)
    assert [e.id for e in examples] == ["p7-t1", "p7-t2", "p7-t3"]
    assert roles_contents(examples[0].messages) == [("user", "Q: 2+3?"), ("assistant", "no box")]
    assert roles_contents(examples[1].messages) == [
        ("user", "Q: 2+3?"),
        ("assistant", "no box"),
        ("user", RETRY),
        ("assistant", r"\boxed{4}"),
    ]
    assert roles_contents(examples[2].messages) == [
        ("user", "Q: 2+3?"),
        ("assistant", "no box"),
        ("user", RETRY),
        ("assistant", r"\boxed{4}"),
        ("user", RETRY),
        ("assistant", r"\boxed{5}"),
    ]
    # exp(r / 0.4): -1 -> 0.082, 0 -> 1.0, 1 -> 12.18
    assert [round(e.weight, 2) for e in examples] == [0.08, 1.0, 12.18]
    assert examples[0].weight == pytest.approx(0.0821, abs=5e-4)
    assert examples[2].weight == pytest.approx(math.exp(2.5))


def test_episode_examples_follow_the_criterion():
    ep = episode(("a", 0.0), ("b", 0.0), (r"\boxed{5}", 1.0), id="e")
    ids = {c: [x.id for x in episode_examples(ep, c, 0.4, True, False)] for c in ["all", "better", "best"]}
    assert ids == {
        "all": ["e-t1", "e-t2", "e-t3"],
        "better": ["e-t1", "e-t3"],
        "best": ["e-t1", "e-t2", "e-t3"],
    }
    success = episode_examples(ep, "success", 0.4, True, False)
    assert [x.id for x in success] == ["e-t3"]
    # the kept turn still has every earlier turn as context, kept or not
    assert [m.content for m in success[0].messages if m.role == "assistant"] == ["a", "b", r"\boxed{5}"]


def test_episode_examples_temperature():
    ep = episode(("x", 1.0))
    (ex,) = episode_examples(ep, "all", 1.0, True, False)
    assert ex.weight == pytest.approx(math.e)


def test_dedupe_drops_empty_and_repeated_actions():
    ep = episode(("same", 0.0), ("", -1.0), ("same", 0.0), ("   ", -1.0), (r"\boxed{5}", 1.0), id="d")
    kept = episode_examples(ep, "all", 0.4, dedupe=True, only_successful=False)
    assert [x.id for x in kept] == ["d-t1", "d-t5"]
    everything = episode_examples(ep, "all", 0.4, dedupe=False, only_successful=False)
    assert [x.id for x in everything] == ["d-t1", "d-t2", "d-t3", "d-t4", "d-t5"]


def test_only_successful_drops_trajectories_without_a_correct_turn():
    failed = episode(("a", 0.0), ("b", -1.0))
    solved = episode(("a", 0.0), (r"\boxed{5}", 1.0))
    assert episode_examples(failed, "all", 0.4, True, only_successful=True) == []
    assert len(episode_examples(failed, "all", 0.4, True, only_successful=False)) == 2
    assert len(episode_examples(solved, "all", 0.4, True, only_successful=True)) == 2


def test_episode_without_turns_gives_no_examples():
    assert episode_examples(episode(), "all", 0.4, True, False) == []


# --- is_degenerate, best_sample, majority_answer -------------------------------------------------------


def test_is_degenerate_repeated_word():
    assert is_degenerate("so " * 151 + r"\boxed{1}")
    assert not is_degenerate("so " * 150 + r"\boxed{1}")
    # repeats are counted over the whole text, not only in a row
    assert is_degenerate(" ".join(["so", "x"] * 151))


def test_is_degenerate_long_word():
    assert is_degenerate("answer: " + "a" * 301)
    assert not is_degenerate("answer: " + "a" * 300)


@pytest.mark.parametrize(
    "text",
    ["", "   ", r"In May she sold 48/2 = 24 clips. The answer is \boxed{72}.", "1 2 3 " * 100],
)
def test_is_degenerate_normal_text(text):
    assert not is_degenerate(text)


def test_best_sample_first_highest_wins():
    assert best_sample(["a", "b", "c"], [0.0, 1.0, 1.0]) == 1
    assert best_sample(["a", "b"], [-1.0, -1.0]) == 0
    assert best_sample(["a", "b", "c"], [-1.0, 0.0, -1.0]) == 1
    assert best_sample(["only"], [0.0]) == 0


def test_majority_answer():
    assert majority_answer(["3", "5", "5", "7"]) == "5"
    assert majority_answer(["1 2", "12", "3"]) == "12"  # spaces ignored
    assert majority_answer(["\\frac{1}{ 2}", "\\frac{1}{2}", "9"]) == "\\frac{1}{2}"
    assert majority_answer(["4", "3", "3", "4"]) == "4"  # tie: the answer given first
    assert majority_answer(["3", "4"]) == "3"
    assert majority_answer([None, None, "5"]) == "5"  # None is no vote
    assert majority_answer([None, "6", None, "5", "5"]) == "5"
    assert majority_answer([None, None]) is None
    assert majority_answer([]) is None


# --- rise_outcomes ----------------------------------------------------------------------------------------


def problem(i: int, answer: str) -> MathProblem:
    return MathProblem(id=f"p{i}", question=f"question {i}", answer=answer, source="test")


def eval_episode(i: int, answers: list[str | None], gold: str) -> Episode:
    """An evaluation episode whose turns gave `answers` (reward 1 / 0 / -1 for right / wrong / none)."""
    turns = [
        Turn(
            action="..." if a is None else f"\\boxed{{{a}}}",
            reward=-1.0 if a is None else (1.0 if a == gold else 0.0),
            answer=a,
            feedback=RETRY,
        )
        for a in answers
    ]
    return Episode(id=f"p{i}", task_id=f"p{i}", prompt=list(PROMPT), turns=turns)


def scored(answers: list[str | None], gold: str) -> list[tuple[float, str | None]]:
    return [(-1.0 if a is None else (1.0 if a == gold else 0.0), a) for a in answers]


GOLD = ["5", "7", "9", "11"]
# sequential answers over 3 turns, one row per problem
SEQUENTIAL = [
    ["5", "5", "5"],  # right every turn
    ["1", "7", "2"],  # right at turn 2 only: p1 yes, majority no (tie -> "1")
    ["9", "3", "3"],  # right at turn 1 only: majority "3" is wrong
    [None, "11", "11"],  # no answer, then right twice: majority right
]
# 4 parallel first-turn samples per problem
PARALLEL = [
    ["5", "1", "5", "2"],  # majority right
    ["1", "1", "7", "7"],  # tie -> "1" wrong; any right
    ["3", "4", "6", None],  # all wrong
    [None, None, None, "11"],  # majority of the only answer given: right
]


def test_rise_metrics_hand_built():
    problems = [problem(i, g) for i, g in enumerate(GOLD)]
    episodes = [eval_episode(i, a, g) for i, (a, g) in enumerate(zip(SEQUENTIAL, GOLD, strict=True))]
    parallel = [scored(a, g) for a, g in zip(PARALLEL, GOLD, strict=True)]
    metrics = percentages(rise_outcomes(problems, episodes, parallel))
    assert set(metrics) == {"acc@t1", "acc@t2", "acc@t3", "m1@t1", "m4@t1", "m1@t3", "p1@t3", "p4@t1"}
    assert metrics["acc@t1"] == 50.0  # p0, p2
    assert metrics["acc@t2"] == 75.0  # p0, p1, p3
    assert metrics["acc@t3"] == 50.0  # p0, p3
    assert metrics["m1@t1"] == metrics["acc@t1"]
    assert metrics["m1@t3"] == 50.0  # p0, p3
    assert metrics["p1@t3"] == 100.0
    assert metrics["m4@t1"] == 50.0  # p0, p3
    assert metrics["p4@t1"] == 75.0  # p0, p1, p3


def test_paired_comparison_of_two_models_on_the_same_problems():
    import math

    from feedlearn.methods.rise.data import paired_comparison

    base = {"acc@t1": [1, 0, 0, 1], "m1@t1": [1, 0, 0, 1], "acc@t3": [1, 0, 0, 0], "m1@t3": [1, 0, 0, 0]}
    new = {"acc@t1": [1, 1, 0, 1], "m1@t1": [1, 1, 0, 1], "acc@t3": [1, 1, 1, 0], "m1@t3": [1, 1, 1, 1]}
    result = paired_comparison(base, new)
    # m1@t3: differences 0 1 1 1 -> mean 0.75, squared deviations 0.75 in all, sd sqrt(0.75 / 3), se sd / 2
    assert result["difference"]["m1@t3"] == {"points": 75.0, "se": round(100 * math.sqrt(0.75 / 3) / 2, 2)}
    assert result["difference"]["m1@t1"] == {"points": 25.0, "se": 25.0}  # 0 1 0 0: sd 0.5, se 0.25
    gains = result["m1@t3 - m1@t1"]
    assert gains["base"] == {"points": -25.0, "se": 25.0}  # base loses problem 3 over its turns
    assert gains["new"] == {"points": 25.0, "se": 25.0}  # new gains problem 2
    # per problem, new's gain minus base's: 0 0 1 1 -> 50 points, sd sqrt(1/3), se sd / 2
    assert gains["new - base"] == {"points": 50.0, "se": round(100 * math.sqrt(1 / 3) / 2, 2)}


def test_rise_metrics_names_follow_the_counts_and_round_to_two_decimals():
    problems = [problem(i, g) for i, g in enumerate(["1", "2", "3"])]
    episodes = [
        eval_episode(0, ["1", "0"], "1"),
        eval_episode(1, ["0", "0"], "2"),
        eval_episode(2, ["0", "3"], "3"),
    ]
    parallel = [scored(["1", "1", "0"], "1"), scored(["0", "0", "2"], "2"), scored(["0", "0", "0"], "3")]
    metrics = percentages(rise_outcomes(problems, episodes, parallel))
    assert set(metrics) == {"acc@t1", "acc@t2", "m1@t1", "m3@t1", "m1@t2", "p1@t2", "p3@t1"}
    assert metrics["acc@t1"] == 33.33
    assert metrics["acc@t2"] == 33.33
    assert metrics["m3@t1"] == 33.33
    assert metrics["p3@t1"] == 66.67
    assert metrics["p1@t2"] == 66.67
    assert metrics["m1@t2"] == 33.33  # ties go to the first answer: p0 right ("1"), p2 wrong ("0")


def test_rise_metrics_majority_compares_answers_mathematically():
    problems = [problem(0, "0.5")]
    episodes = [eval_episode(0, ["\\frac{1}{2}", "1/2", "0"], "0.5")]
    parallel = [[(1.0, "\\frac{1}{2}"), (1.0, "\\frac{1}{2}"), (0.0, "3")]]
    metrics = percentages(rise_outcomes(problems, episodes, parallel))
    assert metrics["m3@t1"] == 100.0


def test_rise_metrics_one_parallel_sample_keeps_m1_t1_as_turn_one_accuracy():
    problems = [problem(0, "1"), problem(1, "2")]
    episodes = [eval_episode(0, ["1", "1"], "1"), eval_episode(1, ["2", "2"], "2")]  # turn 1: 100%
    parallel = [scored(["0"], "1"), scored(["0"], "2")]  # parallel sample: 0%
    metrics = percentages(rise_outcomes(problems, episodes, parallel))
    assert metrics["acc@t1"] == 100.0
    assert metrics["m1@t1"] == metrics["acc@t1"]


# --- windowed context ------------------------------------------------------------------------------------


def four_turns() -> Episode:
    return Episode(
        id="w",
        task_id="w",
        prompt=list(PROMPT),
        turns=[Turn(action=f"attempt {k}", reward=0.0, feedback=f"retry {k}") for k in range(1, 5)],
    )


def test_windowed_keeps_question_and_last_w_minus_1_attempts():
    conv = windowed(four_turns(), 3)
    assert conv == [
        {"role": "user", "content": "Q: 2+3?"},
        {"role": "assistant", "content": "attempt 3"},
        {"role": "user", "content": "retry 3"},
        {"role": "assistant", "content": "attempt 4"},
        {"role": "user", "content": "retry 4"},
    ]


def test_windowed_none_keeps_everything():
    conv = windowed(four_turns(), None)
    assert conv[0] == {"role": "user", "content": "Q: 2+3?"}
    assert len(conv) == 9
    assert [m["content"] for m in conv[1::2]] == [f"attempt {k}" for k in range(1, 5)]
    assert [m["content"] for m in conv[2::2]] == [f"retry {k}" for k in range(1, 5)]


def test_windowed_before_the_window_fills_keeps_everything():
    ep = four_turns()
    ep.turns = ep.turns[:2]
    assert windowed(ep, 3) == windowed(ep, None)
    assert windowed(episode(), 2) == [{"role": "user", "content": "Q: 2+3?"}]


def test_windowed_does_not_change_the_episode():
    ep = four_turns()
    windowed(ep, 2)
    assert len(ep.turns) == 4


def test_retry_message_keeps_other_braces():
    from feedlearn.envs.math_env import MathPrompt

    prompt = MathPrompt(retry_message="Wrong. Put the answer in \\boxed{}.\n\n{question}")
    assert prompt.retry("What is 2+2?") == "Wrong. Put the answer in \\boxed{}.\n\nWhat is 2+2?"


# --- the reference's rules (issue 23) --------------------------------------------------------------------


def test_a_missing_answer_scores_0_on_math_and_minus_1_elsewhere():
    from feedlearn.envs.math_env import MathEnv, MathPrompt

    def rewards(source: str) -> list[float]:
        env = MathEnv(
            MathProblem(id="p", question="2+2?", answer="4", source=source), MathPrompt(), max_turns=5
        )
        return [env.step(text)[1] for text in ["four", r"\boxed{5}", r"\boxed{4}"]]

    # the reference's environments/math.py scores an answer without \boxed{} 0, its gsm8k.py -1
    assert rewards("math") == [0.0, 0.0, 1.0]
    assert rewards("gsm8k") == [-1.0, 0.0, 1.0]
    assert rewards("synthetic") == [-1.0, 0.0, 1.0]


def test_trajectory_dedupe_strips_and_drops_repeats_before_the_criterion():
    ep = episode((" A\n", 0.0), ("A", 0.0), ("  ", -1.0), ("B", 0.0), (r"\boxed{5}", 1.0), id="d")
    # the reference's order: turns 2 (a repeat once stripped) and 3 (empty) leave the trajectory, then
    # 'better' compares each turn left with the one before it left: B (0) is not better than A (0)
    kept = episode_examples(ep, "better", 0.4, True, False, dedupe_scope="trajectory")
    assert [x.id for x in kept] == ["d-t1", "d-t5"]
    assert roles_contents(kept[0].messages) == [("user", "Q: 2+3?"), ("assistant", "A")]
    assert roles_contents(kept[1].messages) == [
        ("user", "Q: 2+3?"),
        ("assistant", "A"),
        ("user", RETRY),
        ("assistant", "B"),
        ("user", RETRY),
        ("assistant", r"\boxed{5}"),
    ]
    assert [x.weight for x in kept] == [1.0, math.exp(2.5)]
    # dedupe among the kept turns: 'better' sees B (0) after the empty turn (-1) and keeps it; the
    # contexts are the trajectory as collected
    kept = episode_examples(ep, "better", 0.4, True, False, dedupe_scope="kept")
    assert [x.id for x in kept] == ["d-t1", "d-t4", "d-t5"]
    assert [m.content for m in kept[2].messages if m.role == "assistant"] == [
        " A\n",
        "A",
        "  ",
        "B",
        r"\boxed{5}",
    ]
    # without dedupe the scope changes nothing
    assert episode_examples(ep, "better", 0.4, False, False, dedupe_scope="trajectory") == episode_examples(
        ep, "better", 0.4, False, False, dedupe_scope="kept"
    )


def test_dialogue_layout_gives_the_instruction_the_example_and_the_question_their_own_turns():
    from feedlearn.envs.math_env import MathPrompt, WorkedExample

    prompt = MathPrompt(
        layout="dialogue",
        instruction="Solve it.",
        example=WorkedExample(question="1+1?", answer=r"\boxed{2}"),
        next_question="Good. Next:\n{question}",
    )
    assert roles_contents(prompt.opening("2+3?")) == [
        ("user", "Solve it.\n\n1+1?"),
        ("assistant", r"\boxed{2}"),
        ("user", "Good. Next:\n2+3?"),
    ]
    # the default layout: one user message, as before
    one = prompt.model_copy(update={"layout": "one_message"})
    assert roles_contents(one.opening("2+3?")) == [
        ("user", "Solve it.\n\nQuestion: 1+1?\nAnswer: \\boxed{2}\n\nQuestion: 2+3?")
    ]
    with pytest.raises(ValueError, match="worked_example"):
        MathPrompt(layout="dialogue", worked_example=False)


def test_is_degenerate_counts_a_word_whatever_its_case():
    # the reference lowercases before counting (workflow_gen.py, detect_duplicates)
    assert is_degenerate("So so SO " * 51)  # 153 times "so"
    assert not is_degenerate("So so " * 75)  # 150 times
