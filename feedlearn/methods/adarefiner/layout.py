"""AdaRefiner's run folder and sampling keys (stage i: the i-th round of play and adapter refinement).

warmup/                   the adapter's warm start: queries.jsonl, model/
stage<i>/train/           stage i's play: queries.jsonl, episodes.jsonl, agent.zip, metrics.json,
                          checkpoints/, done.json (written last)
stage<i>/sft/             stage i's refined adapter: model/ (and merged/ where it is merged)
evaluate/stage<i>/        the test play of stage i's agent and adapter
replies/                  paid decision-model replies
"""

from __future__ import annotations

import json
from pathlib import Path

from feedlearn.data.store import EVALUATED
from feedlearn.methods.layout import Layout


class AdaRefinerLayout(Layout):
    """Where AdaRefiner's stages read and write."""

    def warmup(self) -> Path:
        """The adapter's warm start."""
        return self.folder("warmup")

    def play(self, stage: int) -> Path:
        """Stage `stage`'s play (the `train` stage)."""
        return self.folder(f"stage{stage}/train")

    def agent(self, stage: int) -> Path:
        """The PPO agent stage `stage`'s play saved (the next stage and the evaluation reload it)."""
        return self.play(stage) / "agent.zip"

    def queries(self, stage: int) -> Path:
        """Stage `stage`'s queries with their scores (what the adapter's refinement trains on)."""
        return self.play(stage) / "queries.jsonl"

    def refine(self, stage: int) -> Path:
        """Stage `stage`'s adapter refinement (the `sft` stage)."""
        return self.folder(f"stage{stage}/sft")

    def evaluation(self, stage: int) -> Path:
        """The test play of stage `stage`'s agent and adapter."""
        return self.folder(f"evaluate/stage{stage}")

    def policies(self) -> list[Path]:
        return [*self.numbered("stage", "sft/model"), self.root / "warmup" / "model"]

    def stage_metrics(self, kind: str) -> dict[int, dict]:
        """Each stage's summary that is there: `kind` "train" (its play) or "evaluate" (its test play)."""
        pattern = "stage*/train" if kind == "train" else "evaluate/stage*"
        found = {}
        for folder in self.root.glob(pattern):
            number = (folder.parent if kind == "train" else folder).name.removeprefix("stage")
            if number.isdigit() and (folder / EVALUATED).exists():
                found[int(number)] = json.loads((folder / EVALUATED).read_text())
        return dict(sorted(found.items()))

    # Sampling keys: a query's or a player's random numbers are a function of its key (and the seed).

    @staticmethod
    def play_key(stage: int) -> str:
        """The key of stage `stage`'s queries and scripted players."""
        return f"stage{stage}"

    @staticmethod
    def test_key(stage: int) -> str:
        """The key of the test play's queries and scripted players."""
        return f"test{stage}"

    WARMUP_KEY = "warmup"
    """The key of the warm start's queries and scripted players."""
