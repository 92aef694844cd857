"""Tiny Llama-style models built locally: random weights and a tokenizer trained on the task's own text.

They make every method runnable offline on a laptop CPU. A built model is cached on disk under a key made
from its config and corpus, so a second run with the same settings loads it instead of rebuilding it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from feedlearn.cache import build_into, cache_home
from feedlearn.data.jsonl import write_text_atomic
from feedlearn.models.chat import CHAT_SPECIAL_TOKENS, DEFAULT_CHAT_TEMPLATE
from feedlearn.models.saving import save_model
from feedlearn.seeds import derive_seed


class TinyModelConfig(BaseModel):
    """Shape of a tiny model and its tokenizer."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(default=512, ge=300, description="Tokenizer vocabulary size (byte-level BPE).")
    hidden_size: int = Field(default=128, gt=0, description="Width of the residual stream.")
    intermediate_size: int = Field(default=384, gt=0, description="Width of the MLP.")
    num_layers: int = Field(default=4, gt=0, description="Transformer blocks.")
    num_heads: int = Field(default=4, gt=0, description="Attention heads (hidden_size must divide evenly).")
    max_length: int = Field(default=1024, gt=0, description="Longest sequence the model accepts.")


def cache_dir() -> Path:
    """Where tiny models are cached: $FEEDLEARN_CACHE, else ~/.cache/feedlearn."""
    return cache_home() / "tiny"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, digits split one per token, with the chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CHAT_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=DEFAULT_CHAT_TEMPLATE,
        padding_side="left",
    )


def build_tiny_model(
    config: TinyModelConfig, texts: list[str], seed: int = 0, cache: Path | None = None
) -> Path:
    """Build (or find in the cache) a tiny model for this corpus, its initial weights drawn from the
    recipe's `seed`; returns its folder, loadable by path."""
    key = hashlib.sha256(
        json.dumps({"config": config.model_dump(), "texts": texts, "seed": seed}, sort_keys=True).encode()
    ).hexdigest()[:16]
    folder = (cache or cache_dir()) / key
    if (folder / "done").exists():
        return folder
    tokenizer = train_tokenizer(texts, config.vocab_size)
    torch.manual_seed(derive_seed(seed, "init", "tiny"))
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=config.max_length,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return build_into(folder, "done", lambda building: _save(model, tokenizer, building, key))


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path, key: str) -> None:
    """Write a built tiny model into `folder`, the `done` mark last."""
    save_model(model, tokenizer, folder)
    write_text_atomic(folder / "done", key + "\n")
