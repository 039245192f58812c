"""A local OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

Serves GET /v1/models, POST /v1/chat/completions, POST /v1/embeddings (deterministic vectors:
hashed bags of words) and a Cohere-style POST /v1/rerank (the share of the query's words in
each document) with an injectable fixed latency, an injectable failure schedule and a scripted
responder, and counts what it saw (requests, per path too, the most requests in flight at once,
responses per status). aiohttp serves hundreds of concurrent
slow requests from one thread, so the server itself is not what a concurrency test measures.

In-process (its own event loop on a background thread):

    with OpenAIServer(latency=0.2, fail_first=2) as server:
        backend = ...(base_url=server.base_url)
        ...
        assert server.max_in_flight >= 32

As a separate process (prints "listening on <base_url>" once ready; GET /stats gives the
counters as JSON):

    python tests/openai_server.py --port 8000 --latency 1.0
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from aiohttp import web

HOST = "127.0.0.1"  # never reachable from outside the machine
MAX_BODY_BYTES = 16 * 1024 * 1024  # long documents fit; anything larger is refused (413)
SHUTDOWN_TIMEOUT_S = 1.0  # stop() does not wait for slow in-flight requests to finish
_CAPITALISED = re.compile(r"\b[A-Z][a-zA-Z]+\b")
_WORD = re.compile(r"\w+")
EMBEDDING_DIMENSIONS = 64  # when a request does not ask for `dimensions`


@dataclass
class Fault:
    """What a hook makes one request do: fail with `status`, and/or answer `delay` s later."""
    status: Optional[int] = None  # None: answer normally (after `delay` plus the latency)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    message: str = "injected failure"


# hook(n, body) -> Fault or None; n counts POST requests (chat, embeddings, rerank) from 1.
Hook = Callable[[int, dict], Optional[Fault]]

# What OpenAI answers a model without structured outputs (gpt-4-turbo) asked for a JSON schema.
JSON_SCHEMA_REFUSAL = ("Invalid parameter: 'response_format' of type 'json_schema' is not "
                       "supported with this model. Learn more about supported models at the "
                       "Structured Outputs guide")


def refuse_json_schema(n: int, body: dict) -> Optional[Fault]:
    """A hook: HTTP 400 for `response_format: json_schema`, as gpt-4-turbo answers it."""
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return Fault(400, message=JSON_SCHEMA_REFUSAL)
    return None
Responder = Callable[[dict], str]


def last_user_text(body: dict) -> str:
    users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def default_responder(body: dict) -> str:
    """Deterministic reply text: JSON extraction output when JSON was asked for, else prose."""
    user = last_user_text(body)
    if body.get("response_format"):
        entities = list(dict.fromkeys(_CAPITALISED.findall(user)))[:12]
        return json.dumps({"summary": first_words(user, 30), "entities": entities})
    digest = zlib.crc32(json.dumps(body.get("messages", []), sort_keys=True).encode())
    return f"Reply {digest:08x}: " + first_words(user, 40)


def first_words(text: str, n: int) -> str:
    return " ".join(text.split(maxsplit=n)[:n])  # maxsplit: long documents are not split whole


def count_words(body: dict) -> int:
    """Words of all messages, the usage's prompt tokens; counted by separators, not split(),
    which would cost the benchmark server ~0.1 ms per 16 KB request."""
    total = 0
    for message in body.get("messages", []):
        text = str(message.get("content") or "").strip()
        total += text.count(" ") + text.count("\n") + 1 if text else 0
    return total


def content_words(text: str) -> list[str]:
    """Lower-cased words of four letters or more: a crude stop list, so that the vectors and
    scores below follow what a text is about rather than its "the" and "of"."""
    return [w for w in _WORD.findall(text.lower()) if len(w) >= 4]


def bag_of_words_vector(text: str, dimensions: int) -> list[float]:
    """Word counts hashed into `dimensions` buckets (not normalised: clients normalise)."""
    vector = [0.0] * dimensions
    for word in content_words(text):
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    return vector


def overlap_score(query: str, document: str) -> float:
    """The share of the query's distinct content words found in the document."""
    wanted = set(content_words(query))
    return len(wanted & set(content_words(document))) / len(wanted) if wanted else 0.0


def error_body(status: int, message: str) -> dict:
    kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "code": status}}


