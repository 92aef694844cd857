"""Reflect-RL's run folder and keys.

repo/                     AutoExplore's synthetic mini repository (when the recipe gives no root)
teacher/                  tasks.jsonl, steps.jsonl (the teacher's trajectories), its reflections
sft/reflector/            the reflection model: model/
sft/policy/               the policy after SFT: model/
rl/                       the policy after RL: model/ (done.json last), episodes.jsonl, checkpoints/
evaluate/sft/             the SFT policy's test episodes
evaluate/rl/              the RL policy's test episodes
evaluate/remote/          a chat model's test episodes (`evaluate-remote`)
replies/                  paid teacher and remote replies
"""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.layout import Layout


class ReflectRLLayout(Layout):
    """Where Reflect-RL's stages read and write."""

    def repo(self) -> Path:
        """AutoExplore's synthetic mini repository."""
        return self.folder("repo")

    def teacher(self) -> Path:
        """The teacher's tasks, trajectories and reflections."""
        return self.folder("teacher")

    def reflector(self) -> Path:
        """The reflection model's SFT."""
        return self.folder("sft/reflector")

    def sft_policy(self) -> Path:
        """The policy's SFT."""
        return self.folder("sft/policy")

    def rl(self) -> Path:
        """The policy's RL."""
        return self.folder("rl")

    def policy(self, after: str) -> Path:
        """The policy's model folder after `after` ("sft" or "rl")."""
        return (self.rl() if after == "rl" else self.sft_policy()) / "model"

    def evaluation(self, name: str) -> Path:
        """An evaluation's folder: "sft", "rl" (the policy after it) or "remote"."""
        return self.folder(f"evaluate/{name}")

    def policies(self) -> list[Path]:
        return [self.root / "rl" / "model", self.root / "sft" / "policy" / "model"]

    @staticmethod
    def teacher_key(level: int) -> str:
        """The key of the teacher's episodes on the curriculum's `level`-th level."""
        return f"level{level}"
