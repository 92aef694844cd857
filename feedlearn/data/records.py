"""Typed records shared by every method: chat messages, weighted SFT examples, multi-turn episodes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """Base of all records: unknown fields are errors, so a typo in a data file is caught."""

    model_config = ConfigDict(extra="forbid")


class Message(Record):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


class SFTExample(Record):
    """A conversation whose final assistant message is trained on, scaled by `weight`."""

    id: str = Field(description="Stable id; a stage skips ids already written when it resumes.")
    messages: list[Message] = Field(description="Context, ending with the assistant message to train on.")
    weight: float = Field(default=1.0, ge=0.0, description="Multiplies this example's token-mean loss.")


class Turn(Record):
    """One step of an episode: the action taken, its reward, and the feedback message that followed."""

    action: str = Field(description="The assistant's text for this turn.")
    reward: float
    feedback: str | None = Field(default=None, description="The next user message, if the episode went on.")
    answer: str | None = Field(default=None, description="The answer parsed from the action, if any.")
    sample_rewards: list[float] = Field(
        default_factory=list,
        description="Rewards of this turn's samples (best-of-n), degenerate ones dropped.",
    )


class Episode(Record):
    """A multi-turn episode: the opening conversation, then one `Turn` per attempt."""

    id: str
    task_id: str = Field(description="The problem or environment task this episode attempts.")
    prompt: list[Message] = Field(description="The conversation before the first action.")
    turns: list[Turn] = Field(default_factory=list)

    def conversation(self, upto: int | None = None) -> list[Message]:
        """The dialogue of the first `upto` turns (all by default): prompt, then action and feedback pairs."""
        messages = list(self.prompt)
        for turn in self.turns[:upto]:
            messages.append(Message(role="assistant", content=turn.action))
            if turn.feedback is not None:
                messages.append(Message(role="user", content=turn.feedback))
        return messages
