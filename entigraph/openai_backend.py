"""The `openai` backend: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, others);
and `OpenAIService`, its HTTP layer, which the rag protocol also uses for embeddings and rerank.

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
import json
import logging
import os
import random
import time
from typing import Any, Callable, Optional, TypeVar

import httpx2  # the HTTP library openai>=3 is built on (its Limits/Timeout types)
import openai

from entigraph.errors import EntigraphError
from entigraph.llm import (ChatRequest, ChatResult, GeneratorError, chat_body,
                           rejects_response_format, resolve_structured_output)
from entigraph.rate_limits import AdaptiveConcurrency

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
PREFLIGHT_TIMEOUT_S = 5.0
# A local server (vLLM) needs no key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "EMPTY"
# 408 is the server saying "your request timed out": as retryable as our own timeouts.
RETRYABLE_STATUS = frozenset({408, 429})
# No request can succeed: a rejected key, no access, an unknown model or a wrong base_url.
FATAL_STATUS = frozenset({401, 403, 404})


class RequestFailed(EntigraphError):
    """One request failed for good (a bad request, or retries exhausted); the run can go on.

    Deliberately not a GeneratorError: the engine stops the whole run on GeneratorError and
    records any other exception as one failed call (and stops after many in a row). `status` is
    None for timeouts and connection errors.
    """

    def __init__(self, message: str, *, status: Optional[int], attempts: int):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def resolve_api_key(api_key_env: Optional[str], base_url: Optional[str],
                    config_key: str = "generator") -> str:
    """The key from the environment, a placeholder for a keyless local server, or a clear error
    naming `config_key` (the config node holding api_key_env and base_url)."""
    k = config_key
    if api_key_env:
        key = os.environ.get(api_key_env, "")
        if not key:
            raise GeneratorError(
                f"{k}.api_key_env={api_key_env} but {api_key_env} is not set; "
                f"export it (keys never go in configs)")
        return key
    if base_url:
        return PLACEHOLDER_KEY
    raise GeneratorError(
        f"{k}.api_key_env is not set and {k}.base_url is null (OpenAI's own API); "
        f"set {k}.api_key_env=OPENAI_API_KEY and export that variable")


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


def root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return exc


def describe(exc: BaseException) -> str:
    """A one-line reason for an SDK error: the status and the server's message, or the network
    error underneath (the SDK's own "Connection error." names nothing)."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APIConnectionError):
        root = root_cause(exc)
        # The aiohttp transport reports a refused connection as a connect *timeout*: a network
        # error underneath says what really happened.
        refused = isinstance(root, OSError) and not isinstance(root, TimeoutError)
        if isinstance(exc, openai.APITimeoutError) and not refused:
            return "timed out"
        return f"connection error: {root}" if root is not exc and str(root) else "connection error"
    return f"{type(exc).__name__}: {exc}"


def estimate_tokens(text: str) -> int:
    # ~4 characters per token for English: only used when a server reports no usage.
    return len(text) // 4


class OpenAIService:
    """JSON POSTs to one OpenAI-compatible server (chat, embeddings, rerank) under our retry
    rules: a concurrency slot, rate-limit feedback, Retry-After, full-jitter backoff, fatal
    401/403/404. `service_cfg` has the fields of config.ModelService (model, base_url,
    api_key_env, max_in_flight, max_retries, request_timeout_s); `config_key` is its node in
    the config (generator, eval.rag.retriever, ...), named in every message."""

    def __init__(self, service_cfg: Any, *, config_key: str = "generator",
                 backoff_base_s: float = BACKOFF_BASE_S, backoff_cap_s: float = BACKOFF_CAP_S,
                 preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S, transport: str = "aiohttp"):
        self.model: str = service_cfg.model
        self.base_url: Optional[str] = service_cfg.base_url
        self.api_key_env: Optional[str] = service_cfg.api_key_env
        self.max_retries: int = int(service_cfg.max_retries)
        self.timeout_s: float = float(service_cfg.request_timeout_s)
        self.config_key = config_key
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.preflight_timeout_s = preflight_timeout_s
        self.transport = transport  # "aiohttp" (falls back to httpx if missing) or "httpx"
        self._key = resolve_api_key(self.api_key_env, self.base_url, config_key)
        self._client = self._make_client(int(service_cfg.max_in_flight))
        # Requests in flight: up to max_in_flight, fewer while the server's rate limits say so.
        self.concurrency = AdaptiveConcurrency(int(service_cfg.max_in_flight))

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def _make_client(self, max_in_flight: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url, max_retries=0,
                                  timeout=self._timeout(self.timeout_s),
                                  http_client=self._http_client(max_in_flight))

    def _http_client(self, max_in_flight: int) -> httpx2.AsyncClient:
        """The SDK's aiohttp transport when aiohttp is installed, else its default (httpx).

        Why aiohttp: httpx's connection pool rescans every connection on each request event, so
        at 256 in flight a request costs ~2.6 ms of client CPU through httpx and ~1.4 ms through
        aiohttp, and a 1 s-latency server is driven at 0.65 vs 0.72 of ideal over three waves
        (benchmarks/generation.py). Both are official SDK clients raising the same errors; the
        aiohttp session is opened lazily, inside the event loop that first uses it.
        """
        # One connection per request in flight (plus a few for preflight and retries), all kept
        # alive: a pool smaller than the engine's concurrency would queue requests inside the
        # client and turn waiting for a connection into spurious timeouts.
        connections = max_in_flight + 8
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        timeout = self._timeout(self.timeout_s)
        if self.transport == "aiohttp":
            try:
                return openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
            except RuntimeError:  # aiohttp not installed: the SDK says so at construction
                log.info("aiohttp is not installed; using the httpx transport")
        return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)

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

    def _wait_before_retry(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait before retry number `attempt + 1`: Retry-After if given, else jitter."""
        response = getattr(exc, "response", None)
        hinted = retry_after_s(getattr(response, "headers", None), self.backoff_cap_s)
        if hinted is not None:
            return hinted
        return backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s)

    def _failure(self, key: str, exc: BaseException, attempts: int) -> Exception:
        """The exception for request `key` when it will not be retried (again)."""
        where = self.base_url or "the OpenAI API"
        status = status_of(exc)
        if status in FATAL_STATUS:
            k = self.config_key
            return GeneratorError(self._scrub(
                f"{where} refused the request with {describe(exc)}; check {k}.model, "
                f"{k}.base_url and the key in ${self.api_key_env or '(none)'}"))
        what = ("not retried" if not is_retryable(exc)
                else f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}")
        return RequestFailed(self._scrub(f"{where}: request {key} failed ({what}): "
                                         f"{describe(exc)}"), status=status, attempts=attempts)

    def _resend_at_once(self, sent: dict[str, Any], exc: BaseException) -> bool:
        """True when the failed body `sent` should go again now, changed, not as a retry."""
        return False

    async def post(self, path: str, body: Callable[[], dict[str, Any]], key: str,
                   parse: Callable[[dict], tuple[T, int]]) -> T:
        """POST `body()` (built afresh for each attempt) to `path` until it succeeds, a failure
        is not worth retrying, or max_retries is spent. `parse(reply)` gives the result and the
        tokens it cost (the rate-limit pacing); `key` names the request in messages. Raises
        GeneratorError when no request can succeed (401/403/404), else RequestFailed."""
        attempt = 0
        while True:
            sent = body()
            try:
                async with self.concurrency.slot() as ticket:
                    # post() for the raw response: the official client's HTTP layer and error
                    # mapping, without validating the body against every message type and
                    # building response models (about half of its CPU per request, measured),
                    # and with the headers, whose quota figures pace the requests.
                    response = await self._client.post(path, body=sent, cast_to=httpx2.Response)
                    result, tokens = parse(json.loads(await response.aread()))
                    self.concurrency.succeeded(ticket, tokens, response.headers)
                return result
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                if status_of(exc) == 429:
                    self.concurrency.rejected(ticket, exc.response.headers)
                if self._resend_at_once(sent, exc):
                    continue
                if not is_retryable(exc) or attempt >= self.max_retries:
                    raise self._failure(key, exc, attempt + 1) from None
                delay = self._wait_before_retry(exc, attempt)
                log.debug("retrying %s after %s (attempt %d of %d) in %.2fs", key,
                          self._scrub(describe(exc)), attempt + 2, self.max_retries + 1, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def preflight(self, models_listed: bool = True) -> None:
        """Fail in seconds, with the fix, when the server is unreachable or rejects the key.
        models_listed=False: a server without GET /models (Cohere's and Jina's rerank APIs) is
        let through; a wrong base_url then fails the first request with 404, as fatal."""
        where, k = self.base_url or "the OpenAI API", self.config_key
        try:
            page = await self._client.models.list(timeout=self._timeout(self.preflight_timeout_s))
        except openai.AuthenticationError:
            source = f"${self.api_key_env}" if self.api_key_env else "(no key configured)"
            raise GeneratorError(f"{where}: the server rejected the API key in {source}; "
                                 f"check the key or {k}.api_key_env") from None
        except openai.APIConnectionError as exc:
            raise GeneratorError(self._scrub(
                f"cannot reach {where}: {describe(exc)}; is the server running? "
                f"check {k}.base_url")) from None
        except openai.APIStatusError as exc:
            if exc.status_code == 404 and not models_listed:
                return
            raise GeneratorError(self._scrub(
                f"{where} answered GET /models with {describe(exc)}; "
                f"check {k}.base_url (it usually ends in /v1)")) from None
        served = [model.id for model in page.data]
        if served and self.model not in served:
            # Only a warning: some providers list a subset of what they serve. A model the
            # server really lacks fails the first request with 404, which stops the run.
            log.warning("%s does not list %s.model=%s (it lists %s)", where, k, self.model,
                        ", ".join(served[:5]) + (", ..." if len(served) > 5 else ""))

    async def aclose(self) -> None:
        await self._client.close()


class OpenAIBackend(OpenAIService):
    """The Backend protocol over an OpenAI-compatible chat completions endpoint."""

    def __init__(self, generator_cfg: Any, **options: Any):
        super().__init__(generator_cfg, config_key="generator", **options)
        # json_schema or json_object; a server that refuses the schema switches it
        # (_resend_at_once).
        self.structured_output: str = resolve_structured_output(
            generator_cfg.structured_output, "openai", generator_cfg.model)

    def _create_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        return chat_body(request, self.model, self.structured_output)

    @staticmethod
    def _result(completion: dict, request: ChatRequest) -> ChatResult:
        text = completion["choices"][0]["message"].get("content") or ""
        usage = completion.get("usage")
        if usage:
            return ChatResult(text, usage["prompt_tokens"], usage["completion_tokens"])
        # Some servers omit usage: estimate (~4 characters per token) so the cost and token
        # budgets still move rather than silently staying at zero.
        prompt = "".join(str(m.get("content", "")) for m in request.messages)
        return ChatResult(text, estimate_tokens(prompt), estimate_tokens(text))

    def _resend_at_once(self, sent: dict[str, Any], exc: BaseException) -> bool:
        """True when the server refused the JSON schema we sent: the rest of this run asks for
        JSON mode (some models, gpt-4-turbo among them, take only that)."""
        if (sent.get("response_format") or {}).get("type") != "json_schema" \
                or not rejects_response_format(describe(exc)):
            return False
        if self.structured_output == "json_schema":  # concurrent refusals switch once
            self.structured_output = "json_object"
            log.warning("%s refused response_format json_schema for %s (%s); asking for JSON "
                        "mode (json_object) from now on in this run", self.base_url or
                        "the OpenAI API", self.model, self._scrub(describe(exc)))
        return True

    async def complete(self, request: ChatRequest) -> ChatResult:
        def parse(completion: dict) -> tuple[ChatResult, int]:
            result = self._result(completion, request)
            return result, result.input_tokens + result.output_tokens

        return await self.post("/chat/completions", lambda: self._create_kwargs(request),
                               request.key, parse)
