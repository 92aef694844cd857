"""C3PO's run folder and sampling keys (one set of folders per feedback, by its short id).

sft/                          a tiny model's warm start: model/
<feedback>/sample/            prompts.jsonl, teacher_prompts.jsonl, samples.jsonl
<feedback>/train/<method>/    one adapter per training method: model/
combined/combined/            the C3PO adapters of every feedback in one (done.json last)
evaluate/<feedback>/          metrics.json, responses.json
replies/                      paid teacher and judge replies
"""

from __future__ import annotations

from pathlib import Path

from feedlearn.data.store import DONE, is_done
from feedlearn.errors import ConfigError
from feedlearn.methods.layout import Layout


class C3POLayout(Layout):
    """Where C3PO's stages read and write."""

    def sft(self) -> Path:
        """A tiny model's warm start."""
        return self.folder("sft")

    def sample(self, feedback: str) -> Path:
        """A feedback's prompts and samples."""
        return self.folder(f"{feedback}/sample")

    def samples(self, feedback: str) -> Path:
        """A feedback's samples."""
        return self.sample(feedback) / "samples.jsonl"

    def train(self, feedback: str, method: str) -> Path:
        """The training of a feedback's adapter by `method` (its adapter in `model/`)."""
        return self.folder(f"{feedback}/train/{method}")

    def combined(self) -> Path:
        """The combined adapter's folder (peft saves an adapter not named 'default' in a folder of its name
        inside the folder it is given: `combined/`); not created here."""
        return self.root / "combined" / "combined"

    def evaluation(self, feedback: str) -> Path:
        """A feedback's evaluation."""
        return self.folder(f"evaluate/{feedback}")

    def policies(self) -> list[Path]:
        adapters = sorted(p.parent for p in self.root.glob(f"*/train/c3po/model/{DONE}"))
        if len(adapters) > 1 and not is_done(self.combined()):
            raise ConfigError(
                f"run {self.root} trained {len(adapters)} C3PO adapters: run `feedlearn c3po combine` to "
                "serve them as one, or pass one adapter folder"
            )
        return [self.combined(), *adapters]

    @staticmethod
    def sample_key(feedback: str, prompt: str, kind: str) -> str:
        """The key of a prompt's `kind` of response (baseline, in-context, cot, revised)."""
        return f"{feedback}/{prompt}/{kind}"
