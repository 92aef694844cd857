"""Tokenize SFT examples and preference pairs for completion-only training, and pad them into batches."""

from __future__ import annotations

import logging
from typing import Literal

import torch

from feedlearn.data.records import Completion, PreferencePair, SFTExample
from feedlearn.errors import DataError
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
        rows.append({"input_ids": ids, "labels": labels, "weight": ex.weight, "length": len(ids)})
    report_dropped(dropped, len(examples), "examples", max_length)
    return rows


def report_dropped(dropped: int, total: int, what: str, max_length: int) -> None:
    """Warn about items dropped for length; all of them dropped is an error, not an empty stage."""
    if dropped and dropped == total:
        raise DataError(
            f"all {total} {what} are longer than max_length={max_length} tokens: raise max_length in the "
            "recipe's train settings"
        )
    if dropped:
        log.warning("dropped %d of %d %s longer than max_length=%d", dropped, total, what, max_length)


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


def completion_row(tokenizer, prompt: Completion, response: Completion) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response, and labels masking out the prompt.

    Messages go through the chat template (the response's final assistant turn is trained); raw text is
    tokenized as prompt + response + EOS, the response starting where the tokenization of the prompt
    alone and of the whole diverge (a token can merge across the boundary).
    """
    if isinstance(prompt, str):
        context = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
        start = next((i for i, (x, y) in enumerate(zip(context, ids, strict=False)) if x != y), len(context))
        spans = [(start, len(ids))]
    else:
        ids, spans = completion_spans(tokenizer, [*prompt, *response])
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return ids, labels


def tokenize_pairs(
    pairs: list[PreferencePair],
    tokenizer,
    max_length: int,
    max_prompt_length: int | None = None,
    overlong: Literal["truncate", "drop"] = "truncate",
) -> list[dict]:
    """One row per pair: ids and labels of prompt + a and of prompt + b, the pair's position in `pairs`,
    and whether a side was cut (`truncated`).

    A prompt longer than `max_prompt_length` keeps its last tokens. A side still longer than `max_length`
    is cut at its end (`overlong: truncate`, as TRL's DPOTrainer does), or its pair is dropped (`drop`);
    a pair whose prompt leaves no room for a response token is dropped either way. Warns with the counts.
    """
    rows, dropped, truncated = [], 0, 0
    for index, pair in enumerate(pairs):
        sides, cut = [], False
        for response in (pair.a, pair.b):
            ids, labels = completion_row(tokenizer, pair.prompt, response)
            prompt = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
            if max_prompt_length is not None and prompt > max_prompt_length:
                ids, labels = ids[prompt - max_prompt_length :], labels[prompt - max_prompt_length :]
                cut = True
            if len(ids) > max_length and overlong == "truncate":
                ids, labels = ids[:max_length], labels[:max_length]
                cut = True
            sides.append((ids, labels))
        (a_ids, a_labels), (b_ids, b_labels) = sides
        too_long = max(len(a_ids), len(b_ids)) > max_length
        no_response = any(all(label == IGNORE for label in labels) for _, labels in sides)
        if too_long or no_response:
            dropped += 1
            continue
        truncated += cut
        rows.append(
            {
                "index": index,
                "a": {"input_ids": a_ids, "labels": a_labels},
                "b": {"input_ids": b_ids, "labels": b_labels},
                "length": max(len(a_ids), len(b_ids)),
                "truncated": cut,
            }
        )
    if overlong == "drop":
        report_dropped(dropped, len(pairs), "pairs", max_length)
    elif dropped == len(pairs):
        raise DataError(
            f"every one of the {len(pairs)} pairs has a prompt that fills max_length={max_length} tokens: "
            "raise max_length in the recipe's train settings, or set max_prompt_length below it"
        )
    elif dropped:
        log.warning(
            "dropped %d of %d pairs whose prompt fills max_length=%d", dropped, len(pairs), max_length
        )
    if truncated:
        prompts = (
            f"prompts longer than {max_prompt_length} tokens to their end, " if max_prompt_length else ""
        )
        log.warning(
            "truncated %d of %d pairs (%ssides longer than max_length=%d to their start)",
            truncated,
            len(pairs),
            prompts,
            max_length,
        )
    return rows


def collate_pairs(rows: list[dict], pad_id: int, packed: bool = True) -> dict[str, torch.Tensor]:
    """A batch of B pairs as 2B sequences (the a sides, then the b sides) in one `lay_out` batch, so both
    go through the model in a single forward, and `index` [B], the pairs' positions."""
    batch = lay_out([r["a"] for r in rows] + [r["b"] for r in rows], pad_id, packed)
    batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
    return batch


def lay_out(sequences: list[dict], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Sequences laid into rows as wide as the longest, with `sequence` [rows, width]: which one each token
    belongs to (-1: filler).

    `packed`: several to a row (first fit, longest first), each with its own `position_ids` from 0 and no
    attention mask, so transformers' attention keeps them apart (no compute spent on padding; see
    `scoring.packs_sequences`); the first token of each is never a target (nothing before it in its
    sequence predicts it). Otherwise `collate`'s padded rows, one sequence to a row.
    """
    if not packed:
        batch = collate(sequences, pad_id)
        index = torch.arange(len(sequences))[:, None]
        batch["sequence"] = torch.where(batch["attention_mask"].bool(), index, -1)
        return batch
    width = max(len(s["input_ids"]) for s in sequences)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: -len(sequences[i]["input_ids"])):
        n = len(sequences[i]["input_ids"])
        fits = next((r for r, free in enumerate(room) if free >= n), None)
        if fits is None:
            rows.append([i])
            room.append(width - n)
        else:
            rows[fits].append(i)
            room[fits] -= n
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    sequence = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            n = len(sequences[i]["input_ids"])
            ids[r, start : start + n] = torch.tensor(sequences[i]["input_ids"])
            labels[r, start + 1 : start + n] = torch.tensor(sequences[i]["labels"][1:])
            positions[r, start : start + n] = torch.arange(n)
            sequence[r, start : start + n] = i
            start += n
        positions[r, start:] = torch.arange(width - start)  # filler: a segment of its own
    return {"input_ids": ids, "labels": labels, "sequence": sequence, "position_ids": positions}
