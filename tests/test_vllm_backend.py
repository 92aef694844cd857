"""The vLLM backend against a stand-in of vLLM's Python API that records what it is asked (the project's
default environment has no vLLM; `tests/test_vllm_real.py` runs the real one where it is installed)."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest

from feedlearn.backends import vllm_backend
from feedlearn.backends.base import SamplingParams
from feedlearn.backends.vllm_backend import VLLMBackend, VLLMSettings
from feedlearn.errors import BackendError
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import LoraSettings, ModelSettings, load_policy, load_tokenizer
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.seeds import derive_seed

CHATS = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a colour."}]]


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@dataclass
class Completion:
    text: str
    token_ids: tuple[int, ...] = (5, 6)


@dataclass
class RequestOutput:
    outputs: list[Completion]


class FakeLLM:
    """Records its engine arguments and every request; replies name the request's last prompt token and
    seed, so that a test can tell which reply answers which request."""

    started: list[FakeLLM] = []
    fail_with: Exception | None = None

    def __init__(self, **kwargs):
        if FakeLLM.fail_with is not None:
            raise FakeLLM.fail_with
        self.kwargs, self.requests, self.events = kwargs, [], []
        FakeLLM.started.append(self)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.events.append("generate")
        self.requests.append((prompts, params, lora_request))
        return [
            RequestOutput([Completion(f"t{p['prompt_token_ids'][-1]} s{sp.seed} #{i}") for i in range(sp.n)])
            for p, sp in zip(prompts, params, strict=True)
        ]

    def sleep(self, level):
        self.events.append(f"sleep{level}")

    def wake_up(self):
        self.events.append("wake")


@pytest.fixture
def fake_vllm(monkeypatch):
    """vLLM's modules as the backend imports them: `vllm`, `vllm.inputs`, `vllm.lora.request`."""
    root = types.ModuleType("vllm")
    root.LLM, root.SamplingParams = FakeLLM, FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in [
        ("vllm", root),
        ("vllm.inputs", inputs),
        ("vllm.lora", types.ModuleType("vllm.lora")),
        ("vllm.lora.request", request),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(FakeLLM, "started", [])
    monkeypatch.setattr(FakeLLM, "fail_with", None)
    vllm_backend._engine.clear()
    yield FakeLLM
    vllm_backend._engine.clear()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = TinyModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, vocab_size=300)
    return str(
        build_tiny_model(
            config, ["what is two plus two", "name a colour"], cache=tmp_path_factory.mktemp("t")
        )
    )


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    model, tokenizer = load_policy(ModelSettings(path=tiny, lora=LoraSettings(r=4)), trainable=True)
    folder = tmp_path_factory.mktemp("adapter") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_prompts_are_feedlearns_token_ids_and_each_request_is_seeded_by_its_key(fake_vllm, tiny):
    backend = VLLMBackend(tiny, VLLMSettings(), seed=7)
    sampling = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=12)
    replies = backend.generate(CHATS, 3, sampling, keys=["a", "b"])
    (llm,) = fake_vllm.started
    prompts, params, lora = llm.requests[0]
    tokenizer = load_tokenizer(tiny)
    assert [p["prompt_token_ids"] for p in prompts] == [prompt_ids(tokenizer, c) for c in CHATS]
    assert [(p.n, p.temperature, p.top_p, p.max_tokens) for p in params] == [(3, 0.8, 0.9, 12)] * 2
    assert [p.seed for p in params] == [derive_seed(7, "sampling", k) for k in ("a", "b")]
    assert lora is None and len(replies) == 2 and [len(r) for r in replies] == [3, 3]
    backend.generate(CHATS[1:], 3, sampling, keys=["b"])  # alone in its batch: the same seed
    assert llm.requests[1][1][0].seed == params[1].seed
    assert llm.kwargs["model"] == tiny and llm.kwargs["enable_lora"] is True


def test_greedy_asks_once_and_repeats_like_local_generation(fake_vllm, tiny):
    backend = VLLMBackend(tiny, VLLMSettings())
    replies = backend.generate(CHATS, 4, SamplingParams(temperature=0.0, max_new_tokens=5))
    params = fake_vllm.started[0].requests[0][1]
    assert [p.n for p in params] == [1, 1]
    assert all(len(set(r)) == 1 and len(r) == 4 for r in replies)


