"""AdaRefiner's feedback: how well the agent's recent actions match the instruction it was given.

l = sigmoid(10 (cos(E(actions), E(sub-goals)) - 0.1)), E a sentence embedder behind the `Embedder`
interface: a sentence-transformers model (the paper's paraphrase-MiniLM-L6-v2, by hub id or local folder;
the optional extra `feedlearn[embed]`), or `ConceptEmbedder`, the offline default, which needs no
download.

`ConceptEmbedder` is a bag of Crafter concepts: every word is mapped to the thing it is about ("chop",
"mine", "attack", "drink" and the action "do" all mean doing; "tree" and "wood" are one concept; "sapling"
is grass, where saplings come from), moves and noops count little, other words not at all. For it to see
what the agent did, actions are described by their effect (`step_text(..., "effects")`: "do tree", not
just "do"; a make or place action that made or placed nothing is a noop), so an agent chopping trees
under "chop tree" scores high and one acting at random scores low.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from feedlearn.errors import ConfigError

ActionText = Literal["names", "effects"]


class Embedder(Protocol):
    """Texts in, one unit-norm row per text out (a text with nothing to embed gives a zero row)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """An array of shape (len(texts), dim)."""
        ...


_CONCEPTS: dict[str, tuple[str, ...]] = {
    "do": ("do", "chop", "mine", "attack", "drink", "eat", "collect", "defeat", "hit"),
    "tree": ("tree", "trees", "wood", "deforestation"),
    "water": ("water",),
    "cow": ("cow", "cows"),
    "grass": ("grass", "sapling", "saplings", "gardening"),
    "plant": ("plant", "plants", "vegetarianism"),
    "stone": ("stone",),
    "coal": ("coal",),
    "iron": ("iron",),
    "diamond": ("diamond",),
    "sleep": ("sleep", "sleeping", "wake", "rest"),
    "table": ("table", "workshop", "crafting"),
    "furnace": ("furnace",),
    "place": ("place", "placing"),
    "make": ("make", "craft"),
    "pickaxe": ("pickaxe",),
    "sword": ("sword",),
    "zombie": ("zombie",),
    "skeleton": ("skeleton",),
    "move": ("move", "noop", "explore", "walk"),
}
_WEIGHTS = {"move": 0.1, "do": 0.5}
"""Concepts that say little about which sub-goal is pursued count less (the rest weigh 1)."""


class ConceptEmbedder:
    """The offline embedder: a weighted bag of Crafter concepts, normalized (see the module's text)."""

    def __init__(self):
        self.names = list(_CONCEPTS)
        self.dim = len(self.names)
        self._index = {word: self.names.index(c) for c, words in _CONCEPTS.items() for word in words}
        self._weights = np.array([_WEIGHTS.get(c, 1.0) for c in self.names], dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if word in self._index:
                    out[row, self._index[word]] += 1.0
        out *= self._weights
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


class SentenceTransformerEmbedder:
    """A sentence-transformers model by hub id or local folder (the paper: paraphrase-MiniLM-L6-v2)."""

    def __init__(self, model: str, device: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "embedder 'sentence-transformers' needs the package: pip install 'feedlearn[embed]'"
            ) from None
        try:
            self.model = SentenceTransformer(model, device=device)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load embedder '{model}': {str(e).splitlines()[0]} (give a model folder, or a hub id "
                "with network access)"
            ) from None
        self.dim = self.dimension(self.model)

    @staticmethod
    def dimension(model) -> int:
        """The embedding size of a sentence-transformers model."""
        dimension = getattr(model, "get_embedding_dimension", None)  # the name since version 6
        return (dimension or model.get_sentence_embedding_dimension)()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True).astype(
            np.float32
        )


def step_text(action: str, faced: str | None, changed: bool, mode: ActionText) -> str:
    """One action as the embedder reads it: its name (the paper), or with `effects` what it did: `do`
    followed by what it was done to ("do tree"), a place or make action by its name only if it changed
    the inventory (else "noop": a table made without wood did nothing)."""
    if mode == "names":
        return action
    if action == "do":
        return f"do {faced}" if faced else action
    if action.startswith(("place_", "make_")) and not changed:
        return "noop"
    return action


def comprehension_scores(
    embedder: Embedder, actions: Sequence[str], instructions: Sequence[str]
) -> list[float]:
    """l = sigmoid(10 (cos(E(actions), E(instruction)) - 0.1)) for each pair; a text with nothing to embed
    has cosine 0 with everything."""
    if not actions:
        return []
    a = embedder.encode(actions)
    g = embedder.encode(instructions)
    cos = (a * g).sum(axis=1)
    return [1.0 / (1.0 + math.exp(-10.0 * (float(c) - 0.1))) for c in cos]
