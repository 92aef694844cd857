"""DPO's and Active DPO's run folder.

train/                    reference_logprobs.jsonl, labels.jsonl (every label bought), model/
evaluate/                 reference_logprobs.jsonl, margins.jsonl, metrics.json
replies/                  paid judge replies
"""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.layout import Layout


class DPOLayout(Layout):
    """Where DPO's stages read and write."""

    def train(self) -> Path:
        """The training stage's folder (its model in `model/`)."""
        return self.folder("train")

    def labels(self) -> Path:
        """Every label the labeler gave (the label book), by pair id."""
        return self.train() / "labels.jsonl"

    def evaluation(self) -> Path:
        """The held-out evaluation's folder."""
        return self.folder("evaluate")

    def policies(self) -> list[Path]:
        return [self.root / "train" / "model"]
