"""Typed records shared by every method: chat messages, weighted SFT examples, multi-turn episodes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


Completion = str | list[Message]
"""Raw text (the standard form) or assistant messages (the conversational form)."""


class PreferencePair(Record):
    """Two responses to one prompt, and which is preferred when known.

    The standard form holds raw text (prompt + response is the sequence the model sees, EOS appended);
    the conversational form holds messages rendered with the chat template. Labeled data (chosen /
    rejected) becomes `a` = chosen, `b` = rejected, `label` = 1.
    """

    id: str = Field(description="Stable id; the label cache and reference log-probs are keyed by it.")
    prompt: Completion = Field(description="The context: raw text, or the messages before the responses.")
    a: Completion = Field(description="First response.")
    b: Completion = Field(description="Second response.")
    label: Literal[1, -1] | None = Field(
        default=None, description="1: `a` is preferred, -1: `b` is, None: unlabeled."
    )

    @model_validator(mode="after")
    def _one_form(self):
        forms = {isinstance(x, str) for x in (self.prompt, self.a, self.b)}
        if len(forms) > 1:
            raise ValueError("prompt, a and b must all be text or all be messages, not a mix")
        for name in ("a", "b"):
            value = getattr(self, name)
            if not isinstance(value, str) and (not value or value[-1].role != "assistant"):
                raise ValueError(f"response '{name}' must end with an assistant message")
        return self

    @property
    def conversational(self) -> bool:
        """Whether the pair is in messages form (rendered with the chat template)."""
        return not isinstance(self.prompt, str)


class LabelRecord(Record):
    """One answer of a preference labeler, cached so that it is never paid for twice."""

    id: str = Field(description="The pair's id.")
    label: Literal[1, 0, -1] = Field(
        description="1: `a` preferred, -1: `b` preferred, 0: no usable preference."
    )
    source: str = Field(description="The labeler that answered: 'dataset', 'judge', 'human'.")
