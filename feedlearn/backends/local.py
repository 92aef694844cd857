"""Local generation with transformers: batched, left-padded, KV-cached, n samples per conversation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from feedlearn.backends.base import Conversation, SamplingParams
from feedlearn.models.chat import prompt_ids


class LocalBackend:
    """Generate with an in-memory transformers model.

    Conversations are sorted by length so each batch wastes little padding; sampling is seeded per call, so
    the same calls in the same order give the same replies.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, seed: int = 0, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self._calls = 0

    @torch.no_grad()
    def generate(
        self, conversations: Sequence[Conversation], n: int, sampling: SamplingParams
    ) -> list[list[str]]:
        """For each conversation, `n` replies decoded without special tokens (greedy: n copies of one)."""
        self._calls += 1
        torch.manual_seed(self.seed * 1_000_003 + self._calls)
        encoded = [prompt_ids(self.tokenizer, c) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        greedy = sampling.temperature == 0
        draws = 1 if greedy else n
        per_batch = max(1, self.batch_size // draws)
        replies: list[list[str]] = [[] for _ in encoded]
        was_training = self.model.training
        self.model.eval()
        batches = range(0, len(order), per_batch)
        for start in tqdm(
            batches, desc="generate", disable=not self.progress or len(batches) < 2, leave=False
        ):
            idx = order[start : start + per_batch]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            out = self.model.generate(
                **batch,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                num_return_sequences=draws,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            texts = self.tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for j, i in enumerate(idx):
                replies[i] = texts[j * draws : (j + 1) * draws] * (n // draws)
        self.model.train(was_training)
        return replies