class RateLimit:
    """OpenAI-style quotas: requests and tokens a minute, each a bucket that refills
    continuously and starts full. A request the buckets cannot cover (its prompt and completion
    tokens, counted at admission) is answered 429 with retry-after-ms; every answer carries the
    x-ratelimit-* headers OpenAI sends. `minute_s` shortens the minute for tests."""

    def __init__(self, requests: Optional[int] = None, tokens: Optional[int] = None,
                 minute_s: float = 60.0):
        self.limits = {k: v for k, v in (("requests", requests), ("tokens", tokens)) if v}
        self.minute_s = minute_s
        self.levels = {kind: float(limit) for kind, limit in self.limits.items()}
        self.admitted_tokens = 0
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        for kind, limit in self.limits.items():
            rate = limit / self.minute_s
            self.levels[kind] = min(limit, self.levels[kind] + rate * (now - self._at))
        self._at = now

    def admit(self, tokens: int) -> tuple[bool, dict[str, str]]:
        """Whether a request of `tokens` is admitted (then charged), and the headers to send."""
        self._refill()
        cost = {"requests": 1, "tokens": tokens}
        short = {kind: cost[kind] - level for kind, level in self.levels.items()
                 if level < cost[kind]}
        if not short:
            for kind in self.levels:
                self.levels[kind] -= cost[kind]
            self.admitted_tokens += tokens
        headers = {}
        for kind, limit in self.limits.items():
            rate = limit / self.minute_s
            headers.update({f"x-ratelimit-limit-{kind}": str(limit),
                            f"x-ratelimit-remaining-{kind}": str(int(self.levels[kind])),
                            f"x-ratelimit-reset-{kind}":
                                f"{(limit - self.levels[kind]) / rate:.3f}s"})
        if short:
            wait = max(need / (self.limits[kind] / self.minute_s) for kind, need in short.items())
            headers["retry-after-ms"] = str(int(wait * 1000) + 1)
        return not short, headers


