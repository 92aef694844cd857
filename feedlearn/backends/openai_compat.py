"""A backend for any OpenAI-compatible chat-completions endpoint (OpenAI, a vLLM server, a teacher/judge)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence, Set
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from feedlearn.backends.base import Conversation, SamplingParams, conversation_key
from feedlearn.data.jsonl import JsonlAppender, describe_validation_error
from feedlearn.data.records import Record
from feedlearn.errors import BackendError, DataError
from feedlearn.processes import every_file, own_file
from feedlearn.seeds import derive_seed

log = logging.getLogger(__name__)

NO_KEY = "EMPTY"
"""The key sent to endpoints that need none (vLLM's convention); the client insists on some key."""

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
"""The default `api_key_env`; its key goes only to `OPENAI_HOST` unless a config names it explicitly."""

OPENAI_HOST = "api.openai.com"
OPENAI_URL = f"https://{OPENAI_HOST}/v1"

MALFORMED_RETRY_DELAY_S = 0.5
"""Wait before the first re-ask after a 200 reply that is not a chat completion; doubled each time."""
MALFORMED_RETRY_MAX_DELAY_S = 8.0


class OpenAIBackendConfig(BaseModel):
    """Where and how to reach an OpenAI-compatible endpoint. Holds the key's variable name, never the key."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model name as the endpoint knows it, e.g. 'gpt-4o-mini'.")
    base_url: str | None = Field(
        default=None,
        description="Endpoint root, e.g. 'http://localhost:8000/v1'; None: OpenAI (or $OPENAI_BASE_URL).",
    )
    api_key_env: str | None = Field(
        default=DEFAULT_KEY_ENV,
        description=(
            "Name of the environment variable holding the API key; None: the endpoint needs none. "
            f"Left out, ${DEFAULT_KEY_ENV} is sent only to {OPENAI_HOST}; name it to send it elsewhere."
        ),
    )
    max_concurrency: int = Field(default=8, ge=1, description="Most conversations requested at once.")
    max_retries: int = Field(
        default=5,
        ge=0,
        description="Retries per request on 408/409/429/5xx, malformed replies, timeouts, connection errors.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for one HTTP request.")


def effective_url(base_url: str | None) -> str:
    """The endpoint root requests go to: `base_url`, else $OPENAI_BASE_URL, else OpenAI's."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL


def host_of(url: str) -> str:
    """`host[:port]` of a URL, without any user:password part."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


def key_for(config: OpenAIBackendConfig, fields_set: Set[str] | None = None) -> str | None:
    """The environment variable whose key is sent to the endpoint, or None to send none.

    A config that leaves `api_key_env` out (`fields_set`, by default its `model_fields_set`, lacks it)
    sends $OPENAI_API_KEY only to api.openai.com, so that a recipe's `base_url` alone never gets the key.
    """
    if config.api_key_env is None:
        return None
    explicit = "api_key_env" in (config.model_fields_set if fields_set is None else fields_set)
    if explicit or config.api_key_env != DEFAULT_KEY_ENV:
        return config.api_key_env
    hostname = urlsplit(effective_url(config.base_url)).hostname
    return config.api_key_env if hostname == OPENAI_HOST else None


class _RawReply(Protocol):
    """What this module reads of the client's raw response (`with_raw_response`)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


class _Malformed(Exception):
    """A 200 reply that is not a chat completion; the message says how, never what the body holds."""


def reply_contents(body: bytes) -> list[str]:
    """The messages' contents of a chat-completion body (None content: ""); `_Malformed` if it is none."""
    try:
        data = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        raise _Malformed("not JSON") from None
    if not isinstance(data, dict):
        raise _Malformed("JSON, but not an object")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise _Malformed("an 'error' object, no 'choices'" if "error" in data else "no 'choices' list")
    contents = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise _Malformed("a choice without a 'message' object")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise _Malformed("a message whose 'content' is not text")
        contents.append(content or "")
    return contents


class PaidReply(Record):
    """The replies one request got, kept so that a stage run again never pays for them twice."""

    id: str = Field(description="A hash of the model, conversation, n, sampling settings and seed.")
    replies: list[str]


def paid_replies(path: Path) -> dict[str, list[str]]:
    """The replies saved at `path` and by the other processes of a run beside it (`own_file`), by request
    id; a last line another process is still writing (no newline yet) is left for it to finish."""
    known = {}
    for file in every_file(path):
        text = file.read_text(encoding="utf-8")
        for lineno, line in enumerate(text[: text.rfind("\n") + 1].splitlines(), start=1):
            try:
                paid = PaidReply.model_validate_json(line)
            except ValidationError as err:
                raise DataError(f"{file}:{lineno}: {describe_validation_error(err)}") from None
            known[paid.id] = paid.replies
    return known


class OpenAIBackend:
    """Samples replies from an OpenAI-compatible chat-completions endpoint, several conversations at once.

    Retries and backoff on HTTP errors (exponential, honouring Retry-After) are the `openai` client's own;
    a 200 reply that is not a chat completion is asked again here, as often. Once retries run out, or on a
    non-retryable error (400, 401, 404...), `generate` raises `BackendError`.

    Every request carries a `seed` derived from `seed`, the conversation's key and the re-ask's number,
    so that endpoints that honour it sample the same replies for the same run.
    """

    def __init__(self, config: OpenAIBackendConfig, seed: int = 0, replies: Path | None = None) -> None:
        """The backend `config` describes; `seed` (the recipe's) seeds its requests. Reads the API key now,
        from the variable `key_for` picks: an `api_key_env` not given sends $OPENAI_API_KEY to OpenAI only.

        With `replies` (a JSONL file in the run folder), every conversation's replies are saved as they
        arrive, and a conversation asked again with the same settings is answered from the file: a stage
        stopped by a failure midway (a dead endpoint, a crash) keeps every reply it had paid for. Under
        several processes each writes its own file beside it and reads them all (see `paid_replies`).
        """
        self._paid = JsonlAppender(own_file(replies), PaidReply) if replies is not None else None
        self._known = paid_replies(replies) if replies is not None else {}
        self._paid_lock = threading.Lock()
        self.config = config
        self.seed = seed

        url = effective_url(config.base_url)
        host = host_of(url)
        self._key_env = key_for(config)
        self._key_withheld = config.api_key_env is not None and self._key_env is None
        if self._key_env is None:
            api_key = NO_KEY
            if self._key_withheld:
                log.info(
                    "OpenAI backend: not sending $%s to %s (the default api_key_env goes only to %s); "
                    "to send a key there, name api_key_env explicitly, e.g. api_key_env: %s",
                    config.api_key_env,
                    host,
                    OPENAI_HOST,
                    config.api_key_env,
                )
        else:
            api_key = os.environ.get(self._key_env, "")
            if not api_key:
                raise BackendError(
                    f"environment variable {self._key_env} is not set or empty; export it with the API key "
                    f"for {host}, or set api_key_env to null if the endpoint needs no key"
                )
            log.info("OpenAI backend: sending the API key from $%s to %s", self._key_env, host)
        # The key lives only inside the client; nothing here prints or logs the client.
        self._client = openai.OpenAI(
            api_key=api_key, base_url=url, max_retries=config.max_retries, timeout=config.timeout_s
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.config.model_dump().items())
        return f"{type(self).__name__}({fields}, seed={self.seed!r})"

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingParams,
        keys: Sequence[str] | None = None,
    ) -> list[list[str]]:
        """Return `n` replies for each conversation, in input order; raise `BackendError` if any fails.

        `keys` names each conversation's record (default: `conversation_key` of its messages); it seeds the
        conversation's requests.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if keys is not None and len(keys) != len(conversations):
            raise ValueError(f"got {len(keys)} keys for {len(conversations)} conversations")
        if not conversations:
            return []
        if keys is None:
            keys = [conversation_key(conversation) for conversation in conversations]
        pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency)
        try:
            futures = [
                pool.submit(self._sample, conv, key, n, sampling)
                for conv, key in zip(conversations, keys, strict=True)
            ]
            wait(futures, return_when=FIRST_EXCEPTION)
            # If one failed, result() re-raises it; `finally` cancels what has not started, awaits the rest.
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _sample(self, conversation: Conversation, key: str, n: int, sampling: SamplingParams) -> list[str]:
        """Collect `n` replies for one conversation, asking again if the server returns fewer choices;
        replies saved by an earlier run are reused."""
        text = json.dumps([self.config.model, list(conversation), n, sampling.model_dump(), self.seed, key])
        request = hashlib.sha256(text.encode()).hexdigest()[:32]
        if request in self._known:
            return list(self._known[request])
        replies = self._ask(conversation, key, n, sampling)
        if self._paid is not None:
            with self._paid_lock:
                self._paid.append(PaidReply(id=request, replies=replies))
                self._known[request] = replies
        return replies

    def _ask(self, conversation: Conversation, key: str, n: int, sampling: SamplingParams) -> list[str]:
        replies: list[str] = []
        ask = 0  # re-asks so far; part of each request's seed
        while len(replies) < n:
            wanted = n - len(replies)
            seed = derive_seed(self.seed, "sampling", key, ask)
            contents = self._request(conversation, wanted, sampling, seed)
            if not contents:
                raise BackendError(
                    f"{self._where()}: the reply had no choices; "
                    "check that the endpoint speaks chat completions"
                )
            if len(contents) < wanted:
                log.debug("asked for %d replies, got %d; asking again", wanted, len(contents))
            replies.extend(contents)
            ask += 1
        return replies[:n]

    def _request(self, conversation: Conversation, n: int, sampling: SamplingParams, seed: int) -> list[str]:
        """One chat completion's contents; a 200 reply that is not one is asked again up to `max_retries`
        times (after `MALFORMED_RETRY_DELAY_S`, doubled each time); failures become `BackendError`."""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(MALFORMED_RETRY_DELAY_S * 2 ** (attempt - 1), MALFORMED_RETRY_MAX_DELAY_S))
            raw = self._post(conversation, n, sampling, seed)
            what = _content_type(raw.headers.get("content-type"))
            try:
                return reply_contents(raw.content)
            except _Malformed as err:
                problem = f"{what}, {err}"
            if attempt + 1 < attempts:
                log.info("%s: %s; asking again", self._where(), _not_a_completion(problem))
        plural = "s" if attempts > 1 else ""
        raise BackendError(
            f"{self._where()}: {_not_a_completion(problem)} after {attempts} attempt{plural}; "
            "check that base_url is a chat-completions endpoint (usually ending in /v1)"
        )

    def _post(self, conversation: Conversation, n: int, sampling: SamplingParams, seed: int) -> _RawReply:
        """One chat-completions call (with the client's retries), its failures turned into `BackendError`."""
        try:
            return self._client.chat.completions.with_raw_response.create(
                model=self.config.model,
                messages=list(conversation),  # type: ignore[arg-type]
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
            )
        # `from None` throughout: the openai exception's text holds the server's reply body, which may
        # echo the request or a (masked) key.
        except openai.APIStatusError as err:
            attempts = self._attempts(err.response.request)
            raise BackendError(
                f"{self._where()}: HTTP {err.status_code} after {attempts}; {self._advice(err.status_code)}"
            ) from None
        except openai.APITimeoutError as err:
            raise BackendError(
                f"{self._where()}: timeout (no reply within {self.config.timeout_s:g} s) after "
                f"{self._attempts(err.request)}; check the server is up, or raise timeout_s or max_retries"
            ) from None
        except openai.APIConnectionError as err:
            raise BackendError(
                f"{self._where()}: connection failed after {self._attempts(err.request)}; "
                "check base_url and that the server is running"
            ) from None
        except openai.OpenAIError as err:
            raise BackendError(
                f"{self._where()}: {type(err).__name__}; check that the endpoint speaks chat completions"
            ) from None

    def _where(self) -> str:
        return f"OpenAI backend at {self._client.base_url} (model {self.config.model!r})"

    def _attempts(self, request: object) -> str:
        """How many attempts the client made, from the retry-count header it puts on every request."""
        try:
            count = int(request.headers["x-stainless-retry-count"]) + 1  # type: ignore[attr-defined]
        except (AttributeError, KeyError, ValueError, RuntimeError):
            return f"up to {self.config.max_retries + 1} attempts"
        return f"{count} attempt{'s' if count > 1 else ''}"

    def _advice(self, status: int) -> str:
        if status in (401, 403):
            if self._key_withheld:
                return (
                    f"no API key was sent (the default api_key_env, {DEFAULT_KEY_ENV}, goes only to "
                    f"{OPENAI_HOST}); name api_key_env explicitly to send one"
                )
            source = f"${self._key_env}" if self._key_env else "api_key_env (now null)"
            return f"the endpoint refused the API key; check {source}"
        if status == 404:
            return "check base_url (usually ends in /v1) and the model name"
        if status == 429:
            return "rate limited; lower max_concurrency or raise max_retries"
        if status >= 500:
            return "the server failed; check its logs, or raise max_retries"
        return "the endpoint rejected the request; check the model name and sampling parameters"


def _content_type(header: str | None) -> str:
    """The media type of a Content-Type header, short and printable (it comes from the server)."""
    media = (header or "").split(";")[0].strip().lower()
    media = "".join(c for c in media if c.isprintable())[:60]
    return media or "no content-type"


def _not_a_completion(problem: str) -> str:
    return f"HTTP 200 with a body that is not a chat completion ({problem})"
