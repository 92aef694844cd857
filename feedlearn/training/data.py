"""Tokenize SFT examples for completion-only training, and pad them into batches."""

from __future__ import annotations

import logging

import torch

from feedlearn.data.records import SFTExample
from feedlearn.losses import IGNORE
from feedlearn.models.chat import completion_spans

log = logging.getLogger(__name__)


def tokenize_sft(
    examples: list[SFTExample], tokenizer, max_length: int, all_turns: bool = False
) -> list[dict]:
    """Token ids, labels and weight of each example. Only the final assistant turn is trained, or with
    `all_turns` every assistant turn (a chat of several exchanges packs several examples in one row).

    Examples longer than `max_length` are dropped, with a warning giving their count: cutting them would
    train on a reply whose start or end is missing.
    """
    rows, dropped = [], 0
    for ex in examples:
        ids, spans = completion_spans(tokenizer, ex.messages, all_turns)
        if len(ids) > max_length:
            dropped += 1
            continue
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            labels[start:end] = ids[start:end]
        rows.append({"input_ids": ids, "labels": labels, "weight": ex.weight})
    if dropped:
        log.warning("dropped %d of %d examples longer than max_length=%d", dropped, len(examples), max_length)
    return rows


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest row; padding is masked out of attention and of the loss."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        attention[i, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attention}
    if "weight" in rows[0]:
        batch["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
    return batch
