"""OpenAIBackend against a real local HTTP server that speaks (a scriptable subset of) chat completions."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.openai_compat import OpenAIBackend, OpenAIBackendConfig
from feedlearn.errors import BackendError, ConfigError

KEY_ENV = "FEEDLEARN_TEST_OPENAI_KEY"
SECRET = "sk-test-SECRET-9f8e7d6c5b4a3210-do-not-leak"
FAST_RETRY = {"Retry-After": "0.01"}  # the client honours Retry-After in (0, 120] s; 0 falls back to ~0.5 s


@dataclass
class Reply:
    """One scripted server behaviour."""

    status: int = 200
    choices: int | None = None  # how many choices to return; None = as many as the request's n
    delay: float = 0.0  # seconds to sleep before answering
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = "auto"  # "auto" = derived from the request; None = JSON null


class FakeServer:
    """State shared with the request handler: the script, what was received, in-flight counts."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self.base_url = ""

    def next_reply(self, body: dict, auth: str | None) -> Reply:
        with self.lock:
            self.requests.append(body)
            self.auth.append(auth)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.popleft() if self.script else self.default


def make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth = self.headers.get("Authorization")
            reply = server.next_reply(body, auth)
            try:
                if reply.delay:
                    server.stopping.wait(reply.delay)
                if self.path != "/v1/chat/completions":
                    self.send_json(404, {"error": {"message": "not found"}}, {})
                elif reply.status != 200:
                    # Echo the Authorization header, as a careless server might: it must not leak.
                    error = {"message": f"scripted {reply.status}; you sent {auth}", "type": "test"}
                    self.send_json(reply.status, {"error": error}, reply.headers)
                else:
                    self.send_json(200, completion(body, reply), reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def send_json(self, status: int, payload: dict, headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def completion(body: dict, reply: Reply) -> dict:
    """A chat.completion whose replies say which prompt and which request they answer."""
    count = body.get("n", 1) if reply.choices is None else reply.choices
    prompt = body["messages"][-1]["content"]

    def content(i: int) -> str | None:
        return f"{prompt}|{i}" if reply.content == "auto" else reply.content

    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": content(i)}, "finish_reason": "stop"}
            for i in range(count)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": 1 + count},
    }


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    state.stopping.set()  # wake handlers still sleeping
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def make_backend(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setenv(KEY_ENV, SECRET)
    made: list[OpenAIBackend] = []

    def make(**kwargs: object) -> OpenAIBackend:
        args = {"model": "test-model", "base_url": server.base_url, "api_key_env": KEY_ENV}
        args |= {"max_retries": 1, "timeout_s": 0.5} | kwargs
        backend = OpenAIBackend(**args)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


SAMPLING = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=33)


def test_success_in_order_with_parameters(server: FakeServer, make_backend) -> None:
    backend = make_backend()
    prompts = [f"q{i}" for i in range(5)]
    out = backend.generate([chat(p) for p in prompts], n=2, sampling=SAMPLING)
    assert out == [[f"{p}|0", f"{p}|1"] for p in prompts]
    assert len(server.requests) == 5
    for body in server.requests:
        assert body["model"] == "test-model"
        assert body["n"] == 2
        assert body["temperature"] == 0.7
        assert body["top_p"] == 0.9
        assert body["max_tokens"] == 33
    assert sorted(b["messages"][-1]["content"] for b in server.requests) == prompts
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert server.auth == [f"Bearer {SECRET}"] * 5


def test_empty_batch_sends_nothing(server: FakeServer, make_backend) -> None:
    assert make_backend().generate([], n=3, sampling=SAMPLING) == []
    assert server.requests == []


def test_429_then_success(server: FakeServer, make_backend) -> None:
    server.script.append(Reply(status=429, headers=FAST_RETRY))
    assert make_backend().generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    assert len(server.requests) == 2


def test_500_then_success(server: FakeServer, make_backend) -> None:
    server.script.append(Reply(status=500))  # no Retry-After: the client's own backoff (~0.4-0.5 s)
    assert make_backend().generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    assert len(server.requests) == 2


def test_timeout_then_success(server: FakeServer, make_backend) -> None:
    server.script.append(Reply(delay=2.0))
    assert make_backend(timeout_s=0.3).generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    assert len(server.requests) == 2


def test_always_timeout(server: FakeServer, make_backend) -> None:
    server.default = Reply(delay=2.0)
    with pytest.raises(BackendError) as info:
        make_backend(timeout_s=0.3).generate([chat("a")], n=1, sampling=SAMPLING)
    message = str(info.value)
    assert "timeout" in message
    assert "2 attempts" in message
    assert server.base_url in message and "test-model" in message
    assert len(server.requests) == 2


def test_always_500(server: FakeServer, make_backend) -> None:
    server.default = Reply(status=500, headers=FAST_RETRY)
    with pytest.raises(BackendError) as info:
        make_backend(max_retries=2).generate([chat("a")], n=1, sampling=SAMPLING)
    message = str(info.value)
    assert "HTTP 500" in message and "3 attempts" in message
    assert server.base_url in message and "test-model" in message
    assert "\n" not in message
    assert len(server.requests) == 3


def test_401_fails_at_once(server: FakeServer, make_backend) -> None:
    server.default = Reply(status=401)
    with pytest.raises(BackendError) as info:
        make_backend(max_retries=3).generate([chat("a")], n=1, sampling=SAMPLING)
    assert "HTTP 401" in str(info.value) and "1 attempt;" in str(info.value)
    assert KEY_ENV in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 404])
