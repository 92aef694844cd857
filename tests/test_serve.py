"""`feedlearn serve`: which folder a run serves, the key rule, vLLM's command line, and the local server
on 127.0.0.1 called through feedlearn's own OpenAI-compatible client and the `openai` client."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import openai
import pytest
import uvicorn

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.backends.openai_compat import OpenAIBackend, OpenAIBackendConfig
from feedlearn.errors import BackendError, ConfigError
from feedlearn.models.loading import BUNDLED, LoraSettings, ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.serve import ServeSettings, api_key, build_app, trained_model, vllm_serve_command

CHAT = [{"role": "user", "content": "what is two plus two"}]


def model_folder(path: Path, adapter: bool = False, finished: bool = True) -> Path:
    """A saved model (or adapter) folder; `finished` writes the done marker a save writes last."""
    path.mkdir(parents=True)
    (path / ("adapter_config.json" if adapter else "config.json")).write_text("{}")
    if finished:
        (path / "done.json").write_text("{}")
    return path


def run_folder(tmp_path: Path, method: str, template: str | None = None) -> Path:
    run = tmp_path / method
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"method": method, "model": {"chat_template": template}}))
    return run


def test_a_run_serves_its_last_trained_policy_with_its_chat_template(tmp_path):
    rise = run_folder(tmp_path, "rise", template="{{ messages }}")
    with pytest.raises(ConfigError, match="has no trained policy yet"):
        trained_model(rise)
    model_folder(rise / "sft" / "model")
    for i in (1, 2, 10):
        model_folder(rise / f"iter{i}" / "train" / "model")
    assert trained_model(rise) == (rise / "iter10" / "train" / "model", "{{ messages }}")
    model_folder(rise / "iter11" / "train" / "model", finished=False)  # killed while saving iteration 11
    assert trained_model(rise) == (rise / "iter10" / "train" / "model", "{{ messages }}")
    c3po = run_folder(tmp_path, "c3po")
    for feedback in ("aaaa", "bbbb"):
        model_folder(c3po / feedback / "train" / "c3po" / "model", adapter=True)
    with pytest.raises(ConfigError, match="trained 2 C3PO adapters: run `feedlearn c3po combine`"):
        trained_model(c3po)
    model_folder(c3po / "combined" / "combined", adapter=True, finished=False)
    with pytest.raises(ConfigError, match="trained 2 C3PO adapters"):
        trained_model(c3po)
    (c3po / "combined" / "combined" / "done.json").write_text("{}")
    assert trained_model(c3po)[0] == c3po / "combined" / "combined"
    reflect = run_folder(tmp_path, "reflect-rl")
    model_folder(reflect / "sft" / "policy" / "model")
    assert trained_model(reflect)[0] == reflect / "sft" / "policy" / "model"
    assert trained_model(rise / "sft" / "model") == (rise / "sft" / "model", None)
    with pytest.raises(ConfigError, match="neither a run folder"):
        trained_model(tmp_path)
    assert trained_model(Path("rise-tiny-base")) == (
        BUNDLED / "rise-tiny-base",
        None,
    )  # a bundled model's name
    with pytest.raises(ConfigError, match="neither a run folder"):
        trained_model(Path("no-such-model"))


def test_binding_beyond_loopback_requires_a_key_from_the_environment(monkeypatch):
    assert api_key(ServeSettings()) is None
    with pytest.raises(ConfigError, match="binding 0.0.0.0 exposes the model.*--api-key-env"):
        api_key(ServeSettings(host="0.0.0.0"))
    monkeypatch.delenv("SERVE_KEY", raising=False)
    with pytest.raises(ConfigError, match="SERVE_KEY is not set or empty"):
        api_key(ServeSettings(host="0.0.0.0", api_key_env="SERVE_KEY"))
    monkeypatch.setenv("SERVE_KEY", "s3cret")
    assert api_key(ServeSettings(host="0.0.0.0", api_key_env="SERVE_KEY")) == "s3cret"


def test_vllm_serve_command_for_a_model_and_for_an_adapter_on_its_base(tmp_path):
    settings = ServeSettings(
        host="0.0.0.0", port=9000, api_key_env="KEY", max_prompt_tokens=1000, max_tokens=24
    )
    whole = model_folder(tmp_path / "whole")
    assert vllm_serve_command(whole, "policy", settings, None) == [
        "vllm", "serve", str(whole), "--host", "0.0.0.0", "--port", "9000",
        "--served-model-name", "policy", "--max-model-len", "1024",
    ]  # fmt: skip
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "base/llama", "r": 16})
    )
    command = vllm_serve_command(adapter, "c3po", settings, tmp_path / "t.jinja")
    assert command[:3] == ["vllm", "serve", "base/llama"]
    assert command[command.index("--lora-modules") + 1] == f"c3po={adapter.resolve()}"
    assert command[command.index("--max-lora-rank") + 1] == "16" and "--enable-lora" in command
    assert command[command.index("--chat-template") + 1] == str(tmp_path / "t.jinja")
    assert "--api-key" not in command  # the key travels in the environment ($VLLM_API_KEY)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "base/llama", "modules_to_save": ["lm_head"]})
    )
    with pytest.raises(BackendError, match="modules_to_save"):
        vllm_serve_command(adapter, "c3po", settings, None)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    config = TinyModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, vocab_size=300)
    base = build_tiny_model(config, ["what is two plus two", "four"], cache=tmp_path_factory.mktemp("t"))
    model, tokenizer = load_policy(ModelSettings(path=str(base), lora=LoraSettings(r=4)), trainable=True)
    folder = tmp_path_factory.mktemp("adapter") / "model"  # a LoRA adapter on its base, as runs save them
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(policy, monkeypatch):
    """The local server on 127.0.0.1, in a thread, with key `k3y` required, as `serve` builds it."""

    def start(**settings):
        settings = ServeSettings(
            port=free_port(), **{"max_n": 4, "max_tokens": 16, "max_prompt_tokens": 64, **settings}
        )
        monkeypatch.setenv("SERVE_KEY", "k3y")
        key = api_key(settings.model_copy(update={"api_key_env": "SERVE_KEY"}))
        model, tokenizer = load_policy(ModelSettings(path=str(policy)))
        app = build_app(LocalBackend(model, tokenizer, 8, progress=False), "tiny-policy", settings, key)
        running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="error"))
        thread = threading.Thread(target=running.run, daemon=True)
        thread.start()
        while not running.started:
            time.sleep(0.02)
        started.append((running, thread))
        return f"http://127.0.0.1:{settings.port}/v1"

    started = []
    yield start
    for running, thread in started:
        running.should_exit = True
        thread.join(timeout=10)


def test_feedlearns_own_client_samples_from_the_served_policy_seeded_per_request(server, monkeypatch):
    url = server()
    monkeypatch.setenv("SERVE_KEY", "k3y")
    client = OpenAIBackend(OpenAIBackendConfig(model="tiny-policy", base_url=url, api_key_env="SERVE_KEY"))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8)
    first = client.generate([CHAT, CHAT], 2, sampling, keys=["a", "b"])
    again = client.generate([CHAT], 2, sampling, keys=["a"])
    assert [len(r) for r in first] == [2, 2] and again[0] == first[0]  # the same seed, the same samples
    direct = openai.OpenAI(base_url=url, api_key="k3y")
    assert [m.id for m in direct.models.list().data] == ["tiny-policy"]
    reply = direct.chat.completions.create(model="tiny-policy", messages=CHAT, max_tokens=4, seed=1)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens <= 4
    stream = direct.chat.completions.create(
        model="tiny-policy", messages=CHAT, max_tokens=4, seed=1, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream)
    assert streamed == reply.choices[0].message.content


def test_requests_without_the_key_or_over_the_limits_get_a_clear_4xx(server):
    url = server()
    with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=url, api_key="k3y", max_retries=0)
    cases = [
        ({"n": 5}, "n is 5; this server allows at most 4"),
        ({"max_tokens": 17}, "max_tokens is 17; this server allows at most 16"),
        ({"messages": [{"role": "user", "content": "two " * 80}]}, "the prompt is .* tokens; .* at most 64"),
        ({"temperature": "hot"}, "field 'temperature'"),
        ({"messages": []}, "field 'messages'"),
    ]
    for extra, message in cases:
        request = {"model": "tiny-policy", "messages": CHAT, **extra}
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(**request)
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' is not served here"):
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    with pytest.raises(openai.APIStatusError, match="request body over"):
        client.chat.completions.create(
            model="tiny-policy", messages=[{"role": "user", "content": "x" * 1_100_000}]
        )


def test_a_lone_surrogate_or_an_unparseable_body_gets_an_openai_style_400(server):
    import httpx

    url = server()
    headers = {"Authorization": "Bearer k3y", "Content-Type": "application/json"}
    bodies = {
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}': "field 'messages.0.content'",
        b'{"messages": [': "the body is not valid JSON",
        b"\xff\xfe": "the body is not valid JSON",
    }
    for body, message in bodies.items():
        reply = httpx.post(f"{url}/chat/completions", content=body, headers=headers)
        assert reply.status_code == 400, (body, reply.text)
        assert message in reply.json()["error"]["message"]
    reply = httpx.get(f"{url}/nowhere", headers=headers)
    assert reply.status_code == 404 and reply.json()["error"]["message"] == "Not Found"


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_at_the_limit():
    import asyncio

    from starlette.responses import JSONResponse

    from feedlearn.serve import BodyLimit

    received, sent = [], []

    async def endless():  # a client that would send 30 MB in 64 KiB chunks
        received.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": len(received) < 480}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("the app never sees a body over the limit")

    refuse = lambda status, message: JSONResponse({"error": {"message": message}}, status_code=status)  # noqa: E731
    scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, 1_000_000, refuse)(scope, endless, send))
    assert sent[0]["status"] == 413 and b"request body over 1000000 bytes" in sent[1]["body"]
    assert len(received) == 1_000_000 // 65536 + 1  # it stopped reading one chunk past the limit


def test_prompts_over_the_models_positions_or_far_over_the_limit_are_refused_before_generating(server):
    url = server(max_prompt_tokens=4096, max_tokens=16)
    client = openai.OpenAI(base_url=url, api_key="k3y", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="more than the model's 1024 positions"):
        client.chat.completions.create(
            model="tiny-policy", messages=[{"role": "user", "content": "two " * 1100}], max_tokens=16
        )
    with pytest.raises(
        openai.BadRequestError, match="the prompt is 140000 characters; .* at most 4096 tokens"
    ):
        client.chat.completions.create(
            model="tiny-policy", messages=[{"role": "user", "content": "x" * 140_000}]
        )


def test_serve_options_out_of_range_are_one_line_errors(policy, capsys):
    from feedlearn.cli import main

    cases = [
        (["--port", "70000"], "serve: key 'port': Input should be less than or equal to 65535"),
        (["--port", "-1"], "serve: key 'port': Input should be greater than or equal to 0"),
        (["--max-n", "0"], "serve: key 'max_n': Input should be greater than 0"),
        (["--engine", "vllm"], "--engine vllm: vLLM is not installed here"),
    ]
    for options, message in cases:
        assert main(["serve", str(policy), *options]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"error: {message}"), error


def test_the_serve_command_serves_a_folder_and_refuses_an_open_bind_without_a_key(policy, tmp_path):
    """`feedlearn serve` as a user runs it: a model folder on 127.0.0.1 answers; binding 0.0.0.0 without
    --api-key-env exits with the reason before loading anything."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FEEDLEARN_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "feedlearn.cli", "serve", str(policy)]
    refused = subprocess.run(
        [*cli, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "binding 0.0.0.0 exposes the model" in refused.stderr
    port = free_port()
    server = subprocess.Popen(
        [*cli, "--port", str(port), "--engine", "local"], env=env, stderr=subprocess.PIPE
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                names = [m.id for m in client.models.list().data]
                break
            except openai.APIConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
                time.sleep(0.2)
        assert names == ["model"]  # the folder's name
        reply = client.chat.completions.create(model="model", messages=CHAT, max_tokens=3)
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        server.terminate()
        server.wait(timeout=30)
