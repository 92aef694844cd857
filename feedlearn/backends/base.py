"""The backend interface shared by local models and remote OpenAI-compatible endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Conversation = Sequence[dict[str, str]]
"""A chat as a list of `{"role": ..., "content": ...}` dicts, the form every chat API takes."""


class SamplingParams(BaseModel):
    """How to sample completions."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=256, gt=0, description="Longest completion, in tokens.")


class Backend(Protocol):
    """Anything that turns conversations into assistant replies."""

    def generate(
        self, conversations: Sequence[Conversation], n: int, sampling: SamplingParams
    ) -> list[list[str]]:
        """Return, for each conversation, `n` sampled assistant replies (in order)."""
        ...


T = TypeVar("T")


@dataclass
class ParsedAsker:
    """Asks a backend questions whose replies are parsed as data (never evaluated): a reply whose parse is
    empty (None, "", []) is asked again, only that one, up to `max_attempts` asks in all, then given up."""

    backend: Backend
    sampling: SamplingParams
    max_attempts: int = 3
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
        parser for all, or one per conversation."""
        parsers = parse if isinstance(parse, Sequence) else [parse] * len(conversations)
        answers: list[T | None] = [None] * len(conversations)
        pending = list(range(len(conversations)))
        for _ in range(self.max_attempts):
            if not pending:
                break
            replies = self.backend.generate([conversations[i] for i in pending], n=1, sampling=self.sampling)
            for i, (reply,) in zip(pending, replies, strict=True):
                answers[i] = parsers[i](reply)
            pending = [i for i in pending if not answers[i]]
            self.garbage_replies += len(pending)
        self.skipped += len(pending)
        return answers
