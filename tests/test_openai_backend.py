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

from feedlearn.backends import openai_compat
from feedlearn.backends.base import SamplingParams, conversation_key
from feedlearn.backends.openai_compat import OpenAIBackend, OpenAIBackendConfig, key_for
from feedlearn.errors import BackendError
from feedlearn.seeds import derive_seed

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
    body: bytes | None = None  # a raw 200 body sent instead of a completion ("{auth}" is replaced)
    content_type: str = "application/json"  # of `body`


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
                elif reply.body is not None:
                    # A careless server's page may echo the request: it must not reach the error.
                    data = reply.body.replace(b"{auth}", str(auth).encode())
                    self.send_raw(200, data, reply.content_type, reply.headers)
                else:
                    self.send_json(200, completion(body, reply), reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def send_json(self, status: int, payload: dict, headers: dict[str, str]) -> None:
            self.send_raw(status, json.dumps(payload).encode(), "application/json", headers)

        def send_raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
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


@pytest.fixture(autouse=True)
def fast_malformed_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_compat, "MALFORMED_RETRY_DELAY_S", 0.001)


@pytest.fixture
def make_backend(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setenv(KEY_ENV, SECRET)
    made: list[OpenAIBackend] = []

    def make(seed: int = 0, replies=None, **kwargs: object) -> OpenAIBackend:
        args = {"model": "test-model", "base_url": server.base_url, "api_key_env": KEY_ENV}
        args |= {"max_retries": 1, "timeout_s": 0.5} | kwargs
        backend = OpenAIBackend(OpenAIBackendConfig(**args), seed=seed, replies=replies)
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


def test_paid_replies_survive_a_failure_midway_and_are_not_bought_again(
    server: FakeServer, make_backend, tmp_path
) -> None:
    book = tmp_path / "replies.jsonl"
    prompts = [chat(f"q{i}") for i in range(6)]
    server.script.extend([Reply(), Reply(), Reply(status=400)])  # two answered, then the endpoint fails
    with pytest.raises(BackendError, match="HTTP 400"):
        make_backend(replies=book, max_concurrency=1).generate(prompts, n=2, sampling=SAMPLING)
    kept = {json.loads(line)["replies"][0].split("|")[0] for line in book.read_text().splitlines()}
    assert {"q0", "q1"} <= kept and "q2" not in kept  # what was received is kept (and what was in flight)
    server.requests.clear()
    again = make_backend(replies=book, max_concurrency=1).generate(prompts, n=2, sampling=SAMPLING)
    assert again == [[f"q{i}|0", f"q{i}|1"] for i in range(6)]
    asked = sorted(b["messages"][-1]["content"] for b in server.requests)
    assert asked == sorted({f"q{i}" for i in range(6)} - kept)  # nothing is bought twice
    server.requests.clear()
    other = make_backend(replies=book, max_concurrency=1).generate(prompts[:1], n=1, sampling=SAMPLING)
    assert other == [["q0|0"]] and len(server.requests) == 1  # another n is another request


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
        OpenAIBackend(OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV))
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(BackendError, match=KEY_ENV):
        OpenAIBackend(OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV))


