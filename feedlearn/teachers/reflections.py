"""A teacher model for Reflect-RL, through any backend: reflections on teacher steps, questions about a
repository (AutoExplore tasks), and a chat model playing an environment (prompted to analyze, then choose).

Replies are parsed as data; a reply that parses to nothing is asked again (`ParsedAsker`).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

from feedlearn.backends.base import ParsedAsker
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic
from feedlearn.data.records import Record
from feedlearn.envs.autoexplore import CAT_SUFFIXES, ExploreTask, listed_files, read_prefix
from feedlearn.envs.text_env import TextObservation
from feedlearn.seeds import derive_seed
from feedlearn.teachers.scripted import ReflectStep

log = logging.getLogger(__name__)

REFLECTION_WORDS = 50
"""The length the spec asks of a reflection."""
_ACTION_LINE = re.compile(r"action\s*[:：]\s*\**\s*([0-9a-z]{1,2})\b", re.IGNORECASE)
_QUESTION = re.compile(r"QUESTION:\s*(.+)", re.IGNORECASE)


def reflection_question(step: ReflectStep) -> str:
    """Asks for the reflection of `step`: the teacher is told the best move (and the mistake before a
    recovery) and explains it as its own analysis."""
    mistake = (
        f"The agent's previous move, {step.mistake}, was a mistake: say what it did wrong, then how to "
        "recover.\n"
        if step.mistake
        else ""
    )
    return (
        "You are teaching an agent that plays a text game by picking one action per turn.\n\n"
        f"[State]\n{step.state}\n[End of state]\n"
        f"Available actions: {', '.join(step.choices)}\n"
        f"The best action here is: {step.oracle}\n{mistake}\n"
        f"Write the agent's analysis of this state in at most {REFLECTION_WORDS} words: what matters in the "
        f"state and why `{step.oracle}` is the best action, as if the agent worked it out itself (never "
        "say it was told). End by naming the action. Reply with the analysis only."
    )


def parse_reflection(reply: str, step: ReflectStep) -> str | None:
    """The reply as a reflection: stripped and cut to twice the word limit; None when it is empty or does
    not name the best action (a reflection that recommends nothing teaches nothing)."""
    words = reply.split()
    if not words or step.oracle.lower() not in reply.lower():
        return None
    return " ".join(words[: 2 * REFLECTION_WORDS])


def llm_reflections(asker: ParsedAsker, steps: list[ReflectStep]) -> list[str | None]:
    """The teacher's reflection for each step (None where every attempt was garbage)."""
    questions = [[{"role": "user", "content": reflection_question(s)}] for s in steps]
    return asker.ask(questions, [lambda reply, step=step: parse_reflection(reply, step) for step in steps])


REFLECTION_CHUNK = 32
"""Teacher reflections asked (and saved) at a time."""


class TeacherReflection(Record):
    """A teacher model's reflection on one teacher step (None: no usable reply)."""

    id: str
    text: str | None


def with_llm_reflections(
    steps: list[ReflectStep], folder: Path, asker: Callable[[], ParsedAsker]
) -> list[ReflectStep]:
    """`steps` with the teacher model's reflections, asked in chunks and saved in `folder` after each
    (`reflections.jsonl`, and the asker's counts in `stats.json`), so a stopped run keeps them; a step the
    teacher gave no usable reflection keeps its template, or is dropped. `asker` is called only if some
    step has no saved reflection."""
    book = JsonlAppender(folder / "reflections.jsonl", TeacherReflection)
    todo = [s for s in steps if s.id not in book]
    if todo:
        teacher = asker()
        for start in range(0, len(todo), REFLECTION_CHUNK):
            chunk = todo[start : start + REFLECTION_CHUNK]
            texts = llm_reflections(teacher, chunk)
            book.append(*(TeacherReflection(id=s.id, text=x) for s, x in zip(chunk, texts, strict=True)))
        write_json_atomic(
            folder / "stats.json", {"garbage_replies": teacher.garbage_replies, "skipped": teacher.skipped}
        )
    written = {r.id: r.text for r in read_jsonl(book.path, TeacherReflection)}
    out = [
        s.model_copy(update={"reflection": written[s.id] or s.reflection})
        for s in steps
        if written[s.id] or s.reflection
    ]
    if len(out) < len(steps):
        log.warning("teacher: %d steps without any reflection were dropped", len(steps) - len(out))
    return out


def propose_tasks(
    asker: ParsedAsker, root: str, n: int, seed: int, max_chars: int = 1500
) -> list[ExploreTask]:
    """Up to `n` AutoExplore tasks written by the teacher: for a random listed text file, a question that
    only that file answers. Files are read like `cat` reads them (sandboxed, truncated)."""
    root = os.path.realpath(root)
    files = [f for f in listed_files(root) if f.lower().endswith(CAT_SUFFIXES)]
    picked = random.Random(derive_seed(seed, "teacher", "tasks")).sample(files, min(n, len(files)))
    questions = []
    for rel in picked:
        text = read_prefix(os.path.join(root, rel), 4 * max_chars).decode(errors="replace")[:max_chars]
        questions.append(
            [
                {
                    "role": "user",
                    "content": "An agent must find which file of a code repository answers a question. "
                    f"Here is the start of the file {rel}:\n[File]\n{text}\n[End of file]\n\n"
                    "Write one question that this file answers and no other file likely does, without "
                    "naming the file or its folder. Reply with one line: `QUESTION: <the question>`.",
                }
            ]
        )
    answers = asker.ask(questions, _parse_question)
    return [
        ExploreTask(question=q, targets=[rel], depth=rel.count("/"), kind="other")
        for rel, q in zip(picked, answers, strict=True)
        if q
    ]


def _parse_question(reply: str) -> str | None:
    match = _QUESTION.search(reply)
    question = match.group(1).strip() if match else ""
    return question if question.endswith("?") else None


def agent_question(obs: TextObservation, labels: list[str]) -> str:
    """A chat model's turn in the environment: the state, the labelled choices; analyze, then choose."""
    return (
        "You are playing a text game. Pick the best next action.\n\n"
        f"[State]\n{obs.state}\n[End of state]\n\nActions:\n{obs.render_choices(labels)}\n\n"
        "First analyze the state in a few sentences. Then end with one line `Action: <label>`, where "
        "<label> is the label of your chosen action."
    )


def parse_choice(reply: str, labels: list[str]) -> int | None:
    """The index of the label named on the reply's last `Action: <label>` line (None if none is valid)."""
    matches = _ACTION_LINE.findall(reply)
    label = matches[-1].lower() if matches else None
    return labels.index(label) if label in labels else None


def choice_parser(labels: list[str]):
    """A parser of replies to `agent_question`: (chosen index, the reply), or None without a valid label."""

    def parse(reply: str) -> tuple[int, str] | None:
        pick = parse_choice(reply, labels)
        return None if pick is None else (pick, reply)

    return parse


def named_move(text: str, choices: list[str]) -> str | None:
    """The choice an analysis recommends, read as the choice it names last (analyses end by naming their
    move); None when it names none."""
    last = {}
    for choice in choices:
        ends = [m.end() for m in re.finditer(rf"(?<!\w){re.escape(choice)}(?!\w)", text, re.IGNORECASE)]
        if ends:
            last[choice] = ends[-1]
    return max(last, key=last.get) if last else None
