"""OpenAIBackend against a real local HTTP server (tests/openai_server.py): payloads, retries,
timeouts, keys, preflight and concurrency."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from types import SimpleNamespace

import openai
import pytest

from entigraph.llm import ChatRequest, GeneratorError, resolve_structured_output
from entigraph.openai_backend import (OpenAIBackend, RequestFailed, backoff_delay,
                                      retry_after_s)
from openai_server import (Fault, OpenAIServer,  # tests/ is on sys.path (rootdir conftest)
                           refuse_json_schema)

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"},
                                           "entities": {"type": "array",
                                                        "items": {"type": "string"}}},
          "required": ["summary", "entities"], "additionalProperties": False}
SECRET = "sk-test-0123456789abcdefSECRET"
KEY_VAR = "ENTIGRAPH_TEST_OPENAI_KEY"


def gen_cfg(base_url, **overrides):
    """The GeneratorConfig fields the backend reads, with fast retries for tests."""
    fields = dict(backend="openai", model="test-model", base_url=base_url, api_key_env=None,
                  temperature=1.0, max_tokens=None, max_in_flight=64, request_timeout_s=5.0,
                  max_retries=3, structured_output="json_schema")
    fields.update(overrides)
    return SimpleNamespace(**fields)


def request(text="Alice met Bob in Paris.", key="k", **kw):
    return ChatRequest(key=key, messages=({"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": text}), **kw)


def call(cfg, *requests, backoff_base_s=0.01, backoff_cap_s=1.0, **backend_kw):
    """Run requests concurrently on a fresh backend; results or exceptions, in order."""
    async def go():
        backend = OpenAIBackend(cfg, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s,
                                **backend_kw)
        try:
            return await asyncio.gather(*(backend.complete(r) for r in requests),
                                        return_exceptions=True)
        finally:
            await backend.aclose()
    return asyncio.run(go())


def preflight(cfg, transport="aiohttp"):
    async def go():
        backend = OpenAIBackend(cfg, transport=transport)
        try:
            await backend.preflight()
        finally:
            await backend.aclose()
    asyncio.run(go())


# Both HTTP transports the backend can use must behave the same where the network is involved.
both_transports = pytest.mark.parametrize("transport", ["aiohttp", "httpx"])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- payloads and results

def test_plain_completion_returns_text_and_usage():
    with OpenAIServer() as server:
        [result] = call(gen_cfg(server.base_url), request())
        [body] = server.received
    assert result.text.startswith("Reply ") and "Alice met Bob" in result.text
    assert result.input_tokens == 2 + 5  # words of the system and user messages
    assert result.output_tokens == len(result.text.split())
    assert body["model"] == "test-model" and body["temperature"] == 1.0
    assert body["messages"][1] == {"role": "user", "content": "Alice met Bob in Paris."}
    # None means "not sent", not null
    assert "max_tokens" not in body and "seed" not in body and "response_format" not in body


def test_max_tokens_and_seed_are_sent_when_set():
    with OpenAIServer() as server:
        call(gen_cfg(server.base_url), request(max_tokens=50, seed=7, temperature=0.3))
        [body] = server.received
    assert (body["max_tokens"], body["seed"], body["temperature"]) == (50, 7, 0.3)


def test_json_schema_reaches_the_server_as_structured_output():
    with OpenAIServer() as server:
        [result] = call(gen_cfg(server.base_url), request(json_schema=SCHEMA))
        [body] = server.received
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "extraction", "schema": SCHEMA, "strict": True}}
    assert '"entities": ["Alice", "Bob", "Paris"]' in result.text


def test_json_object_mode_when_configured():
    with OpenAIServer() as server:
        call(gen_cfg(server.base_url, structured_output="json_object"),
             request(json_schema=SCHEMA))
        [body] = server.received
    assert body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("model,mode", [
    ("gpt-4-turbo", "json_object"), ("gpt-4-turbo-2024-04-09", "json_object"),
    ("gpt-4o-2024-05-13", "json_object"), ("gpt-3.5-turbo", "json_object"),
    ("o1-mini", "json_object"), ("meta-llama/Meta-Llama-3-8B-Instruct", "json_object"),
    ("gpt-4o", "json_schema"), ("gpt-4o-2024-08-06", "json_schema"), ("gpt-4o-mini", "json_schema"),
    ("gpt-4.1-mini", "json_schema"), ("gpt-5", "json_schema"), ("o3-mini", "json_schema"),
])
def test_auto_structured_output_sends_the_schema_only_to_models_known_to_take_it(model, mode):
    assert resolve_structured_output("auto", "openai", model) == mode
    assert resolve_structured_output("auto", "vllm", model) == "json_schema"  # guided decoding
    assert resolve_structured_output("json_object", "openai", "gpt-4o") == "json_object"


def test_auto_sends_json_mode_to_gpt_4_turbo():
    with OpenAIServer(hook=refuse_json_schema) as server:
        [result] = call(gen_cfg(server.base_url, model="gpt-4-turbo", structured_output="auto"),
                        request(json_schema=SCHEMA))
        assert [b["response_format"] for b in server.received] == [{"type": "json_object"}]
    assert '"entities"' in result.text


def test_a_refused_json_schema_switches_the_run_to_json_mode_once(caplog):
    """HTTP 400 naming response_format: every request is retried in JSON mode at once (not as
    a retry), later requests go in JSON mode, and the switch is logged once."""
    with OpenAIServer(hook=refuse_json_schema) as server:
        async def go():
            backend = OpenAIBackend(gen_cfg(server.base_url, max_retries=0))
            try:
                first = await asyncio.gather(*(backend.complete(request(json_schema=SCHEMA,
                                                                        key=f"k{i}"))
                                               for i in range(4)))
                later = await backend.complete(request(json_schema=SCHEMA, key="later"))
                plain = await backend.complete(request(key="plain"))
                return first, later, plain, backend.structured_output
            finally:
                await backend.aclose()
        with caplog.at_level(logging.WARNING, logger="entigraph.openai_backend"):
            first, later, plain, mode = asyncio.run(go())
        formats = [(b.get("response_format") or {}).get("type") for b in server.received]
    assert mode == "json_object" and all('"entities"' in r.text for r in [*first, later])
    assert formats.count("json_schema") == 4 and formats.count("json_object") == 5
    assert formats[-1] is None  # a request without a schema is left alone
    assert sum("refused response_format" in r.message for r in caplog.records) == 1


def test_a_refused_json_object_is_not_retried_forever():
    with OpenAIServer(hook=lambda n, body: Fault(400, message="bad response_format")) as server:
        [err] = call(gen_cfg(server.base_url, structured_output="json_object"),
                     request(json_schema=SCHEMA))
        assert server.requests == 1
    assert isinstance(err, RequestFailed) and err.status == 400


def test_missing_usage_is_estimated_from_characters():
    with OpenAIServer(usage=False) as server:
        [result] = call(gen_cfg(server.base_url), request())
    assert result.output_tokens == len(result.text) // 4 > 0
    assert result.input_tokens == len("Be brief.Alice met Bob in Paris.") // 4


# ---- retries

@both_transports
@pytest.mark.parametrize("status", [429, 500, 503])
def test_retryable_status_is_retried_then_succeeds(status, transport):
    with OpenAIServer(fail_first=2, fail_first_status=status) as server:
        [result] = call(gen_cfg(server.base_url, max_retries=3), request(), transport=transport)
        assert server.requests == 3
        assert dict(server.status_counts) == {status: 2, 200: 1}
    assert result.text.startswith("Reply ")


def test_every_kth_failure_is_absorbed_by_retries():
    with OpenAIServer(fail_every=3) as server:
        results = call(gen_cfg(server.base_url), *[request(key=f"k{i}") for i in range(12)])
        assert server.status_counts[500] >= 4
    assert all(not isinstance(r, BaseException) for r in results)


def test_retries_exhausted_raise_request_failed():
    with OpenAIServer(fail_first=100, fail_first_status=500) as server:
        [err] = call(gen_cfg(server.base_url, max_retries=2), request(key="doc-7"))
        assert server.requests == 3  # the first try and two retries
    assert isinstance(err, RequestFailed) and not isinstance(err, GeneratorError)
    assert err.status == 500 and err.attempts == 3
    assert "doc-7" in str(err) and "gave up after 3 attempts" in str(err)


def test_retry_after_is_honoured():
    with OpenAIServer(fail_first=1, retry_after=0.6) as server:
        start = time.perf_counter()
        [result] = call(gen_cfg(server.base_url), request(), backoff_base_s=0.001)
        elapsed = time.perf_counter() - start
        assert server.requests == 2
    assert not isinstance(result, BaseException)
    assert 0.6 <= elapsed < 3.0  # jitter alone would have waited ~1 ms


def test_retry_after_is_capped():
    with OpenAIServer(fail_first=1, retry_after=3600) as server:
        start = time.perf_counter()
        [result] = call(gen_cfg(server.base_url), request(), backoff_cap_s=0.2)
        assert time.perf_counter() - start < 3.0 and server.requests == 2
    assert not isinstance(result, BaseException)


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried(status):
    with OpenAIServer(hook=lambda n, body: Fault(status, message="context too long")) as server:
        [err] = call(gen_cfg(server.base_url, max_retries=5), request())
        assert server.requests == 1
    assert isinstance(err, RequestFailed) and err.status == status and err.attempts == 1
    assert "not retried" in str(err) and "context too long" in str(err)


def test_unknown_model_stops_the_run():
    """404/401/403 mean no request can succeed: GeneratorError, which stops the engine."""
    with OpenAIServer(hook=lambda n, body: Fault(404, message="model not found")) as server:
        [err] = call(gen_cfg(server.base_url), request())
        assert server.requests == 1
    assert isinstance(err, GeneratorError) and "generator.model" in str(err)


@both_transports
def test_timeouts_are_retried_then_fail(transport):
    with OpenAIServer(latency=2.0) as server:
        start = time.perf_counter()
        [err] = call(gen_cfg(server.base_url, request_timeout_s=0.2, max_retries=2), request(),
                     transport=transport)
        elapsed = time.perf_counter() - start
        assert server.requests == 3
    assert isinstance(err, RequestFailed) and err.status is None and "timed out" in str(err)
    assert 0.6 <= elapsed < 1.8


def test_a_timeout_then_success():
    slow_first = lambda n, body: Fault(delay=2.0) if n == 1 else None  # noqa: E731
    with OpenAIServer(hook=slow_first) as server:
        [result] = call(gen_cfg(server.base_url, request_timeout_s=0.3), request())
        assert server.requests == 2
    assert not isinstance(result, BaseException)


def test_backoff_is_full_jitter_and_capped():
    assert backoff_delay(0, 0.5, 30.0, rng=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 1.0) == 4.0
    assert backoff_delay(20, 0.5, 30.0, rng=lambda: 1.0) == 30.0
    assert backoff_delay(3, 0.5, 30.0, rng=lambda: 0.0) == 0.0


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "2"}, 30.0) == 2.0
    assert retry_after_s({"retry-after": "999"}, 30.0) == 30.0
    assert retry_after_s({"retry-after-ms": "250"}, 30.0) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 30.0) == 0.0
    assert retry_after_s({"retry-after": "soon"}, 30.0) is None
    assert retry_after_s({}, 30.0) is None


# ---- API keys

def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv(KEY_VAR, raising=False)
    with pytest.raises(GeneratorError) as info:
        OpenAIBackend(gen_cfg(None, api_key_env=KEY_VAR))
    message = str(info.value)
    assert f"generator.api_key_env={KEY_VAR} but {KEY_VAR} is not set" in message
    assert "export it" in message and "\n" not in message


def test_empty_key_variable_counts_as_missing(monkeypatch):
    monkeypatch.setenv(KEY_VAR, "")
    with pytest.raises(GeneratorError, match=KEY_VAR):
        OpenAIBackend(gen_cfg("http://127.0.0.1:1/v1", api_key_env=KEY_VAR))


def test_no_key_and_no_base_url_asks_for_api_key_env():
    with pytest.raises(GeneratorError, match="generator.api_key_env"):
        OpenAIBackend(gen_cfg(None))


def test_local_server_without_key_gets_a_placeholder():
    with OpenAIServer() as server:
        call(gen_cfg(server.base_url), request())
        assert server.stats.headers[0]["Authorization"] == "Bearer EMPTY"


def test_key_from_env_is_sent_and_never_revealed(monkeypatch, caplog):
    monkeypatch.setenv(KEY_VAR, SECRET)
    cfg_ok = gen_cfg(None, api_key_env=KEY_VAR)
    # The server echoes the key in its errors, as OpenAI does: it must be scrubbed everywhere.
    echo = lambda n, body: Fault(500, message=f"upstream saw {SECRET}")  # noqa: E731
    with OpenAIServer(api_key=SECRET, hook=echo) as server, \
            caplog.at_level(logging.DEBUG, logger="entigraph.openai_backend"):
        cfg_ok.base_url = server.base_url
        [err] = call(cfg_ok, request(), backoff_cap_s=0.01)
        assert server.stats.headers[0]["Authorization"] == f"Bearer {SECRET}"
        assert "upstream saw ***" in str(err)
        assert "retrying" in caplog.text and SECRET not in caplog.text
        assert SECRET not in repr(OpenAIBackend(cfg_ok))
    assert SECRET not in str(err)


def test_rejected_key_is_fatal_and_not_revealed(monkeypatch):
    monkeypatch.setenv(KEY_VAR, SECRET)
    with OpenAIServer(api_key="the-right-key") as server:
        cfg = gen_cfg(server.base_url, api_key_env=KEY_VAR)
        with pytest.raises(GeneratorError) as info:
            preflight(cfg)
        assert f"rejected the API key in ${KEY_VAR}" in str(info.value)
        [err] = call(cfg, request())
        assert server.requests == 1  # 401 is not retried
    assert isinstance(err, GeneratorError)
    for message in (str(info.value), str(err), repr(err)):
        assert SECRET not in message


def test_backend_built_outside_the_event_loop_works_inside_it():
    """generate builds the backend before asyncio.run, as here."""
    with OpenAIServer() as server:
        backend = OpenAIBackend(gen_cfg(server.base_url))

        async def go():
            try:
                await backend.preflight()
                return await backend.complete(request())
            finally:
                await backend.aclose()
        assert asyncio.run(go()).text.startswith("Reply ")


def test_falls_back_to_httpx_without_aiohttp(monkeypatch):
    def missing(**kwargs):
        raise RuntimeError("To use the aiohttp client you must have installed the package")
    monkeypatch.setattr("openai.DefaultAioHttpClient", missing)
    with OpenAIServer() as server:
        backend = OpenAIBackend(gen_cfg(server.base_url))
        assert isinstance(backend._client._client, openai.DefaultAsyncHttpxClient)
        asyncio.run(backend.aclose())
        [result] = call(gen_cfg(server.base_url), request())
    assert result.text.startswith("Reply ")


# ---- preflight

def test_preflight_succeeds_against_a_running_server(caplog):
    with OpenAIServer() as server:
        preflight(gen_cfg(server.base_url))
        assert server.stats.models_requests == 1
    assert "does not list" not in caplog.text


def test_preflight_warns_about_an_unlisted_model(caplog):
    with OpenAIServer(model="served-model") as server:
        preflight(gen_cfg(server.base_url, model="other-model"))
    assert "does not list generator.model=other-model (it lists served-model)" in caplog.text


@both_transports
def test_preflight_fails_fast_on_a_closed_port(transport):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(GeneratorError) as info:
        preflight(gen_cfg(url, max_retries=6, request_timeout_s=120.0), transport)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert message.startswith(f"cannot reach {url}: ")
    assert "is the server running? check generator.base_url" in message
    assert "timed out" not in message  # refused, not slow


def test_a_closed_port_fails_requests_after_retries():
    [err] = call(gen_cfg(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1), request())
    assert isinstance(err, RequestFailed) and err.attempts == 2 and "connection error" in str(err)


def test_preflight_names_a_wrong_base_url():
    with OpenAIServer() as server:
        with pytest.raises(GeneratorError, match="check generator.base_url"):
            preflight(gen_cfg(server.base_url.removesuffix("/v1") + "/wrong"))


# ---- concurrency

@both_transports
def test_requests_run_concurrently(transport):
    with OpenAIServer(latency=0.2) as server:
        start = time.perf_counter()
        results = call(gen_cfg(server.base_url, max_in_flight=64),
                       *[request(key=f"k{i}") for i in range(64)], transport=transport)
        elapsed = time.perf_counter() - start
        assert server.max_in_flight >= 32
    assert all(not isinstance(r, BaseException) for r in results)
    assert elapsed < 2.0  # sequentially: 64 x 0.2 s = 12.8 s


# ---- the server as a separate process (how benchmarks and other tests use it)

def test_server_runs_standalone_as_a_script():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("openai_server.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--fail-first", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        [result] = call(gen_cfg(line.removeprefix("listening on ")), request())
        assert result.text.startswith("Reply ")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert '"requests": 2' in err and '"429": 1' in err  # its counters, printed on exit


def test_quota_reset_durations_parse_as_openai_writes_them():
    from entigraph.rate_limits import duration_s

    assert duration_s("20ms") == pytest.approx(0.02) and duration_s("1.5s") == 1.5
    assert duration_s("6m0s") == 360 and duration_s("1h2m3s") == 3723
    assert duration_s(None) is None and duration_s("soon") is None and duration_s("3x") is None


def test_the_window_narrows_once_per_burst_of_429s_and_widens_on_success():
    from entigraph.rate_limits import AdaptiveConcurrency, Ticket

    gate = AdaptiveConcurrency(64)
    ticket = Ticket(0, time.monotonic())
    gate.succeeded(ticket, 100, {})
    gate.latency_s = 60.0  # a burst of 429s within one latency is one signal
    for _ in range(5):
        gate.rejected(ticket, {})
    assert gate.window == pytest.approx(64 * 0.7)
    before = gate.window
    for _ in range(int(before)):  # a window's worth of successes: about one more
        gate.succeeded(ticket, 100, {})
    assert gate.window == pytest.approx(before + 1, abs=0.1)


@pytest.mark.slow
def test_a_rate_limited_server_is_used_to_its_limit_with_few_429s():
    """OpenAI-style quotas (a token bucket with x-ratelimit-* headers, 429 with retry-after-ms
    beyond); 64 workers, far more than the quota allows."""
    from openai_server import RateLimit

    limit = RateLimit(tokens=4000, minute_s=2.0)  # 2,000 tokens/s; requests of ~40 tokens
    with OpenAIServer(latency=0.05, rate_limit=limit) as server:
        started = time.monotonic()
        results = call(gen_cfg(server.base_url, max_retries=20),
                       *[request(f"Alice met Bob in Paris, call {i}.", key=f"k{i}")
                         for i in range(600)])
        wall = time.monotonic() - started
        assert not [r for r in results if isinstance(r, Exception)]
        possible = 4000 + 2000 * wall
        assert limit.admitted_tokens / possible > 0.9
        assert server.status_counts[429] / server.requests < 0.02, server.status_counts
