"""Preference labelers: the dataset's own labels (a simulated oracle), an LLM judge (`judges.pairwise`),
a human; their settings and `build_labeler`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal, Protocol, TextIO

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.backends.openai_compat import OpenAIBackend, OpenAIBackendConfig
from feedlearn.data.records import PreferencePair
from feedlearn.errors import DataError, FeedlearnError
from feedlearn.judges.pairwise import JudgeLabeler, render
from feedlearn.models.loading import ModelSettings, load_policy


class LabelingStopped(FeedlearnError):
    """The labeler stopped (a human quit); the answers given so far are saved."""


class Labeler(Protocol):
    """Anything that says which of two responses is better."""

    source: str
    """Name recorded with each label: 'dataset', 'judge', 'human'."""

    def label(self, pairs: Sequence[PreferencePair]) -> Iterator[int]:
        """Yield, for each pair in order, 1 (`a` preferred), -1 (`b` preferred) or 0 (no usable preference).

        The caller saves each label as soon as it is yielded, so a labeler that stops midway loses nothing.
        """
        ...


# ---- dataset ------------------------------------------------------------------------------------------


class DatasetLabeler:
    """Answers with each pair's own label: a simulated oracle over chosen/rejected data."""

    source = "dataset"

    def label(self, pairs: Sequence[PreferencePair]) -> Iterator[int]:
        for pair in pairs:
            if pair.label is None:
                raise DataError(
                    f"pair '{pair.id}' has no label: "
                    "the dataset labeler needs labeled pairs (chosen/rejected)"
                )
            yield pair.label


# ---- human --------------------------------------------------------------------------------------------

HUMAN_QUESTION = "Which is better? [a/b/t=tie/q=quit]: "
HUMAN_ANSWERS = {"a": 1, "b": -1, "t": 0}


class HumanLabeler:
    """Shows each pair on `stdout` (default: the terminal) and reads the choice from `stdin`."""

    source = "human"

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.stdin = stdin
        self.stdout = stdout

    def label(self, pairs: Sequence[PreferencePair]) -> Iterator[int]:
        stdin, stdout = self.stdin or sys.stdin, self.stdout or sys.stdout
        for number, pair in enumerate(pairs, start=1):
            stdout.write(
                f"\n===== Pair {number} of {len(pairs)} (id {pair.id}) =====\n"
                f"----- Prompt -----\n{render(pair.prompt)}\n"
                f"----- Response A -----\n{render(pair.a)}\n"
                f"----- Response B -----\n{render(pair.b)}\n"
                "--------------------\n"
            )
            yield self._ask(stdin, stdout)

    def _ask(self, stdin: TextIO, stdout: TextIO) -> int:
        while True:
            stdout.write(HUMAN_QUESTION)
            stdout.flush()
            line = stdin.readline()
            answer = line.strip().lower()
            if not line or answer == "q":
                raise LabelingStopped(
                    "labeling stopped: the answers given so far are saved; "
                    "run the same command again to resume"
                )
            if answer in HUMAN_ANSWERS:
                return HUMAN_ANSWERS[answer]
            stdout.write("Please type a (A is better), b (B is better), t (tie) or q (quit).\n")


# ---- settings -----------------------------------------------------------------------------------------


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetLabelerSettings(_Settings):
    """Label with the dataset's own preferences (chosen/rejected): a simulated oracle."""

    kind: Literal["dataset"] = Field(default="dataset", description="Which labeler: the dataset's labels.")


class JudgeLabelerSettings(_Settings):
    """Label with an LLM judge, remote (OpenAI-compatible) or local, asked about both response orders."""

    kind: Literal["judge"] = Field(default="judge", description="Which labeler: an LLM judge.")
    openai: OpenAIBackendConfig | None = Field(
        default=None, description="A judge behind an OpenAI-compatible endpoint; give this or `local`."
    )
    local: ModelSettings | None = Field(
        default=None, description="A judge model loaded in this process; give this or `openai`."
    )
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature of the first ask.")
    retry_temperature: float = Field(
        default=1.0, ge=0.0, description="Sampling temperature when an unparseable reply is asked again."
    )
    max_new_tokens: int = Field(default=16, gt=0, description="Longest judge reply, in tokens.")
    max_attempts: int = Field(
        default=3, ge=1, description="Asks per pair order, first included, before giving up (label 0)."
    )
    batch_size: int = Field(default=16, gt=0, description="Sequences per generate call of a local judge.")

    @model_validator(mode="after")
    def _one_backend(self):
        if (self.openai is None) == (self.local is None):
            raise ValueError("give exactly one of 'openai' or 'local'")
        return self


class HumanLabelerSettings(_Settings):
    """Label by asking a person at the terminal; quitting keeps the answers given so far."""

    kind: Literal["human"] = Field(default="human", description="Which labeler: a human at the terminal.")


LabelerSettings = Annotated[
    DatasetLabelerSettings | JudgeLabelerSettings | HumanLabelerSettings,
    Field(discriminator="kind"),
]
"""The settings of any labeler, told apart by `kind`."""


def build_labeler(settings: LabelerSettings, seed: int = 0, replies: Path | None = None) -> Labeler:
    """The labeler that `settings` describes; a local judge is loaded now, seeded with `seed`; a remote
    judge's paid replies are kept in `replies`."""
    if isinstance(settings, DatasetLabelerSettings):
        return DatasetLabeler()
    if isinstance(settings, HumanLabelerSettings):
        return HumanLabeler()
    if settings.local is not None:
        model, tokenizer = load_policy(settings.local)
        backend = LocalBackend(model, tokenizer, settings.batch_size, seed=seed)
    else:
        backend = OpenAIBackend(settings.openai, seed=seed, replies=replies)
    return JudgeLabeler(
        backend,
        SamplingParams(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens),
        SamplingParams(temperature=settings.retry_temperature, max_new_tokens=settings.max_new_tokens),
        settings.max_attempts,
    )