class Stats:
    """Counters shared between the server's loop thread and the test thread (hence the lock)."""

    def __init__(self, max_recorded: int):
        self._lock = threading.Lock()
        self._max_recorded = max_recorded
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0  # POST requests seen (chat, embeddings, rerank)
            self.paths: Counter[str] = Counter()  # the same, per path
            self.models_requests = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.status_counts: Counter[int] = Counter()
            self.received: deque[dict] = deque(maxlen=self._max_recorded)  # bodies, newest last
            self.headers: deque[dict] = deque(maxlen=self._max_recorded)

    def begin(self, path: str, body: dict, headers: dict) -> int:
        with self._lock:
            self.requests += 1
            self.paths[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.received.append(body)
            self.headers.append(headers)
            return self.requests

    def end(self, status: Optional[int]) -> None:
        with self._lock:
            self.in_flight -= 1
            self.status_counts[status if status is not None else 0] += 1  # 0: client went away

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "paths": dict(self.paths),
                    "models_requests": self.models_requests,
                    "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                    "status_counts": {str(k): v for k, v in self.status_counts.items()}}


class OpenAIServer:
    """The server, its behaviour knobs and its counters; a context manager for tests."""

    def __init__(self, latency: float = 0.0, *, fail_first: int = 0, fail_first_status: int = 429,
                 fail_every: int = 0, fail_every_status: int = 500,
                 retry_after: Optional[float] = None, hook: Optional[Hook] = None,
                 responder: Responder = default_responder, usage: bool = True,
                 api_key: Optional[str] = None, model: str = "test-model", port: int = 0,
                 max_recorded: int = 10000, rate_limit: Optional[RateLimit] = None):
        self.latency = latency
        self.fail_first = fail_first
        self.fail_first_status = fail_first_status
        self.fail_every = fail_every
        self.fail_every_status = fail_every_status
        self.retry_after = retry_after  # a Retry-After header (seconds) on injected failures
        self.hook = hook
        self.responder = responder
        self.usage = usage  # False: leave usage out of replies, as some servers do
        self.api_key = api_key  # None: any key (or none) is accepted
        self.model = model
        self.port = port
        self.rate_limit = rate_limit  # quotas a minute, enforced with 429s as OpenAI does
        self.stats = Stats(max_recorded)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None

    # ---- counters, as attributes for short assertions
    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> int:
        return self.stats.requests

    @property
    def max_in_flight(self) -> int:
        return self.stats.max_in_flight

    @property
    def status_counts(self) -> Counter:
        return self.stats.status_counts

    @property
    def received(self) -> list[dict]:
        return list(self.stats.received)

    def requests_to(self, path: str) -> int:
        """POST requests seen on `path`, e.g. "/v1/embeddings"."""
        return self.stats.paths[path]

    # ---- HTTP handlers
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/rerank", self._rerank)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset)
        return app

    def _auth_error(self, request: web.Request) -> Optional[web.Response]:
        if self.api_key is None:
            return None
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given == self.api_key:
            return None
        # Echo the key back, as OpenAI partly does: clients must scrub it from their errors.
        return web.json_response(error_body(401, f"Incorrect API key provided: {given}"),
                                 status=401)

    async def _models(self, request: web.Request) -> web.Response:
        with self.stats._lock:
            self.stats.models_requests += 1
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "tests"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        admitted = {"admitted_tokens": self.rate_limit.admitted_tokens} if self.rate_limit else {}
        return web.json_response({**self.stats.snapshot(), **admitted})

    async def _reset(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response({"ok": True})

    def _fault_for(self, n: int, body: dict) -> Optional[Fault]:
        """The failure schedule: the hook first, then the first-N rule, then every k-th."""
        if self.hook is not None:
            fault = self.hook(n, body)
            if fault is not None:
                return fault
        headers = {"Retry-After": f"{self.retry_after:g}"} if self.retry_after is not None else {}
        if n <= self.fail_first:
            return Fault(self.fail_first_status, headers)
        if self.fail_every and n % self.fail_every == 0:
            return Fault(self.fail_every_status, headers)
        return None

    async def _chat(self, request: web.Request) -> web.Response:
        return await self._post(request, self._completion)

    async def _embeddings(self, request: web.Request) -> web.Response:
        return await self._post(request, self._embedding_list)

    async def _rerank(self, request: web.Request) -> web.Response:
        return await self._post(request, self._ranking)

    async def _post(self, request: web.Request,
                    reply: Callable[[int, dict], dict]) -> web.Response:
        """Any POST endpoint: counted, then answered by `reply(n, body)` unless a fault, the
        key check or the rate limit answers first."""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response(error_body(400, "body is not JSON"), status=400)
        n = self.stats.begin(request.path, body, dict(request.headers))
        status: Optional[int] = None
        try:
            response = await self._answer(request, n, body, reply)
            status = response.status
            return response
        finally:
            self.stats.end(status)  # status None: cancelled because the client hung up

    async def _answer(self, request: web.Request, n: int, body: dict,
                      reply: Callable[[int, dict], dict]) -> web.Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        fault = self._fault_for(n, body)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            return web.json_response(error_body(fault.status, fault.message),
                                     status=fault.status, headers=fault.headers)
        completion, headers = reply(n, body), {}
        if self.rate_limit is not None:
            usage = completion.get("usage") or {}
            admitted, headers = self.rate_limit.admit(usage.get("total_tokens", 0))
            if not admitted:
                return web.json_response(error_body(429, "Rate limit reached"), status=429,
                                         headers=headers)
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.json_response(completion, headers=headers)

    def _completion(self, n: int, body: dict) -> dict:
        text = self.responder(body)
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text}}]}
        if self.usage:
            prompt, completion = count_words(body), len(text.split())
            reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
        return reply

    def _embedding_list(self, n: int, body: dict) -> dict:
        """OpenAI's embeddings reply; the items in reverse order, each with its `index`, as a
        server may send them."""
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
        data = [{"object": "embedding", "index": i,
                 "embedding": bag_of_words_vector(text, dimensions)}
                for i, text in enumerate(texts)]
        words = sum(len(_WORD.findall(text)) for text in texts)
        return {"object": "list", "model": body.get("model", self.model), "data": data[::-1],
                "usage": {"prompt_tokens": words, "total_tokens": words}}

    def _ranking(self, n: int, body: dict) -> dict:
        """The Cohere v2 / vLLM / Jina rerank reply: results best first, top_n of them."""
        documents = body["documents"]
        scores = [overlap_score(body["query"], document) for document in documents]
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        top = order[:body.get("top_n") or len(documents)]
        words = sum(len(_WORD.findall(text)) for text in [body["query"], *documents])
        return {"id": f"rerank-{n}", "model": body.get("model", self.model),
                "results": [{"index": i, "relevance_score": scores[i]} for i in top],
                "usage": {"total_tokens": words}}

    # ---- lifecycle
    async def _start_site(self) -> None:
        # handler_cancellation: a client that times out and hangs up frees its handler at once
        # (and its in-flight count), instead of it sleeping out the injected latency.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        # backlog: a benchmark opens hundreds of connections at once; the default 128 would
        # drop SYNs and add a 1 s retransmit to some of them.
        site = web.TCPSite(self._runner, HOST, self.port, backlog=2048,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _run_thread(self, ready: threading.Event, errors: list) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as exc:  # reported to start()
            errors.append(exc)
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def start(self) -> "OpenAIServer":
        self._loop = asyncio.new_event_loop()
        ready, errors = threading.Event(), []
        self._thread = threading.Thread(target=self._run_thread, args=(ready, errors),
                                        name="openai-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10.0):
            raise RuntimeError("openai test server did not start within 10 s")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._thread = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


async def serve_forever(server: OpenAIServer) -> None:
    """Standalone mode: serve on this process's loop until SIGINT/SIGTERM."""
    await server._start_site()
    print(f"listening on {server.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(json.dumps(server.stats.snapshot()), file=sys.stderr, flush=True)
    await server._runner.cleanup()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per completion")
    parser.add_argument("--fail-first", type=int, default=0, help="first N requests get 429")
    parser.add_argument("--fail-every", type=int, default=0, help="every k-th request gets 500")
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--no-usage", action="store_true", help="omit usage from replies")
    parser.add_argument("--rpm", type=int, default=None, help="requests a minute (429 beyond)")
    parser.add_argument("--tpm", type=int, default=None, help="tokens a minute (429 beyond)")
    parser.add_argument("--minute-s", type=float, default=60.0, help="a shorter minute")
    args = parser.parse_args(argv)
    limit = (RateLimit(args.rpm, args.tpm, args.minute_s) if args.rpm or args.tpm else None)
    server = OpenAIServer(latency=args.latency, fail_first=args.fail_first,
                          fail_every=args.fail_every, retry_after=args.retry_after,
                          api_key=args.api_key, model=args.model, port=args.port,
                          usage=not args.no_usage, rate_limit=limit)
    asyncio.run(serve_forever(server))


if __name__ == "__main__":
    main()
