"""`feedlearn serve`: what a run trained, behind an OpenAI-compatible server (`/v1/models`,
`/v1/chat/completions` with n, temperature, top_p, max_tokens, seed and streaming).

The target is a run folder (its last trained policy and its chat template) or a model folder (a whole
model, or a LoRA adapter on its base). With vLLM installed, vLLM's own server runs it (`vllm serve`, the
adapter through `--lora-modules`); otherwise a FastAPI app over the local backend does. The server binds
127.0.0.1 unless told otherwise, and binding any other address requires an API key, read from an
environment variable, that every request must carry. Requests over the limits (n, max_tokens, prompt
length, body size) get a 400 / 413 with the reason.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.backends.vllm_backend import adapter_base
from feedlearn.config import read_yaml
from feedlearn.data.store import is_done
from feedlearn.errors import ConfigError
from feedlearn.methods.registry import method_info
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import ModelSettings, load_policy

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_BODY_BYTES = 1_000_000
MAX_CHARS_PER_TOKEN = 32
"""A prompt longer than this many characters per allowed token is refused before it is tokenized."""


class ServeSettings(BaseModel):
    """Where the server listens and what one request may ask for."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address to bind; another than loopback needs a key.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on (0: any free one).")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key every request must carry."
    )
    name: str | None = Field(default=None, description="The model's name in the API (default: the folder's).")
    engine: Literal["auto", "local", "vllm"] = Field(
        default="auto", description="vllm: vLLM's server; local: feedlearn's; auto: vLLM where installed."
    )
    max_n: int = Field(default=16, gt=0, description="Most samples one request may ask for.")
    max_tokens: int = Field(default=1024, gt=0, description="Longest completion one request may ask for.")
    max_prompt_tokens: int = Field(default=4096, gt=0, description="Longest prompt, in tokens.")
    batch_size: int = Field(default=16, gt=0, description="Local engine: sequences per generate call.")


# ---- what to serve ------------------------------------------------------------------------------------


def trained_model(target: Path) -> tuple[Path, str | None]:
    """The model folder to serve and its chat template: a run folder's last finished policy (per its
    method's layout; a policy is finished once its `done.json` is written, as resume decides) with the run's
    template, `target` itself when it holds a model or an adapter, or the folder of a bundled or named
    model (`rise-tiny-base`, `smollm2-135m-instruct`)."""
    if not target.exists() and (named := Path(ModelSettings(path=str(target)).path)).is_dir():
        return named, None
    if (target / "config.json").exists() or (target / "adapter_config.json").exists():
        return target, None
    config = target / "config.yaml"
    if not config.exists():
        raise ConfigError(f"{target} is neither a run folder (no config.yaml) nor a model folder")
    recipe = read_yaml(config)
    method = recipe.get("method")
    for folder in method_info(method, str(config)).layout(target, method).policies():
        if is_done(folder):
            return folder, (recipe.get("model") or {}).get("chat_template")
    raise ConfigError(
        f"run {target} ({recipe.get('method')}) has no trained policy yet: run its train stages, or pass a "
        "model folder"
    )


def api_key(settings: ServeSettings) -> str | None:
    """The key requests must carry: required to bind beyond loopback, read from `api_key_env`."""
    if settings.api_key_env is None:
        if settings.host not in LOOPBACK:
            raise ConfigError(
                f"binding {settings.host} exposes the model beyond this machine: set --api-key-env VAR "
                "and export VAR with a key every request must carry"
            )
        return None
    key = os.environ.get(settings.api_key_env, "")
    if not key:
        raise ConfigError(f"environment variable {settings.api_key_env} is not set or empty")
    return key


# ---- vLLM's server ------------------------------------------------------------------------------------


def vllm_serve_command(model: Path, name: str, settings: ServeSettings, template: Path | None) -> list[str]:
    """The `vllm serve` command line for `model` (an adapter: on its base, through `--lora-modules`). The
    key, if any, goes through the environment ($VLLM_API_KEY), never the command line."""
    base = adapter_base(str(model))
    command = ["vllm", "serve", base or str(model), "--host", settings.host, "--port", str(settings.port)]
    if base is not None:
        rank = json.loads((model / "adapter_config.json").read_text()).get("r", 64)
        command += [
            "--enable-lora",
            "--lora-modules",
            f"{name}={model.resolve()}",
            "--max-lora-rank",
            str(rank),
        ]
    else:
        command += ["--served-model-name", name]
    if template is not None:
        command += ["--chat-template", str(template)]
    return command + ["--max-model-len", str(settings.max_prompt_tokens + settings.max_tokens)]


def _run_vllm(model: Path, name: str, settings: ServeSettings, chat_template: str | None, key: str | None):
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        template = None
        if chat_template is not None:
            template = Path(tmp) / "chat_template.jinja"
            template.write_text(chat_template, encoding="utf-8")
        command = vllm_serve_command(model, name, settings, template)
        env = {**os.environ, **({"VLLM_API_KEY": key} if key else {})}
        log.info("starting vLLM's server: %s", " ".join(command))
        subprocess.run(command, env=env, check=True)


# ---- feedlearn's own server ----------------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _encodable(cls, content: str) -> str:
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not valid UTF-8 text (a lone surrogate such as \\ud800)") from None
        return content


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat-completions request this server honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stream: bool = False


