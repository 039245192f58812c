"""The `openai` backend: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, others).

One shared `openai.AsyncOpenAI` client serves every request; the engine bounds how many are in
flight, so this module never queues. Retries are ours, not the SDK's (the client is built with
max_retries=0): which failures are retried, how long we wait and when we give up is then
explicit here and testable against a local server.

The API key is read from the environment variable the config names and is never logged or put
in an exception message (`_scrub` removes it from anything a server echoes back).
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from typing import Any, Callable, Optional

import httpx2  # the HTTP library openai>=3 is built on (its Limits/Timeout types)
import openai

from entigraph.llm import ChatRequest, ChatResult, GeneratorError, schema_payload

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
PREFLIGHT_TIMEOUT_S = 5.0
# A local server (vLLM) needs no key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "EMPTY"
# 408 is the server saying "your request timed out": as retryable as our own timeouts.
RETRYABLE_STATUS = frozenset({408, 429})


class RequestFailed(GeneratorError):
    """One request that failed for good: a non-retryable status, or retries exhausted.

    A GeneratorError so callers that only know the base class still stop on it; `status` (None
    for timeouts and connection errors) and `attempts` let the engine tell a bad request from a
    dead backend.
    """

    def __init__(self, message: str, *, status: Optional[int], attempts: int):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def resolve_api_key(api_key_env: Optional[str], base_url: Optional[str]) -> str:
    """The key from the environment, a placeholder for a keyless local server, or a clear error."""
    if api_key_env:
        key = os.environ.get(api_key_env, "")
        if not key:
            raise GeneratorError(
                f"generator.api_key_env={api_key_env} but {api_key_env} is not set; "
                f"export it (keys never go in configs)")
        return key
    if base_url:
        return PLACEHOLDER_KEY
    raise GeneratorError(
        "generator.api_key_env is not set and generator.base_url is null (OpenAI's own API); "
        "set generator.api_key_env=OPENAI_API_KEY and export that variable")


def backoff_delay(attempt: int, base_s: float, cap_s: float,
                  rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter spreads the retries of many requests that failed together (a 429 burst) instead
    of sending them back in lockstep.
    """
    return rng() * min(cap_s, base_s * (2 ** attempt))


def retry_after_s(headers: Any, cap_s: float) -> Optional[float]:
    """The server's requested wait (retry-after-ms, or Retry-After in seconds or an HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return min(cap_s, max(0.0, float(millis) / 1000.0))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(cap_s, max(0.0, seconds))


def is_retryable(exc: BaseException) -> bool:
    """429, 408, 5xx, timeouts and connection errors are worth another try; other 4xx are not."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return False


def status_of(exc: BaseException) -> Optional[int]:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def describe(exc: BaseException) -> str:
    """A one-line reason for an SDK error (status and the server's message)."""
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection error ({cause})" if cause else "connection error"
    return f"{type(exc).__name__}: {exc}"


def estimate_tokens(text: str) -> int:
    # ~4 characters per token for English: only used when a server reports no usage.
    return len(text) // 4