def test_no_key_needed_sends_dummy(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(OpenAIBackendConfig(model="m", base_url=server.base_url, api_key_env=None))
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
    backend = OpenAIBackend(config)
    assert backend.config == config
    assert repr(backend).startswith("OpenAIBackend(model='m', base_url='http://x/v1', api_key_env=None")
    assert repr(backend).endswith(", seed=0)")
    backend.close()
    with pytest.raises(ValueError, match="api_key"):
        OpenAIBackendConfig(model="m", api_key="sk-nope")  # extra="forbid": keys never go in configs
    assert all(f.description for f in OpenAIBackendConfig.model_fields.values())


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


# --- 200 replies that are not chat completions -------------------------------------------------------

HTML = b"<html><body><h1>Login</h1><p>you sent {auth}</p></body></html>"
MALFORMED = {
    "not-json": (Reply(body=b'{"choices": [ oops {auth}'), "application/json, not JSON"),
    "html": (Reply(body=HTML, content_type="text/html; charset=utf-8"), "text/html, not JSON"),
    "null": (Reply(body=b"null"), "application/json, JSON, but not an object"),
    "foo": (Reply(body=b'{"foo": 1}'), "application/json, no 'choices' list"),
    "error-object": (Reply(body=b'{"error": {"message": "{auth}"}}'), "an 'error' object, no 'choices'"),
    "no-message": (Reply(body=b'{"choices": [{"index": 0}]}'), "a choice without a 'message' object"),
    "content-not-text": (
        Reply(body=b'{"choices": [{"message": {"content": {"x": 1}}}]}'),
        "a message whose 'content' is not text",
    ),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_200_then_success(server: FakeServer, make_backend, kind: str) -> None:
    server.script.append(MALFORMED[kind][0])
    assert make_backend().generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    assert len(server.requests) == 2
    assert server.requests[0]["seed"] == server.requests[1]["seed"]  # the same request, asked again


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_always_malformed_200(server: FakeServer, make_backend, kind: str) -> None:
    reply, problem = MALFORMED[kind]
    server.default = reply
    with pytest.raises(BackendError) as info:
        make_backend(max_retries=2).generate([chat("a")], n=1, sampling=SAMPLING)
    message = str(info.value)
    assert "HTTP 200 with a body that is not a chat completion (" in message
    assert problem in message and "after 3 attempts;" in message
    assert server.base_url in message and "test-model" in message
    assert "\n" not in message
    assert SECRET not in message and "oops" not in message and "Login" not in message  # never the body
    assert info.value.__cause__ is None and info.value.__context__ is None  # no chained traceback
    assert len(server.requests) == 3


def test_malformed_200_backoff_doubles(server: FakeServer, make_backend, monkeypatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(openai_compat, "time", type("FakeTime", (), {"sleep": staticmethod(waits.append)}))
    monkeypatch.setattr(openai_compat, "MALFORMED_RETRY_DELAY_S", 0.25)
    server.default = Reply(body=HTML, content_type="text/html")
    with pytest.raises(BackendError, match=r"\(text/html, not JSON\) after 4 attempts"):
        make_backend(max_retries=3).generate([chat("a")], n=1, sampling=SAMPLING)
    assert waits == [0.25, 0.5, 1.0]


def test_malformed_200_no_retries(server: FakeServer, make_backend) -> None:
    server.default = Reply(body=b"{}")
    with pytest.raises(BackendError, match="after 1 attempt;"):
        make_backend(max_retries=0).generate([chat("a")], n=1, sampling=SAMPLING)
    assert len(server.requests) == 1


# --- where the API key goes -----------------------------------------------------------------------------


def key_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "API key" in r.getMessage() or "not sending" in r.getMessage()
    ]


def test_default_key_env_is_withheld_from_other_hosts(server: FakeServer, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = OpenAIBackendConfig.model_validate({"model": "m", "base_url": server.base_url})  # as a recipe
    backend = OpenAIBackend(config)
    try:
        assert backend.generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    finally:
        backend.close()
    assert server.auth == ["Bearer EMPTY"]
    host = server.base_url.split("/")[2]
    [line] = key_records(caplog)
    assert f"not sending $OPENAI_API_KEY to {host}" in line
    assert "name api_key_env explicitly" in line
    assert SECRET not in caplog.text


def test_withheld_key_needs_no_variable(server: FakeServer, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(OpenAIBackendConfig(model="m", base_url=server.base_url))
    backend.close()


def test_withheld_key_401_says_so(server: FakeServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.default = Reply(status=401)
    backend = OpenAIBackend(OpenAIBackendConfig(model="m", base_url=server.base_url, max_retries=0))
    try:
        with pytest.raises(BackendError, match="no API key was sent.*name api_key_env explicitly"):
            backend.generate([chat("a")], n=1, sampling=SAMPLING)
    finally:
        backend.close()


def test_explicit_default_key_env_is_sent(server: FakeServer, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fields = {"model": "m", "base_url": server.base_url, "api_key_env": "OPENAI_API_KEY"}
    backend = OpenAIBackend(OpenAIBackendConfig.model_validate(fields))
    try:
        assert backend.generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    finally:
        backend.close()
    assert server.auth == [f"Bearer {SECRET}"]
    host = server.base_url.split("/")[2]
    assert host.startswith("127.0.0.1:")
    [line] = key_records(caplog)
    assert line == f"OpenAI backend: sending the API key from $OPENAI_API_KEY to {host}"
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET[-12:] not in record.getMessage()


def test_key_goes_to_openai_by_default(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    backend = OpenAIBackend(OpenAIBackendConfig(model="m"))  # builds a client; sends nothing
    try:
        assert backend._client.api_key == SECRET
        assert backend._client.base_url.host == "api.openai.com"
    finally:
        backend.close()
    assert key_records(caplog) == [
        "OpenAI backend: sending the API key from $OPENAI_API_KEY to api.openai.com"
    ]


def test_missing_default_key_for_openai(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY is not set or empty.*for api.openai.com"):
        OpenAIBackend(OpenAIBackendConfig(model="m"))


def test_key_for(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    default = OpenAIBackendConfig(model="m")
    assert key_for(default) == "OPENAI_API_KEY"  # base_url None: OpenAI
    assert key_for(OpenAIBackendConfig(model="m", base_url="https://API.openai.com/v1")) == "OPENAI_API_KEY"
    local = OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:8000/v1")
    assert key_for(local) is None
    assert key_for(local, {"model", "base_url", "api_key_env"}) == "OPENAI_API_KEY"
    named = OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY")
    assert key_for(named) == "OPENAI_API_KEY"
    assert key_for(named, {"model"}) is None  # fields_set overrides the config's own
    assert key_for(OpenAIBackendConfig(model="m", base_url="http://h/v1", api_key_env="MY_KEY")) == "MY_KEY"
    assert key_for(OpenAIBackendConfig(model="m", api_key_env=None)) is None
    # A look-alike host is not OpenAI's.
    assert key_for(OpenAIBackendConfig(model="m", base_url="https://api.openai.com.evil.test/v1")) is None
    assert key_for(OpenAIBackendConfig(model="m", base_url="https://api.openai.com@evil.test/v1")) is None
    # base_url None goes where $OPENAI_BASE_URL says: the effective host decides.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere.test/v1")
    assert key_for(default) is None
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    assert key_for(default) == "OPENAI_API_KEY"


def test_openai_base_url_env_is_where_requests_go(server: FakeServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    backend = OpenAIBackend(OpenAIBackendConfig(model="m"))
    try:
        assert backend.generate([chat("a")], n=1, sampling=SAMPLING) == [["a|0"]]
    finally:
        backend.close()
    assert server.auth == ["Bearer EMPTY"]


# --- seeds ------------------------------------------------------------------------------------------


def seeds_by_prompt(server: FakeServer) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for body in sorted(server.requests, key=lambda b: -b["n"]):  # re-asks ask for fewer
        out.setdefault(body["messages"][-1]["content"], []).append(body["seed"])
    return out


def test_seed_follows_keys(server: FakeServer, make_backend) -> None:
    backend = make_backend(seed=7)
    backend.generate([chat("a"), chat("b"), chat("c")], n=2, sampling=SAMPLING, keys=["k1", "k2", "k1"])
    seeds = seeds_by_prompt(server)
    assert seeds["a"] == seeds["c"] == [derive_seed(7, "sampling", "k1", 0)]
    assert seeds["b"] == [derive_seed(7, "sampling", "k2", 0)]
    assert seeds["a"] != seeds["b"]
    server.requests.clear()
    make_backend(seed=8).generate([chat("a")], n=2, sampling=SAMPLING, keys=["k1"])
    assert seeds_by_prompt(server)["a"] != seeds["a"]  # another recipe seed, another sample


def test_seed_default_key_is_the_conversation(server: FakeServer, make_backend) -> None:
    backend = make_backend()
    backend.generate([chat("a"), chat("b")], n=1, sampling=SAMPLING)
    backend.generate([chat("a")], n=1, sampling=SAMPLING)
    seeds = seeds_by_prompt(server)
    assert seeds["a"] == [derive_seed(0, "sampling", conversation_key(chat("a")), 0)] * 2
    assert seeds["b"] == [derive_seed(0, "sampling", conversation_key(chat("b")), 0)]


def test_seed_counts_reasks(server: FakeServer, make_backend) -> None:
    server.default = Reply(choices=1)
    make_backend(seed=3).generate([chat("a")], n=3, sampling=SAMPLING, keys=["rec"])
    assert seeds_by_prompt(server)["a"] == [derive_seed(3, "sampling", "rec", r) for r in range(3)]
    assert len(set(seeds_by_prompt(server)["a"])) == 3


def test_keys_must_match_conversations(make_backend) -> None:
    with pytest.raises(ValueError, match="2 keys for 1 conversations"):
        make_backend().generate([chat("a")], n=1, sampling=SAMPLING, keys=["x", "y"])