def test_each_adapter_version_gets_a_fresh_lora_name_and_id_on_one_engine(fake_vllm, tiny, adapter):
    first, second = VLLMBackend(adapter, VLLMSettings()), VLLMBackend(adapter, VLLMSettings())
    first.generate(CHATS, 1, SamplingParams()), second.generate(CHATS, 1, SamplingParams())
    (llm,) = fake_vllm.started  # the base model's engine, started once
    base = json.loads((vllm_backend.Path(adapter) / "adapter_config.json").read_text())
    assert llm.kwargs["model"] == base["base_model_name_or_path"]
    a, b = (request[2] for request in llm.requests)
    assert a.lora_path == b.lora_path == str(vllm_backend.Path(adapter).resolve())
    assert a.lora_int_id != b.lora_int_id and a.lora_name != b.lora_name
    VLLMBackend(tiny, VLLMSettings(max_model_len=256))  # other settings: a new engine
    assert len(fake_vllm.started) == 2 and fake_vllm.started[1].kwargs["max_model_len"] == 256


def test_sleep_mode_wakes_the_engine_only_to_generate(fake_vllm, tiny):
    backend = VLLMBackend(tiny, VLLMSettings(sleep_mode=True))
    backend.generate(CHATS, 1, SamplingParams())
    assert fake_vllm.started[0].events == ["sleep1", "wake", "generate", "sleep1"]
    assert fake_vllm.started[0].kwargs["enable_sleep_mode"] is True


def test_clear_errors_without_vllm_without_a_device_and_for_an_adapter_it_cannot_load(
    fake_vllm, tiny, adapter, tmp_path, monkeypatch
):
    saved = json.loads((vllm_backend.Path(adapter) / "adapter_config.json").read_text())
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "adapter_config.json").write_text(json.dumps({**saved, "modules_to_save": ["lm_head"]}))
    with pytest.raises(BackendError, match=r"cannot load the adapter in .*modules_to_save: \['lm_head'\]"):
        VLLMBackend(str(odd), VLLMSettings())
    fake_vllm.fail_with = RuntimeError("Failed to infer device type")
    with pytest.raises(BackendError, match="vLLM could not start model .*Failed to infer device type"):
        VLLMBackend(tiny, VLLMSettings())
    monkeypatch.setitem(sys.modules, "vllm", None)  # as when it is not installed
    with pytest.raises(BackendError, match=r"vLLM is not installed: pip install 'feedlearn\[vllm\]'"):
        VLLMBackend(tiny, VLLMSettings())


def test_a_recipe_with_the_vllm_backend_generates_every_turn_through_it(fake_vllm, tmp_path):
    """RISE's evaluation of the base model with `generation.backend: vllm`: every turn and the parallel
    samples go to vLLM, keyed by the test problems' ids, and the episodes hold its replies."""
    from feedlearn.data.store import open_run
    from feedlearn.methods.rise.config import RiseConfig
    from feedlearn.methods.rise.stages import Rise

    config = RiseConfig.model_validate(
        {
            "run_dir": str(tmp_path / "runs"),
            "model": {"path": "tiny"},
            "tiny": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
            "train_problems": {"synthetic": {"n": 4, "seed": 1}},
            "test_problems": {"synthetic": {"n": 3, "seed": 2}},
            "evaluate": {"turns": 2, "parallel_samples": 2, "max_new_tokens": 8},
            "generation": {"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.5}},
        }
    )
    method = Rise(config, open_run(config.run_dir, "v", config.model_dump(mode="json")), progress=False)
    method.evaluate(0)
    (llm,) = fake_vllm.started
    assert llm.kwargs["gpu_memory_utilization"] == 0.5
    assert [len(prompts) for prompts, _, _ in llm.requests] == [3, 3, 3]  # two turns, then the parallel pass
    episodes = [json.loads(line) for line in (method.layout.evaluation(0) / "episodes.jsonl").open()]
    assert all(turn["action"].startswith("t") for e in episodes for turn in e["turns"])
