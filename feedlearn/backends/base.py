"""The backend interface shared by local models and remote OpenAI-compatible endpoints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Conversation = Sequence[dict[str, str]]
"""A chat as a list of `{"role": ..., "content": ...}` dicts, the form every chat API takes."""


def conversation_key(conversation: Conversation) -> str:
    """A key naming a conversation by its content: what a backend seeds its samples from by default."""
    text = json.dumps([[m["role"], m["content"]] for m in conversation], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SamplingParams(BaseModel):
    """How to sample completions."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=256, gt=0, description="Longest completion, in tokens.")


class Backend(Protocol):
    """Anything that turns conversations into assistant replies."""

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingParams,
        keys: Sequence[str] | None = None,
    ) -> list[list[str]]:
        """Return, for each conversation, `n` sampled assistant replies (in order).

        `keys` name each conversation's record (default: `conversation_key`); a conversation's samples are
        drawn from a seed made of the backend's seed and its key, so they do not depend on the other
        conversations of the call or on earlier calls.
        """
        ...


T = TypeVar("T")


@dataclass
class ParsedAsker:
    """Asks a backend questions whose replies are parsed as data (never evaluated): a reply whose parse is
    empty (None, "", []) is asked again, only that one, up to `max_attempts` asks in all, then given up."""

    backend: Backend
    sampling: SamplingParams
    max_attempts: int = 3
    retry_sampling: SamplingParams | None = None
    """Sampling of the asks after the first (None: `sampling`), e.g. a hotter retry after a greedy ask."""
    garbage_replies: int = field(default=0, init=False)
    """Replies whose parse was empty, retries included."""
    skipped: int = field(default=0, init=False)
    """Questions still without a usable reply after every attempt."""

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def ask(
        self,
        conversations: Sequence[Conversation],
        parse: Callable[[str], T | None] | Sequence[Callable[[str], T | None]],
    ) -> list[T | None]:
        """The parse of one reply per conversation (None where every attempt was garbage); `parse` is one
        parser for all, or one per conversation. Each attempt at a question is seeded by the question and
        the attempt's number, so a resumed stage asks exactly what an uninterrupted one would."""
        parsers = parse if isinstance(parse, Sequence) else [parse] * len(conversations)
        answers: list[T | None] = [None] * len(conversations)
        pending = list(range(len(conversations)))
        for attempt in range(self.max_attempts):
            if not pending:
                break
            replies = self.backend.generate(
                [conversations[i] for i in pending],
                n=1,
                sampling=self.sampling
                if attempt == 0 or self.retry_sampling is None
                else self.retry_sampling,
                keys=attempt_keys([conversations[i] for i in pending], attempt),
            )
            for i, (reply,) in zip(pending, replies, strict=True):
                answers[i] = parsers[i](reply)
            pending = [i for i in pending if not answers[i]]
            self.garbage_replies += len(pending)
        self.skipped += len(pending)
        return answers


def attempt_keys(conversations: Sequence[Conversation], attempt: int) -> list[str]:
    """The keys of a question asked again: its content and the attempt's number (0 for the first ask)."""
    return [f"{conversation_key(c)}/attempt-{attempt}" for c in conversations]
