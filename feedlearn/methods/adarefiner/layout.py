"""AdaRefiner's run folder and sampling keys. Iteration i is the i-th round of play and adapter refinement
(the paper's stage i); its folders and keys keep the name `stage<i>`, so that existing run folders resume
and sample as they did.

    warmup/                   the adapter's warm start: queries.jsonl, model/
    stage<i>/train/           iteration i's play: queries.jsonl, episodes.jsonl, agent.zip, metrics.json,
                              checkpoints/, done.json (written last)
    stage<i>/sft/             iteration i's refined adapter: model/ (and merged/ where it is merged)
    evaluate/stage<i>/        the test play of iteration i's agent and adapter
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

    def play(self, iteration: int) -> Path:
        """Iteration `iteration`'s play (the `train` stage)."""
        return self.folder(f"stage{iteration}/train")

    def agent(self, iteration: int) -> Path:
        """The PPO agent of iteration `iteration`'s play (the next play and the evaluation reload it)."""
        return self.play(iteration) / "agent.zip"

    def queries(self, iteration: int) -> Path:
        """Iteration `iteration`'s queries with their scores (what the adapter's refinement trains on)."""
        return self.play(iteration) / "queries.jsonl"

    def refine(self, iteration: int) -> Path:
        """Iteration `iteration`'s adapter refinement (the `sft` stage)."""
        return self.folder(f"stage{iteration}/sft")

    def evaluation(self, iteration: int) -> Path:
        """The test play of iteration `iteration`'s agent and adapter."""
        return self.folder(f"evaluate/stage{iteration}")

    def policies(self) -> list[Path]:
        return [*self.numbered("stage", "sft/model"), self.root / "warmup" / "model"]

    def summaries(self, kind: str) -> dict[int, dict]:
        """Each iteration's summary that is there: `kind` "train" (its play) or "evaluate" (its test play)."""
        pattern = "stage*/train" if kind == "train" else "evaluate/stage*"
        found = {}
        for folder in self.root.glob(pattern):
            number = (folder.parent if kind == "train" else folder).name.removeprefix("stage")
            if number.isdigit() and (folder / EVALUATED).exists():
                found[int(number)] = json.loads((folder / EVALUATED).read_text())
        return dict(sorted(found.items()))

    # Sampling keys: a query's or a player's random numbers are a function of its key (and the seed).

    @staticmethod
    def play_key(iteration: int) -> str:
        """The key of iteration `iteration`'s queries and scripted players."""
        return f"stage{iteration}"

    @staticmethod
    def test_key(iteration: int) -> str:
        """The key of the test play's queries and scripted players."""
        return f"test{iteration}"

    WARMUP_KEY = "warmup"
    """The key of the warm start's queries and scripted players."""
