"""Summed log-probs of both responses of each pair, without gradients: reference log-probs and evaluation."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from feedlearn.losses import segment_logprobs
from feedlearn.processes import gathered, process_state
from feedlearn.training.batches import collate_pairs, lay_out

log = logging.getLogger(__name__)


@torch.no_grad()
def pair_logprobs(
    model, rows: list[dict], pad_id: int, batch_size: int, progress: bool = True, desc: str = "scoring"
) -> dict[int, tuple[float, float]]:
    """{pair index: (log p(a | prompt), log p(b | prompt))} for tokenized pair rows, in eval mode.

    Rows are scored in order of length (little padding). Under several processes each scores its own
    share and the results are gathered, so every process returns all of them.
    """
    state = process_state()
    packed = packs_sequences(model)
    was_training = model.training
    model.eval()
    mine = sorted(rows[state.process_index :: state.num_processes], key=lambda r: r["length"])
    scores = []
    bar = tqdm(total=len(rows), desc=desc, disable=not (progress and state.is_main_process))
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        batch = {k: v.to(state.device) for k, v in collate_pairs(chunk, pad_id, packed).items()}
        a, b = sequence_scores(model, batch).chunk(2)
        scores.extend(zip(batch["index"].tolist(), a.tolist(), b.tolist(), strict=True))
        bar.update(len(chunk) * state.num_processes)
    bar.close()
    model.train(was_training)
    scores = gathered(scores)
    return {index: (a, b) for index, a, b in scores}


def sequence_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed completion log-probs [n] of the n sequences of a `lay_out` batch, in their given order."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    return segment_logprobs(logits, batch["labels"], batch["sequence"])


@torch.no_grad()
def packs_sequences(model) -> bool:
    """Whether `model` keeps sequences packed in one row apart, as transformers' models do from their
    position ids: two short sequences sharing a row must score as they do alone. A model whose attention
    ignores them (an architecture with its own masking) is fed padded rows instead, with a warning."""
    sequences = [{"input_ids": ids, "labels": ids} for ids in ([1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12])]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = [
        sequence_scores(model, {k: v.to(device) for k, v in lay_out(sequences, 0, packed).items()})
        for packed in (True, False)
    ]
    model.train(was_training)
    if torch.allclose(*scores, rtol=1e-4, atol=1e-4):
        return True
    log.warning("%s mixes sequences packed in one row: pair batches are padded instead", type(model).__name__)
    return False
