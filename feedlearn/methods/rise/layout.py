"""RISE's run folder and sampling keys.

sft/                      the warm start: model/
iter<i>/collect/          episodes.jsonl (iteration i's rollouts)
iter<i>/convert/          examples.jsonl (their weighted SFT examples)
iter<i>/train/            model/, checkpoints/ (reward-weighted regression)
evaluate/base/            the base policy's evaluation (after the warm start, if any)
evaluate/iter<i>/         the evaluation after iteration i: metrics.json, outcomes.json, episodes.jsonl
replies/                  paid teacher replies
"""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.layout import Layout


class RiseLayout(Layout):
    """Where RISE's stages read and write; iteration 0 stands for the base policy."""

    def sft(self) -> Path:
        """The warm start's stage folder."""
        return self.folder("sft")

    def collect(self, iteration: int) -> Path:
        """Iteration `iteration`'s rollouts' folder."""
        return self.folder(f"iter{iteration}/collect")

    def episodes(self, iteration: int) -> Path:
        """Iteration `iteration`'s rollouts."""
        return self.collect(iteration) / "episodes.jsonl"

    def examples(self, iteration: int) -> Path:
        """Iteration `iteration`'s weighted SFT examples."""
        return self.folder(f"iter{iteration}/convert") / "examples.jsonl"

    def train(self, iteration: int) -> Path:
        """Iteration `iteration`'s training folder (its model in `model/`)."""
        return self.folder(f"iter{iteration}/train")

    def evaluation(self, iteration: int) -> Path:
        """The folder of the evaluation after `iteration` rounds (0: the base)."""
        return self.folder(f"evaluate/iter{iteration}" if iteration else "evaluate/base")

    def policies(self) -> list[Path]:
        return [*self.numbered("iter", "train/model"), self.root / "sft" / "model"]

    # Sampling keys: a sample's random numbers are a function of its key (and the recipe's seed).

    @staticmethod
    def collect_key(iteration: int, problem: str, turn: int) -> str:
        """A collection turn's samples."""
        return f"collect/iter{iteration}/{problem}/turn{turn}"

    @staticmethod
    def redraw_key(key: str, redraw: int) -> str:
        """The `redraw`-th new draw of samples that all came out degenerate."""
        return f"{key}/redraw{redraw}"

    @staticmethod
    def test_key(problem: str, turn: int) -> str:
        """A test turn's sample: without the iteration, so every policy of a run draws the same random
        numbers on a test problem (common random numbers make their difference less noisy)."""
        return f"evaluate/{problem}/turn{turn}"

    @staticmethod
    def parallel_key(problem: str) -> str:
        """A test problem's parallel first-turn samples."""
        return f"evaluate/{problem}/parallel"
