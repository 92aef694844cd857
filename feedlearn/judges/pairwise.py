"""The pairwise judge: an LLM asked which of two responses is better, in both orders."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from feedlearn.backends.base import Backend, ParsedAsker, SamplingParams
from feedlearn.data.records import Completion, PreferencePair


def render(value: Completion) -> str:
    """Raw text as is; messages as a `role: content` transcript, one message per line."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{m.role}: {m.content}" for m in value)


JUDGE_QUESTION = "Which response is better? Reply with exactly one letter: A or B."

_BRACKETED = re.compile(r"\[\[\s*([AB])\s*\]\]", re.IGNORECASE)
_BARE = re.compile(r"[\W_]*(?:answer\s*:\W*)?(?:response\W*)?([AB])[\W_]*", re.IGNORECASE)


def parse_verdict(reply: str) -> str | None:
    """The judge's choice, "A" or "B", or None when the reply is not a clear single choice.

    Accepted: `[[A]]` or `[[B]]` anywhere (one kind only), or a reply that is just the letter, possibly
    wrapped in punctuation or quotes and led by "Answer:" or "Response". Parsed only, never evaluated.
    """
    bracketed = {letter.upper() for letter in _BRACKETED.findall(reply)}
    if bracketed:
        return bracketed.pop() if len(bracketed) == 1 else None
    bare = _BARE.fullmatch(reply.strip())
    return bare.group(1).upper() if bare else None


def judge_prompt(pair: PreferencePair, swap: bool) -> str:
    """The pairwise question: the context, then `a` as Response A and `b` as Response B (swapped: b, a)."""
    first, second = (pair.b, pair.a) if swap else (pair.a, pair.b)
    return (
        "Compare two responses to the same context.\n\n"
        f"[Context]\n{render(pair.prompt)}\n[End of context]\n\n"
        f"[Response A]\n{render(first)}\n[End of Response A]\n\n"
        f"[Response B]\n{render(second)}\n[End of Response B]\n\n"
        f"{JUDGE_QUESTION}"
    )


class JudgeLabeler:
    """An LLM judge asked about each pair in both orders, so that position bias yields no label.

    Both orders agree: that winner (1 or -1). They disagree, or an order gets no parseable verdict within
    `max_attempts` (unparseable replies alone are asked again, with `retry_sampling`): 0.
    """

    source = "judge"

    def __init__(
        self, backend: Backend, sampling: SamplingParams, retry_sampling: SamplingParams, max_attempts: int
    ):
        self.asker = ParsedAsker(backend, sampling, max_attempts, retry_sampling=retry_sampling)
        self.position_disagreements = 0
        """Pairs whose two orders named different winners."""
        self.failed_pairs = 0
        """Pairs with an order still unparseable after every attempt."""

    @property
    def garbage_replies(self) -> int:
        """Unparseable replies, retries included."""
        return self.asker.garbage_replies

    @property
    def stats(self) -> dict[str, float]:
        """The counters, as metrics."""
        return {
            "judge/garbage_replies": float(self.garbage_replies),
            "judge/position_disagreements": float(self.position_disagreements),
            "judge/failed_pairs": float(self.failed_pairs),
        }

    def label(self, pairs: Sequence[PreferencePair]) -> Iterator[int]:
        conversations = [
            [{"role": "user", "content": judge_prompt(pair, swap)}]
            for pair in pairs
            for swap in (False, True)
        ]
        verdicts = self.asker.ask(conversations, parse_verdict)
        for i in range(len(pairs)):
            yield self._combine(verdicts[2 * i], verdicts[2 * i + 1])

    def _combine(self, in_order: str | None, swapped: str | None) -> int:
        first = {"A": 1, "B": -1}.get(in_order)
        second = {"A": -1, "B": 1}.get(swapped)  # swapped: `a` is Response B
        if first is None or second is None:
            self.failed_pairs += 1
            return 0
        if first != second:
            self.position_disagreements += 1
            return 0
        return first