def test_other_client_errors_fail_at_once(server: FakeServer, make_backend, status: int) -> None:
    server.default = Reply(status=status)
    with pytest.raises(BackendError, match=f"HTTP {status} after 1 attempt;"):
        make_backend(max_retries=3).generate([chat("a")], n=1, sampling=SAMPLING)
    assert len(server.requests) == 1


def test_fewer_choices_than_n(server: FakeServer, make_backend) -> None:
    server.default = Reply(choices=1)  # a server that ignores n
    out = make_backend().generate([chat("a"), chat("b")], n=3, sampling=SAMPLING)
    assert out == [["a|0"] * 3, ["b|0"] * 3]
    assert len(server.requests) == 6
    assert sorted(b["n"] for b in server.requests if b["messages"][-1]["content"] == "a") == [1, 2, 3]


def test_null_content_is_empty_reply(server: FakeServer, make_backend) -> None:
    server.default = Reply(content=None)
    assert make_backend().generate([chat("a")], n=2, sampling=SAMPLING) == [["", ""]]


def test_no_choices_is_an_error(server: FakeServer, make_backend) -> None:
    server.default = Reply(choices=0)
    with pytest.raises(BackendError, match="no choices"):
        make_backend().generate([chat("a")], n=1, sampling=SAMPLING)


def test_one_failing_conversation_fails_the_batch(server: FakeServer, make_backend) -> None:
    server.default = Reply(delay=0.3)
    server.script.append(Reply(status=400, delay=0.1))  # the first to arrive fails, once all have started
    start = time.monotonic()
    with pytest.raises(BackendError, match="HTTP 400"):
        make_backend(max_concurrency=3).generate([chat(p) for p in "abc"], n=1, sampling=SAMPLING)
    assert time.monotonic() - start >= 0.25  # it waited for the two slow requests already under way
    assert len(server.requests) == 3


def test_concurrency_is_bounded(server: FakeServer, make_backend) -> None:
    server.default = Reply(delay=0.2)
    backend = make_backend(max_concurrency=2, timeout_s=5.0)
    start = time.monotonic()
    out = backend.generate([chat(str(i)) for i in range(6)], n=1, sampling=SAMPLING)
    elapsed = time.monotonic() - start
    assert out == [[f"{i}|0"] for i in range(6)]
    assert server.max_in_flight == 2
    assert elapsed >= 0.55  # three waves of two


def test_missing_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=KEY_ENV):
        OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(BackendError, match=KEY_ENV):
        OpenAIBackend(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)


def test_no_key_needed_sends_dummy(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(model="m", base_url=server.base_url, api_key_env=None)
    try:
        assert backend.generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    finally:
        backend.close()
    assert server.auth == ["Bearer EMPTY"]


def test_key_never_leaks(server: FakeServer, make_backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's included
    server.default = Reply(status=401)  # whose body echoes the Authorization header
    backend = make_backend()
    with pytest.raises(BackendError) as info:
        backend.generate([chat("a")], n=1, sampling=SAMPLING)
    assert server.auth == [f"Bearer {SECRET}"]  # the key was sent...
    exc = info.value
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(backend), str(backend)]
    shown.append(caplog.text)
    for text in shown:
        assert SECRET not in text  # ...and shown nowhere
        assert SECRET[-12:] not in text  # not even a tail, as masked keys show
    assert KEY_ENV in repr(backend)


def test_config_model() -> None:
    config = OpenAIBackendConfig(model="m", base_url="http://x/v1", api_key_env=None, max_concurrency=3)
    backend = OpenAIBackend.from_config(config)
    assert backend.config == config
    assert repr(backend).startswith("OpenAIBackend(model='m', base_url='http://x/v1', api_key_env=None")
    backend.close()
    with pytest.raises(ValueError, match="api_key"):
        OpenAIBackendConfig(model="m", api_key="sk-nope")  # extra="forbid": keys never go in configs
    assert all(f.description for f in OpenAIBackendConfig.model_fields.values())


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAIBackend(model="m", api_key_env=None, max_concurrency=0)


def test_reflect_rl_evaluates_a_remote_chat_model_through_the_cli(server: FakeServer, monkeypatch, tmp_path):
    """`feedlearn reflect-rl evaluate-remote` against a chat-completions server: the replies' labels are
    played, a 500 is retried, and the API key reaches no file of the run."""
    from feedlearn import cli

    monkeypatch.setenv(KEY_ENV, SECRET)
    server.default = Reply(content="The passenger is aboard; I head east.\nAction: 3")
    server.script.append(Reply(status=500, headers=FAST_RETRY))
    recipe = tmp_path / "remote.yaml"
    recipe.write_text(
        "method: reflect-rl\nmodel: {path: tiny}\nenv: {name: taxi, level: dropoff}\n"
        f"run_dir: {tmp_path / 'runs'}\n"
        "evaluate:\n  episodes: 4\n  remote:\n"
        f"    openai: {{model: m, base_url: '{server.base_url}', api_key_env: {KEY_ENV}, max_retries: 2}}\n"
    )
    assert cli.main(["reflect-rl", "evaluate-remote", str(recipe)]) == 0
    run = tmp_path / "runs" / "reflect-rl-remote"
    metrics = json.loads((run / "evaluate" / "remote" / "metrics.json").read_text())
    assert metrics["episodes"] == 4 and metrics["invalid"] == 0
    episodes = [
        json.loads(line) for line in (run / "evaluate" / "remote" / "episodes.jsonl").read_text().splitlines()
    ]
    assert all(set(e["actions"]) == {"east"} for e in episodes)
    assert "Action:" in server.requests[0]["messages"][-1]["content"]  # the prompt asks for a label
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
