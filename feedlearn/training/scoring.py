"""Summed log-probs of both responses of each pair, without gradients: reference log-probs and evaluation."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from feedlearn.losses import sequence_logprobs
from feedlearn.processes import gathered, process_state
from feedlearn.training.batches import collate_pairs


@torch.no_grad()
def pair_logprobs(
    model, rows: list[dict], pad_id: int, batch_size: int, progress: bool = True, desc: str = "scoring"
) -> dict[int, tuple[float, float]]:
    """{pair index: (log p(a | prompt), log p(b | prompt))} for tokenized pair rows, in eval mode.

    Rows are scored in order of length (little padding). Under several processes each scores its own
    share and the results are gathered, so every process returns all of them.
    """
    state = process_state()
    was_training = model.training
    model.eval()
    mine = sorted(rows[state.process_index :: state.num_processes], key=lambda r: r["length"])
    scores = []
    bar = tqdm(total=len(rows), desc=desc, disable=not (progress and state.is_main_process))
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        batch = {k: v.to(state.device) for k, v in collate_pairs(chunk, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        a, b = sequence_logprobs(logits, batch["labels"]).chunk(2)
        scores.extend(zip(batch["index"].tolist(), a.tolist(), b.tolist(), strict=True))
        bar.update(len(chunk) * state.num_processes)
    bar.close()
    model.train(was_training)
    scores = gathered(scores)
    return {index: (a, b) for index, a, b in scores}
