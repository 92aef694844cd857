"""A backend for any OpenAI-compatible chat-completions endpoint (OpenAI, a vLLM server, a teacher/judge)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from feedlearn.backends.base import Conversation, SamplingParams
from feedlearn.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

NO_KEY = "EMPTY"
"""The key sent to endpoints that need none (vLLM's convention); the client insists on some key."""


class OpenAIBackendConfig(BaseModel):
    """Where and how to reach an OpenAI-compatible endpoint. Holds the key's variable name, never the key."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model name as the endpoint knows it, e.g. 'gpt-4o-mini'.")
    base_url: str | None = Field(
        default=None,
        description="Endpoint root, e.g. 'http://localhost:8000/v1'; None: OpenAI (or $OPENAI_BASE_URL).",
    )
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY",
        description="Name of the environment variable holding the API key; None: the endpoint needs none.",
    )
    max_concurrency: int = Field(default=8, ge=1, description="Most conversations requested at once.")
    max_retries: int = Field(
        default=5, ge=0, description="Retries per request on 408/409/429/5xx, timeouts and connection errors."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for one HTTP request.")


class OpenAIBackend:
    """Samples replies from an OpenAI-compatible chat-completions endpoint, several conversations at once.

    Retries and backoff (exponential, honouring Retry-After) are the `openai` client's own; once they run
    out, or on a non-retryable error (400, 401, 404...), `generate` raises `BackendError`.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 60.0,
    ) -> None:
        """See `OpenAIBackendConfig` for the arguments. Reads the API key from `$api_key_env` now."""
        try:
            self.config = OpenAIBackendConfig(
                model=model,
                base_url=base_url,
                api_key_env=api_key_env,
                max_concurrency=max_concurrency,
                max_retries=max_retries,
                timeout_s=timeout_s,
            )
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"OpenAI backend: {where}: {first['msg']}") from None

        if api_key_env is None:
            api_key = NO_KEY
        else:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise BackendError(
                    f"environment variable {api_key_env} is not set or empty; export it with the API key "
                    f"for {base_url or 'OpenAI'}, or set api_key_env to null if the endpoint needs no key"
                )
        # The key lives only inside the client; nothing here prints or logs the client.
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )

    @classmethod
    def from_config(cls, config: OpenAIBackendConfig) -> OpenAIBackend:
        """Build a backend from its config model."""
        return cls(**config.model_dump())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.config.model_dump().items())
        return f"{type(self).__name__}({fields})"

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def generate(
        self, conversations: Sequence[Conversation], n: int, sampling: SamplingParams
    ) -> list[list[str]]:
        """Return `n` replies for each conversation, in input order; raise `BackendError` if any fails."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency)
        try:
            futures = [pool.submit(self._sample, conv, n, sampling) for conv in conversations]
            wait(futures, return_when=FIRST_EXCEPTION)
            # If one failed, result() re-raises it; `finally` cancels what has not started, awaits the rest.
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _sample(self, conversation: Conversation, n: int, sampling: SamplingParams) -> list[str]:
        """Collect `n` replies for one conversation, asking again if the server returns fewer choices."""
        replies: list[str] = []
        while len(replies) < n:
            wanted = n - len(replies)
            completion = self._request(conversation, wanted, sampling)
            if not completion.choices:
                raise BackendError(
                    f"{self._where()}: the reply had no choices; "
                    "check that the endpoint speaks chat completions"
                )
            if len(completion.choices) < wanted:
                log.debug("asked for %d replies, got %d; asking again", wanted, len(completion.choices))
            replies.extend(choice.message.content or "" for choice in completion.choices)
        return replies[:n]

    def _request(self, conversation: Conversation, n: int, sampling: SamplingParams) -> ChatCompletion:
        """One chat-completions call (with the client's retries), its failures turned into `BackendError`."""
        try:
            return self._client.chat.completions.create(
                model=self.config.model,
                messages=list(conversation),  # type: ignore[arg-type]
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
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
            source = f"${self.config.api_key_env}" if self.config.api_key_env else "api_key_env (now null)"
            return f"the endpoint refused the API key; check {source}"
        if status == 404:
            return "check base_url (usually ends in /v1) and the model name"
        if status == 429:
            return "rate limited; lower max_concurrency or raise max_retries"
        if status >= 500:
            return "the server failed; check its logs, or raise max_retries"
        return "the endpoint rejected the request; check the model name and sampling parameters"
