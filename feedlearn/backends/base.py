"""The backend interface shared by local models and remote OpenAI-compatible endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
