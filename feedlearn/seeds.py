"""Every seed of feedlearn comes from `derive_seed`: the recipe's seed, a purpose, and keys.

Each purpose owns its own range of seeds (the top bits of a 63-bit value), so seeds of two purposes never
meet, whatever the recipe's seed and keys: the episodes a policy is tested on are disjoint from those it
trains on, or that its teacher plays, by construction. Within a purpose, the keys (an iteration, an
episode's index, a record's id) pick the seed through a hash, so a record's seed depends on what it is, not
on how many draws came before it: a resumed run, or several processes, draw what one uninterrupted run does.

`held_out` splits generated data by content the same way: an item is a test item when a hash of its text
falls in the first `share` of the range, so train and test sets drawn from one generator never share an item.
"""

from __future__ import annotations

import hashlib
from typing import Literal, get_args

Purpose = Literal["train", "test", "teacher", "data", "sampling", "init", "order"]
"""train: episodes a policy trains on; test: held-out episodes; teacher: teacher data; data: generated
data sets and splits; sampling: model samples and sampled actions; init: initial weights (tiny models,
LoRA adapters, critic heads); order: data order and dropout in training."""
PURPOSES: tuple[str, ...] = get_args(Purpose)
KEY_BITS = 58
"""Bits of a seed left to the hash; the purpose's index sits above them (and the seed stays below 2**63)."""


def _digest(*parts: object) -> int:
    text = "\0".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def derive_seed(seed: int, purpose: Purpose, *keys: object) -> int:
    """The seed of `purpose` for `keys` (str() of each is hashed), given the recipe's `seed`."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}: choose from {', '.join(PURPOSES)}")
    return (PURPOSES.index(purpose) << KEY_BITS) | (_digest(purpose, seed, *keys) >> (64 - KEY_BITS))


def purpose_of(seed: int) -> str:
    """The purpose a seed made by `derive_seed` belongs to."""
    return PURPOSES[seed >> KEY_BITS]


def held_out(text: str, share: float) -> bool:
    """Whether an item with this text belongs to the test split holding `share` of all items."""
    return _digest("held-out", text) / 2**64 < share
