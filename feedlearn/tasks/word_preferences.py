"""A preference task with a hidden rule, for offline DPO and Active DPO runs on tiny models.

Each prompt names a topic; a response is a few words. Every (topic, word) has a hidden value drawn from a
seeded normal distribution, and the response with the higher total value is preferred. A model must learn
these values from preference labels alone, so accuracy grows with the labels it gets: the setting where
choosing which labels to ask for matters. A pair is a test pair when a hash of its topic and word sets falls
in the first `TEST_SHARE` of the range, so train and test pairs never coincide.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from feedlearn.data.records import PreferencePair
from feedlearn.seeds import derive_seed, held_out

TEST_SHARE = 0.2
"""Share of all possible pairs that only test sets draw."""

TOPICS = ["ocean", "forest", "city", "desert", "kitchen", "garden", "winter", "music"]
WORDS = str.split(
    "amber blue bright calm cold coral dark deep dry dust echo fern fire frost gold green gray hum iron "
    "jade kind leaf light loud mint mist moss night oak pale pine rain red rose salt sand silk slow "
    "smoke snow soft stone storm sun sweet tide warm wave wild wind"
)


MADE_UP = [
    w
    for w in (
        a + b
        for a in (c + v for c in "bdfgklmnprstvz" for v in "aeiou")
        for b in ("ka", "lo", "mi", "nu", "re", "so", "ti", "ve")
    )
    if w not in WORDS
]
"""Made-up words (two syllables), for tasks of more than the 50 WORDS."""


class WordPreferenceTask(BaseModel):
    """The hidden rule and the shape of the generated pairs."""

    model_config = ConfigDict(extra="forbid")

    rule_seed: int = Field(
        default=0, description="Draws the hidden values; keep it equal for train and eval."
    )
    topics: int = Field(default=8, ge=1, le=len(TOPICS), description="How many topics prompts name.")
    words: int = Field(
        default=len(WORDS),
        ge=8,
        le=len(WORDS) + len(MADE_UP),
        description="How many words responses draw from: the 50 of WORDS, then made-up two-syllable ones "
        "(more words: more hidden values to learn from the same labels, a harder task).",
    )
    response_words: int = Field(default=4, ge=1, description="Words per response.")
    min_gap: float = Field(
        default=0.25, ge=0, description="Pairs whose values differ by less are not generated (no ties)."
    )

    def vocabulary(self) -> list[str]:
        """The words responses draw from."""
        return (WORDS + MADE_UP)[: self.words]

    def values(self) -> dict[tuple[str, str], float]:
        """The hidden value of each (topic, word)."""
        rng = random.Random(self.rule_seed)
        return {(t, w): rng.gauss(0.0, 1.0) for t in TOPICS[: self.topics] for w in self.vocabulary()}

    def prompt(self, topic: str) -> str:
        """The prompt text naming `topic`."""
        return f"Topic: {topic}. Words:"

    def score(self, topic: str, response: str) -> float:
        """Total hidden value of a response's words (unknown words count 0)."""
        values = self.values()
        return sum(values.get((topic, w), 0.0) for w in response.split())

    def pairs(
        self, n: int, seed: int, prefix: str = "pair", split: Literal["train", "test"] = "train"
    ) -> list[PreferencePair]:
        """`n` labeled pairs of `split` (a = the preferred response, label 1), a function of `seed` and the
        rule."""
        rng = random.Random(derive_seed(seed, "data", "word-pairs", self.rule_seed))
        values, topics, words = self.values(), TOPICS[: self.topics], self.vocabulary()
        out = []
        while len(out) < n:
            topic = rng.choice(topics)
            a, b = (rng.sample(words, self.response_words) for _ in range(2))
            gap = sum(values[topic, w] for w in a) - sum(values[topic, w] for w in b)
            content = "|".join([topic, *sorted(" ".join(sorted(side)) for side in (a, b))])
            if abs(gap) < self.min_gap or held_out(content, TEST_SHARE) != (split == "test"):
                continue
            chosen, rejected = (a, b) if gap > 0 else (b, a)
            text = f"{topic}|{' '.join(chosen)}|{' '.join(rejected)}"
            digest = hashlib.sha1(text.encode()).hexdigest()[:10]
            out.append(
                PreferencePair(
                    id=f"{prefix}-{len(out)}-{digest}",
                    prompt=self.prompt(topic),
                    a=" " + " ".join(chosen),
                    b=" " + " ".join(rejected),
                    label=1,
                )
            )
        return out
