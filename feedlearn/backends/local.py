"""Local generation with transformers: batched, left-padded, KV-cached, n samples per conversation.

Every sampled row draws its tokens from its own generator, seeded from the backend's seed, the
conversation's key and the sample's index, so a conversation's replies do not depend on which other
conversations share its batch, or on the calls made before it: a resumed stage samples what an
uninterrupted one did.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from feedlearn.backends.base import Conversation, SamplingParams, conversation_key
from feedlearn.models.chat import prompt_ids
from feedlearn.seeds import derive_seed

CACHE = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)
"""The keyword by which a transformers model and `generate` take a KV cache (`past_key_values` before 5.x)."""


def row_uniforms(seeds: Sequence[int], count: int) -> torch.Tensor:
    """[rows, count] uniform draws in [0, 1), row i from its own generator seeded with `seeds[i]`."""
    return torch.stack(
        [torch.rand(count, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    )


def sample_rows(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [rows, k], by inverse transform of the row's uniform [rows]: the row's
    draw depends on its own probabilities and uniform only. A zero-probability index is never drawn."""
    cdf = probs.double().cumsum(-1)
    points = uniforms.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, points, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


class RowSampler(LogitsProcessor):
    """Samples every row's next token with temperature and top-p, from the row's own uniforms, and leaves
    only that token's logit finite, so that greedy decoding takes it."""

    def __init__(self, uniforms: torch.Tensor, sampling: SamplingParams):
        self.uniforms, self.step = uniforms, 0
        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling.top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        picks = sample_rows(probs, self.uniforms[:, self.step])
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks), device=scores.device), picks] = 0.0
        return out


class LocalBackend:
    """Generate with an in-memory transformers model.

    Conversations are sorted by prompt length so each call wastes little padding, and a call takes as
    many as fit `batch_size` rows (one per sample; a conversation's samples always share a call): each
    prompt is prefilled once and its KV cache repeated for its samples. Greedy decoding (temperature 0)
    gives one reply per conversation, repeated `n` times. The KV cache is transformers' static one
    (allocated once per call): the same tokens as the dynamic cache, which grows by concatenation every
    step and took 30% of a CPU run's time (`kv_cache="dynamic"` for an architecture without a static
    cache).
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 64,
        seed: int = 0,
        progress: bool = True,
        kv_cache: Literal["static", "dynamic"] = "static",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.kv_cache = kv_cache

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingParams,
        keys: Sequence[str] | None = None,
    ) -> list[list[str]]:
        """For each conversation, `n` replies decoded without special tokens (see `Backend.generate`)."""
        return [
            self.tokenizer.batch_decode(replies, skip_special_tokens=True)
            for replies in self.generate_ids(conversations, n, sampling, keys)
        ]

    @torch.no_grad()
    def generate_ids(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingParams,
        keys: Sequence[str] | None = None,
    ) -> list[list[list[int]]]:
        """`generate`'s replies as token ids, up to (not including) the end-of-sequence token: a reply of
        `max_new_tokens` ids was cut at the length limit."""
        if keys is not None and len(keys) != len(conversations):
            raise ValueError(f"{len(keys)} keys for {len(conversations)} conversations")
        greedy = sampling.temperature == 0
        if not greedy and keys is None:
            keys = [conversation_key(c) for c in conversations]
        draws = 1 if greedy else n
        encoded = [prompt_ids(self.tokenizer, c) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        per_call = max(1, self.batch_size // draws)  # conversations per call: their samples share it
        replies: list[list[list[int]]] = [[[] for _ in range(draws)] for _ in encoded]
        was_training = self.model.training
        self.model.eval()
        calls = range(0, len(order), per_call)
        for start in tqdm(calls, desc="generate", disable=not self.progress or len(calls) < 2, leave=False):
            chosen = order[start : start + per_call]
            rows = [(i, k) for i in chosen for k in range(draws)]
            processors = LogitsProcessorList()
            if not greedy:
                seeds = [derive_seed(self.seed, "sampling", keys[i], k) for i, k in rows]
                processors.append(RowSampler(row_uniforms(seeds, sampling.max_new_tokens), sampling))
            out = self._generate([encoded[i] for i in chosen], draws, sampling, processors)
            for (i, k), ids in zip(rows, out.tolist(), strict=True):
                # a row ends at its end-of-sequence token (padding follows it); a pad token sampled
                # mid-reply is a token like any other (generation goes on past it)
                eos = self.tokenizer.eos_token_id
                replies[i][k] = ids[: ids.index(eos)] if eos in ids else ids
        self.model.train(was_training)
        return [r * (n // draws) for r in replies]

    def _generate(
        self, prompts: list[list[int]], draws: int, sampling: SamplingParams, processors: LogitsProcessorList
    ) -> torch.Tensor:
        """[len(prompts) x draws, new tokens]: each prompt's `draws` replies, its rows side by side. Each
        prompt but its last token is prefilled once, left-padded with the others, and its KV cache is
        repeated for its draws; `generate` goes on from there (the naive way, a prompt repeated per draw,
        prefills it `draws` times)."""
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.model.device), batch["attention_mask"].to(self.model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
        if self.kv_cache == "static":
            cache = StaticCache(
                config=self.model.config, max_cache_len=ids.shape[1] + sampling.max_new_tokens
            )
        else:
            cache = DynamicCache(config=self.model.config)
        self.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            logits_to_keep=1,  # only the cache is used: no LM head over every prompt position
            **{CACHE: cache},
        )
        repeat_rows(cache, draws)
        ids, mask = ids.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=processors,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **{CACHE: cache},
        )
        return out[:, ids.shape[1] :]


def repeat_rows(cache, times: int) -> None:
    """Repeat each row of a prefilled KV cache `times` times, in place, rows of one prompt side by side
    (transformers' static cache has no `batch_repeat_interleave` of its own)."""
    if times == 1:
        return
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(times, 0)
        layer.values = layer.values.repeat_interleave(times, 0)
        for size in ("batch_size", "max_batch_size"):  # a static layer's, by its name in each version
            if hasattr(layer, size):
                setattr(layer, size, getattr(layer, size) * times)