def build_app(backend: LocalBackend, name: str, settings: ServeSettings, key: str | None):
    """The FastAPI app serving `backend` as model `name`, one generation at a time."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title=f"feedlearn: {name}")
    lock = threading.Lock()

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return error(400, f"the body is not valid JSON: {first['msg']}")
        field = ".".join(str(p) for p in first["loc"][1:]) or "body"
        return error(400, f"field '{field}': {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown paths and methods, in the OpenAI form too
        return error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return error(
                    401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error"
                )
        return await call_next(request)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, refuse=error)
    positions = getattr(backend.model.config, "max_position_embeddings", None)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "feedlearn"}]}

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest):
        wanted = body.max_completion_tokens or body.max_tokens or min(256, settings.max_tokens)
        if body.model not in (None, name):
            return error(404, f"model '{body.model}' is not served here; this server serves '{name}'")
        if body.n > settings.max_n:
            return error(400, f"n is {body.n}; this server allows at most {settings.max_n}")
        if wanted > settings.max_tokens:
            return error(400, f"max_tokens is {wanted}; this server allows at most {settings.max_tokens}")
        messages = [m.model_dump() for m in body.messages]
        chars = sum(len(m["content"]) for m in messages)
        if chars > settings.max_prompt_tokens * MAX_CHARS_PER_TOKEN:
            return error(
                400,
                f"the prompt is {chars} characters; this server allows at most {settings.max_prompt_tokens} "
                "tokens",
            )
        length = len(prompt_ids(backend.tokenizer, messages))
        if length > settings.max_prompt_tokens:
            return error(
                400, f"the prompt is {length} tokens; this server allows at most {settings.max_prompt_tokens}"
            )
        if positions is not None and length + wanted > positions:
            return error(
                400,
                f"the prompt is {length} tokens and max_tokens {wanted}: more than the model's {positions} "
                "positions",
            )
        sampling = SamplingParams(temperature=body.temperature, top_p=body.top_p, max_new_tokens=wanted)
        seed_key = f"serve/{body.seed}" if body.seed is not None else f"serve/{uuid.uuid4()}"
        with lock:
            (replies,) = backend.generate_ids([messages], body.n, sampling, keys=[seed_key])
        texts = backend.tokenizer.batch_decode(replies, skip_special_tokens=True)
        counts = [len(ids) for ids in replies]
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        finish = ["length" if c == wanted else "stop" for c in counts]
        if body.stream:
            return StreamingResponse(
                _events(reply_id, created, name, texts, finish), media_type="text/event-stream"
            )
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                for i, (t, f) in enumerate(zip(texts, finish, strict=True))
            ],
            "usage": {
                "prompt_tokens": length,
                "completion_tokens": sum(counts),
                "total_tokens": length + sum(counts),
            },
        }

    return app


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413, counted as it arrives (a chunked
    body has no Content-Length), so no more than `limit` bytes of it are ever held."""

    def __init__(self, app, limit: int, refuse):
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit():
            return await self.refuse(400, "Content-Length is not a number")(scope, receive, send)
        chunks, size, more = [], 0, int(declared) <= self.limit
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False) and size <= self.limit
        if int(declared) > self.limit or size > self.limit:
            return await self.refuse(413, f"request body over {self.limit} bytes")(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def _events(reply_id: str, created: int, name: str, texts: list[str], finish: list[str]):
    """Server-sent events of a finished generation, in OpenAI's chunk format: per choice its role, its
    text, its finish reason; then [DONE]. (The local engine streams a reply once it is whole.)"""

    def chunk(index: int, delta: dict, reason: str | None) -> str:
        body = {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": index, "delta": delta, "finish_reason": reason}],
        }
        return f"data: {json.dumps(body)}\n\n"

    for i, (text, reason) in enumerate(zip(texts, finish, strict=True)):
        yield chunk(i, {"role": "assistant", "content": ""}, None)
        yield chunk(i, {"content": text}, None)
        yield chunk(i, {}, reason)
    yield "data: [DONE]\n\n"


def serve(target: str, settings: ServeSettings) -> None:
    """Serve `target` (a run folder or a model folder) until interrupted."""
    model, chat_template = trained_model(Path(target))
    key = api_key(settings)
    named = (Path(target) / "config.yaml").exists() or not Path(target).exists()  # a run, or a model's name
    name = settings.name or (Path(target).name if named else model.name)
    has_vllm = importlib.util.find_spec("vllm") is not None and shutil.which("vllm") is not None
    if settings.engine == "vllm" and not has_vllm:
        raise ConfigError(
            "--engine vllm: vLLM is not installed here (pip install vllm), or pass --engine local"
        )
    use_vllm = settings.engine == "vllm" or (settings.engine == "auto" and has_vllm)
    if use_vllm:
        _run_vllm(model, name, settings, chat_template, key)
        return
    import uvicorn

    policy, tokenizer = load_policy(ModelSettings(path=str(model), chat_template=chat_template))
    app = build_app(LocalBackend(policy, tokenizer, settings.batch_size, progress=False), name, settings, key)
    log.info("serving %s as '%s' on http://%s:%d/v1", model, name, settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