class OpenAIBackend:
    """The Backend protocol over an OpenAI-compatible chat completions endpoint."""

    def __init__(self, generator_cfg: Any, *, backoff_base_s: float = BACKOFF_BASE_S,
                 backoff_cap_s: float = BACKOFF_CAP_S,
                 preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S):
        self.cfg = generator_cfg
        self.model: str = generator_cfg.model
        self.base_url: Optional[str] = generator_cfg.base_url
        self.api_key_env: Optional[str] = generator_cfg.api_key_env
        self.max_retries: int = int(generator_cfg.max_retries)
        self.timeout_s: float = float(generator_cfg.request_timeout_s)
        self.structured_output: str = generator_cfg.structured_output
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.preflight_timeout_s = preflight_timeout_s
        self._key = resolve_api_key(self.api_key_env, self.base_url)
        self._client = self._make_client(int(generator_cfg.max_in_flight))

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def _make_client(self, max_in_flight: int) -> openai.AsyncOpenAI:
        # One connection per request in flight (plus a few for preflight and retries), all kept
        # alive: a pool smaller than the engine's concurrency would queue requests in httpx and
        # turn waiting for a connection into spurious pool timeouts.
        connections = max_in_flight + 8
        http_client = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=connections,
                                 max_keepalive_connections=connections),
            timeout=self._timeout(self.timeout_s))
        return openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url, max_retries=0,
                                  timeout=self._timeout(self.timeout_s), http_client=http_client)

    @staticmethod
    def _timeout(seconds: float) -> httpx2.Timeout:
        # Non-streaming: the server sends the body when the whole completion is done, so the
        # read timeout bounds the wait for the answer; connecting gets at most 5 s of it.
        return httpx2.Timeout(seconds, connect=min(seconds, 5.0))

    def _scrub(self, text: str) -> str:
        """Remove the key from text a server may have echoed (OpenAI echoes part of bad keys)."""
        if self._key and self._key != PLACEHOLDER_KEY:
            text = text.replace(self._key, "***")
        return text

    def _create_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(request.messages),
                                  "temperature": request.temperature}
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.json_schema is not None:
            kwargs["response_format"] = (schema_payload(request.json_schema)
                                         if self.structured_output == "json_schema"
                                         else {"type": "json_object"})
        return kwargs

    @staticmethod
    def _result(completion: Any, request: ChatRequest) -> ChatResult:
        text = completion.choices[0].message.content or ""
        usage = completion.usage
        if usage is not None:
            return ChatResult(text, usage.prompt_tokens, usage.completion_tokens)
        # Some servers omit usage: estimate (~4 characters per token) so the cost and token
        # budgets still move rather than silently staying at zero.
        prompt = "".join(str(m.get("content", "")) for m in request.messages)
        return ChatResult(text, estimate_tokens(prompt), estimate_tokens(text))

    def _wait_before_retry(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait before retry number `attempt + 1`: Retry-After if given, else jitter."""
        response = getattr(exc, "response", None)
        hinted = retry_after_s(getattr(response, "headers", None), self.backoff_cap_s)
        if hinted is not None:
            return hinted
        return backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s)

    def _failure(self, request: ChatRequest, exc: BaseException, attempts: int) -> RequestFailed:
        what = "not retried" if not is_retryable(exc) else f"gave up after {attempts} attempts"
        message = self._scrub(f"{self.base_url or 'OpenAI API'}: request {request.key} "
                              f"failed ({what}): {describe(exc)}")
        return RequestFailed(message, status=status_of(exc), attempts=attempts)

    async def complete(self, request: ChatRequest) -> ChatResult:
        kwargs = self._create_kwargs(request)
        attempt = 0
        while True:
            try:
                completion = await self._client.chat.completions.create(**kwargs)
                return self._result(completion, request)
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                if not is_retryable(exc) or attempt >= self.max_retries:
                    raise self._failure(request, exc, attempt + 1) from None
                delay = self._wait_before_retry(exc, attempt)
                log.info("retrying %s after %s (attempt %d of %d) in %.2fs", request.key,
                         self._scrub(describe(exc)), attempt + 2, self.max_retries + 1, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def preflight(self) -> None:
        """Fail in seconds, with the fix, when the server is unreachable or rejects the key."""
        where = self.base_url or "the OpenAI API"
        try:
            await self._client.models.list(timeout=self._timeout(self.preflight_timeout_s))
        except openai.AuthenticationError:
            source = f"${self.api_key_env}" if self.api_key_env else "(no key configured)"
            raise GeneratorError(f"{where}: the server rejected the API key in {source}; "
                                 f"check the key or generator.api_key_env") from None
        except openai.APIConnectionError as exc:
            raise GeneratorError(self._scrub(
                f"cannot reach {where}: {describe(exc)}; is the server running? "
                f"check generator.base_url")) from None
        except openai.APIStatusError as exc:
            raise GeneratorError(self._scrub(
                f"{where} answered GET /models with {describe(exc)}; "
                f"check generator.base_url (it usually ends in /v1)")) from None

    async def aclose(self) -> None:
        await self._client.close()
