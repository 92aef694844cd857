"""Teachers for C3PO: propose categories and in-scope / near-scope prompts for a feedback, revise responses.

`OfflineTeacher` answers for the built-in feedbacks from templates, with no model; `LLMTeacher` asks a model
behind any backend and parses its replies as data.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

from feedlearn.backends.base import ParsedAsker
from feedlearn.errors import FeedlearnError
from feedlearn.seeds import derive_seed
from feedlearn.tasks.instructions import BUILTIN_FEEDBACKS, FeedbackTask
from feedlearn.verifiers.verbal import Feedback

Scope = Literal["in", "near"]
"""in: prompts the feedback applies to; near: closely related prompts it does not apply to."""


class Teacher(Protocol):
    """Anything that proposes prompts for a feedback and revises responses to follow it."""

    def categories(self, feedback: Feedback, k: int) -> list[str]:
        """Up to `k` categories of prompts covering the feedback's domain and slightly more."""
        ...

    def prompts(self, feedback: Feedback, category: str, scope: Scope, n: int) -> list[str]:
        """Up to `n` prompts of `category`, inside the domain (scope "in") or just outside it ("near")."""
        ...

    def revise(self, feedback: Feedback, prompts: list[str], responses: list[str]) -> list[str | None]:
        """Each response revised to apply the feedback's effect; None where no usable revision came."""
        ...


# ---- offline ------------------------------------------------------------------------------------------


class OfflineTeacher:
    """Answers for the built-in feedbacks from templates, deterministically given `seed`."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def categories(self, feedback: Feedback, k: int) -> list[str]:
        return _task(feedback).categories[:k]

    def prompts(self, feedback: Feedback, category: str, scope: Scope, n: int) -> list[str]:
        task = _task(feedback)
        if category not in task.categories:
            raise FeedlearnError(
                f"unknown category '{category}' for feedback '{feedback.content}': "
                f"choose one of {', '.join(task.categories)}"
            )
        generate = {"in": task.in_scope, "near": task.near_scope}[scope]
        return generate(
            category, n, random.Random(derive_seed(self.seed, "teacher", feedback.id, category, scope))
        )

    def revise(self, feedback: Feedback, prompts: list[str], responses: list[str]) -> list[str | None]:
        task = _task(feedback)
        return [task.revise(p, r) for p, r in zip(prompts, responses, strict=True)]


def _task(feedback: Feedback) -> FeedbackTask:
    for task in BUILTIN_FEEDBACKS.values():
        if task.feedback.id == feedback.id:
            return task
    raise FeedlearnError(
        f"the offline teacher only knows the built-in feedbacks ({', '.join(BUILTIN_FEEDBACKS)}), "
        f"not '{feedback.content}': use one of them or an LLM teacher"
    )


# ---- LLM ----------------------------------------------------------------------------------------------

REVISION_MARKER = "REVISED RESPONSE:"
_MARKER = re.compile(re.escape(REVISION_MARKER) + r"\**", re.IGNORECASE)
_LIST_LINE = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]+(.+)$", re.MULTILINE)

T = TypeVar("T")


def parse_list(reply: str) -> list[str]:
    """The strings of the first JSON list of strings anywhere in `reply` (fenced or not), else the items of
    its numbered or bulleted lines; stripped, empties and duplicates dropped. Parsed only, never evaluated.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", reply):
        try:
            value, _ = decoder.raw_decode(reply, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            items = _clean([v for v in value if isinstance(v, str)])
            if items:
                return items
    return _clean([_unquote(item) for item in _LIST_LINE.findall(reply)])


def parse_revision(reply: str) -> str | None:
    """The text after the last `REVISED RESPONSE:` marker, stripped; None when missing or empty."""
    markers = list(_MARKER.finditer(reply))
    if not markers:
        return None
    return reply[markers[-1].end() :].strip() or None


def _clean(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item.strip() for item in items if item.strip()))


def _unquote(item: str) -> str:
    return item[1:-1] if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'" else item


def _feedback_intro(feedback: Feedback) -> str:
    return (
        f'A user gave this feedback to an AI assistant: "{feedback.content}"\n'
        f"It applies to: {feedback.domain}.\n\n"
    )


def revision_question(feedback: Feedback, prompt: str, response: str) -> str:
    """The request to revise `response` to `prompt` so that it applies the feedback's effect: a critique
    first, then the improved response after `REVISION_MARKER` (parsed by `parse_revision`). Asked of the
    teacher, or of the policy itself when it revises its own answers (C3PO's `sample.reviser: policy`)."""
    return (
        "A user asked an AI assistant:\n"
        f"[Prompt]\n{prompt}\n[End of prompt]\n\n"
        "The assistant replied:\n"
        f"[Response]\n{response}\n[End of response]\n\n"
        f"Improve the response so that it does this: {feedback.effect}. Keep everything else the same.\n"
        "First write a short critique of the response. Then write a line "
        f"`{REVISION_MARKER}` followed by the improved response, and nothing after it."
    )


class LLMTeacher:
    """A teacher model behind any backend, asked through `asker`: a reply that yields nothing is asked
    again (only those), up to its `max_attempts` asks in all, then skipped; backend errors propagate."""

    def __init__(self, asker: ParsedAsker):
        self.asker = asker

    @property
    def garbage_replies(self) -> int:
        """Replies that yielded nothing, retries included."""
        return self.asker.garbage_replies

    @property
    def skipped(self) -> int:
        """Requests still without a usable reply after every attempt."""
        return self.asker.skipped

    def categories(self, feedback: Feedback, k: int) -> list[str]:
        question = (
            f"{_feedback_intro(feedback)}Propose {k} categories of user requests that together cover this "
            "domain and slightly more than it. Name each category in a few words. "
            f"Reply with a JSON list of {k} strings and nothing else."
        )
        return (self._ask([question], parse_list)[0] or [])[:k]

    def prompts(self, feedback: Feedback, category: str, scope: Scope, n: int) -> list[str]:
        where = {
            "in": f'clearly inside the domain "{feedback.domain}", so that the feedback applies to them',
            "near": f'closely related to the domain "{feedback.domain}" but clearly outside it, '
            "so that the feedback does not apply to them",
        }[scope]
        question = (
            f"{_feedback_intro(feedback)}Write {n} different prompts that a user might send to an assistant, "
            f'in the category "{category}" and {where}. Each prompt must stand on its own. '
            f"Reply with a JSON list of {n} strings and nothing else."
        )
        return (self._ask([question], parse_list)[0] or [])[:n]

    def revise(self, feedback: Feedback, prompts: list[str], responses: list[str]) -> list[str | None]:
        questions = [
            revision_question(feedback, prompt, response)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return self._ask(questions, parse_revision)

    def _ask(self, questions: list[str], parse: Callable[[str], T]) -> list[T | None]:
        return self.asker.ask([[{"role": "user", "content": q}] for q in questions], parse)
