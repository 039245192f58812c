"""Generation throughput: our async path vs the reference's one-blocking-caller-per-document.

Starts tests/openai_server.py as a separate process with a fixed latency (1 s) per completion,
then measures, in one run:

  * engine: `Engine.run` (the real scheduler, call store included) over `OpenAIBackend`, at 1, 64
    and 256 requests in flight, `--engine-waves` rounds each: requests/s as a fraction of the
    ideal (in_flight / latency), over the whole run and in the steady state (between the first
    wave's return and the last wave's, leaving out the ramp-up and drain that a finite run has
    and an hours-long generation does not), and process CPU time per request (this client
    process only; the server's CPU is reported separately);
  * backend only: `OpenAIBackend.complete` alone under a plain worker pool at 256, to separate
    the engine's own cost (call store, progress bar) from the HTTP client's: through the aiohttp
    transport (the default), through httpx, and over more waves (steady state: the 1-2 s of
    ramp-up and tail of a synchronised burst amortised);
  * reference: 8 documents, one thread per document making its calls one after another with the
    synchronous `openai.OpenAI` client (the reference ran one process per document), on the same
    number of calls as the 256-in-flight run.

  * rate-limited: the engine at up to 256 in flight against a server that allows a number of
    tokens a second (a token bucket, 429 with retry-after-ms and x-ratelimit-* headers beyond,
    as OpenAI answers): the share of the limit served and the share of requests rejected.

Ends with one line: RESULT ideal_fraction_256=<steady> whole_run_fraction_256=<x>
cpu_ms_per_request=<x> speedup_vs_per_document=<x> rate_limit_share=<whole run>
rate_limit_share_steady=<x> rejected_share=<x>

    .venv/bin/python benchmarks/generation.py [--latency 1.0] [--waves 3] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import openai
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The engine's progress bar: redraw once a second (tqdm reads TQDM_* when it is imported).
os.environ.setdefault("TQDM_MININTERVAL", "1")

from entigraph.call_store import CallStore  # noqa: E402
from entigraph.engine import Engine, PlannedCall  # noqa: E402
from entigraph.llm import ChatRequest  # noqa: E402
from entigraph.openai_backend import OpenAIBackend  # noqa: E402

SERVER = ROOT / "tests" / "openai_server.py"
DOCUMENTS = 8  # the reference corpus: one blocking caller per document
# A relation prompt carries the whole document; ~16 KB keeps JSON and HTTP costs realistic.
DOCUMENT_TEXT = ("Alice Calloway met Bob Marsh in the Old Harbour of Lisbon. " * 280)[:16000]


@dataclass
class Row:
    path: str
    in_flight: int
    requests: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    server_max_in_flight: int
    failures: int
    latency: float
    steady_rps: float = float("nan")  # engine rows: completions/s once the first wave is back

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def ideal_fraction(self) -> float:
        return self.rps / (self.in_flight / self.latency)

    @property
    def steady_fraction(self) -> float:
        return self.steady_rps / (self.in_flight / self.latency)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.requests


# ---- the server process

class ServerProcess:
    """tests/openai_server.py in its own process: its CPU is not charged to the client."""

    def __init__(self, latency: float, *options: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", "--latency", str(latency),
             "--model", "bench-model", *options],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()  # "listening on http://127.0.0.1:PORT/v1"
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        self.root = self.base_url.removesuffix("/v1")
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.root}/stats", timeout=5) as response:
            return json.load(response)

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.root}/stats/reset", method="POST"),
                               timeout=5).close()

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: the server shuts down cleanly
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---- workloads

def gen_cfg(base_url: str, in_flight: int) -> SimpleNamespace:
    return SimpleNamespace(backend="openai", model="bench-model", base_url=base_url,
                           api_key_env=None, temperature=1.0, max_tokens=None,
                           max_in_flight=in_flight, request_timeout_s=60.0, max_retries=6,
                           structured_output="json_schema")


def requests_for(tag: str, count: int) -> list[ChatRequest]:
    return [ChatRequest(key=f"{tag}-{i}", messages=(
        {"role": "system", "content": "Analyse the relations between the entities."},
        {"role": "user", "content": f"Call {i}.\n\n{DOCUMENT_TEXT}"}), temperature=1.0)
        for i in range(count)]


class Timed:
    """Records when each completion comes back, to tell steady-state throughput from the
    ramp-up and drain of a finite run."""

    def __init__(self, backend: OpenAIBackend):
        self.backend, self.done = backend, []

    async def complete(self, request: ChatRequest):
        result = await self.backend.complete(request)
        self.done.append(time.perf_counter())
        return result


def steady_rate(done: list[float], in_flight: int) -> float:
    """Completions per second between the first wave's return and the last wave's: the
    ramp-up and drain of a finite run left out."""
    done = sorted(done)
    first, last = in_flight, len(done) - in_flight  # the first completions of waves 2 and last
    if last <= first:
        return float("nan")
    return (last - first) / (done[last] - done[first])


async def run_engine(base_url: str, in_flight: int, requests: list[ChatRequest],
                     store_dir: Path) -> tuple[int, float]:
    """The real engine (workers, call store with fsync, progress bar): (failures, steady req/s)."""
    backend = OpenAIBackend(gen_cfg(base_url, in_flight))
    await backend.preflight()
    timed = Timed(backend)
    try:
        with CallStore(store_dir / f"calls-{in_flight}.jsonl") as store:
            engine = Engine(timed, store, in_flight)
            await engine.run(lambda: (PlannedCall(r.key, "doc", lambda r=r: r) for r in requests),
                             desc=f"engine@{in_flight}")
            return engine.spend.failures, steady_rate(timed.done, in_flight)
    finally:
        await backend.aclose()


async def run_backend_pool(base_url: str, in_flight: int, requests: list[ChatRequest],
                           transport: str) -> int:
    """OpenAIBackend alone under `in_flight` workers: the HTTP client's share of the cost."""
    backend = OpenAIBackend(gen_cfg(base_url, in_flight), transport=transport)
    await backend.preflight()
    queue, failures = iter(requests), 0

    async def worker() -> None:
        nonlocal failures
        for request in queue:
            try:
                await backend.complete(request)
            except Exception:  # noqa: BLE001 - counted and reported
                failures += 1

    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    finally:
        await backend.aclose()
    return (failures,)


def run_reference(base_url: str, calls: int) -> int:
    """One thread per document, each making its calls in order with the sync client."""
    per_doc = [requests_for(f"ref{d}", calls // DOCUMENTS) for d in range(DOCUMENTS)]
    failures = [0] * DOCUMENTS

    def document(d: int) -> None:
        client = openai.OpenAI(api_key="EMPTY", base_url=base_url)  # one per process, as there
        for request in per_doc[d]:
            try:
                client.chat.completions.create(model="bench-model",
                                               messages=list(request.messages),
                                               temperature=request.temperature)
            except openai.OpenAIError:
                failures[d] += 1
        client.close()

    threads = [threading.Thread(target=document, args=(d,)) for d in range(DOCUMENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (sum(failures),)


def measure(server: ServerProcess, path: str, in_flight: int, count: int, latency: float,
            work) -> Row:
    server.reset()
    server_cpu0, cpu0, wall0 = server.cpu_s(), time.process_time(), time.perf_counter()
    failures, *steady = work()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Row(path, in_flight, count, wall, cpu, server.cpu_s() - server_cpu0,
               server.stats()["max_in_flight"], failures, latency, *steady)


# ---- report

def print_table(rows: list[Row]) -> None:
    header = (f"{'path':<22}{'in_flight':>10}{'requests':>10}{'wall_s':>9}{'req/s':>9}"
              f"{'ideal':>8}{'fraction':>10}{'cpu_ms/req':>12}{'srv_cpu_ms':>12}"
              f"{'srv_max':>9}{'failed':>8}{'steady':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.path:<22}{r.in_flight:>10}{r.requests:>10}{r.wall_s:>9.2f}{r.rps:>9.1f}"
              f"{r.in_flight / r.latency:>8.1f}{r.ideal_fraction:>10.3f}{r.cpu_ms:>12.2f}"
              f"{1000 * r.server_cpu_s / r.requests:>12.2f}{r.server_max_in_flight:>9}"
              f"{r.failures:>8}{r.steady_fraction:>8.3f}")


def profile_engine(base_url: str, in_flight: int, count: int, store_dir: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(run_engine(base_url, in_flight, requests_for("prof", count), store_dir))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


def rate_limited(latency: float, in_flight: int, count: int, tokens_per_s: int,
                 minute_s: float) -> tuple[float, float, float]:
    """The engine against a server limited to `tokens_per_s` (a bucket of a "minute" of
    `minute_s` seconds, full at the start, 429 beyond, as OpenAI's): (the share of the limit
    served in the steady state, over the whole run, and the share of requests answered 429).
    The steady state is the middle of the run (from 25% to 90% of it), leaving out the start
    (the full bucket's burst, the first request sent alone) and the drain, which an hours-long
    generation does not have."""
    quota = int(tokens_per_s * minute_s)
    server = ServerProcess(latency, "--tpm", str(quota), "--minute-s", str(minute_s))
    samples, done = [], threading.Event()

    def sample() -> None:  # (time, tokens admitted so far), twice a second
        while not done.wait(0.5):
            samples.append((time.perf_counter(), server.stats()["admitted_tokens"]))

    sampler = threading.Thread(target=sample)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            sampler.start()
            asyncio.run(run_engine(server.base_url, in_flight, requests_for("limited", count),
                                   Path(tmp)))
            wall = time.perf_counter() - start
            done.set()
            sampler.join()
        stats = server.stats()
    finally:
        done.set()
        server.stop()
    whole = stats["admitted_tokens"] / (quota + tokens_per_s * wall)  # all it could have had
    (t1, a1), (t2, a2) = (min(samples, key=lambda s: abs(s[0] - start - share * wall))
                          for share in (0.25, 0.9))
    steady = (a2 - a1) / (tokens_per_s * (t2 - t1))
    rejected = stats["status_counts"].get("429", 0) / stats["requests"]
    print(f"rate-limited server ({tokens_per_s:,} tokens/s, a {quota:,}-token bucket): "
          f"{count} requests at up to {in_flight} in flight in {wall:.1f} s; served "
          f"{steady:.3f} of the limit in the steady state ({whole:.3f} over the whole run); "
          f"{stats['status_counts'].get('429', 0)} of {stats['requests']} requests answered 429")
    return steady, whole, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--waves", type=int, default=3, help="rounds of in_flight requests")
    parser.add_argument("--engine-waves", type=int, default=8,
                        help="rounds for the engine rows (long enough for a steady window)")
    parser.add_argument("--levels", default="1,64,256")
    parser.add_argument("--reference-calls", type=int, default=256,
                        help="calls for the reference (8 documents, each call waits 1 s)")
    parser.add_argument("--steady-waves", type=int, default=10,
                        help="waves for a steady-state row, ramp-up amortised (0: skip)")
    parser.add_argument("--profile", action="store_true", help="cProfile the top level too")
    parser.add_argument("--limit-tokens-per-s", type=int, default=60000,
                        help="the rate-limited run's quota (about 21 requests/s here)")
    parser.add_argument("--limit-minute-s", type=float, default=10.0,
                        help="the rate-limited server's 'minute' (its bucket refills in this)")
    parser.add_argument("--limit-requests", type=int, default=1500)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    top = max(levels)
    server = ServerProcess(args.latency)
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store_dir = Path(tmp)
            for n in levels:
                reqs = requests_for(f"engine{n}", n * args.engine_waves)
                rows.append(measure(server, "engine+OpenAIBackend", n, len(reqs), args.latency,
                                    lambda: asyncio.run(run_engine(server.base_url, n, reqs,
                                                                   store_dir))))
            for transport, waves in (("aiohttp", args.waves), ("httpx", args.waves),
                                     ("aiohttp", args.steady_waves)):
                if not waves:
                    continue
                reqs = requests_for(f"pool-{transport}-{waves}", top * waves)
                rows.append(measure(
                    server, f"backend only/{transport}", top, len(reqs), args.latency,
                    lambda: asyncio.run(run_backend_pool(server.base_url, top, reqs, transport))))
            calls = args.reference_calls - args.reference_calls % DOCUMENTS
            rows.append(measure(server, "reference (per doc)", DOCUMENTS, calls, args.latency,
                                lambda: run_reference(server.base_url, calls)))
            if args.profile:
                profile_engine(server.base_url, top, top * args.waves, store_dir)
    finally:
        server.stop()
    print()
    print(f"server latency {args.latency:g} s per completion; request body ~"
          f"{len(DOCUMENT_TEXT) // 1000} KB; client CPU = this process, server CPU = its process")
    print_table(rows)
    ours = next(r for r in rows if r.path.startswith("engine") and r.in_flight == top)
    reference = rows[-1]
    # The headline is the steady state: a real corpus takes hours, so the seconds of ramp-up
    # and drain that weigh on this short run (whole_run_fraction) do not.
    served_steady, served, rejected = rate_limited(args.latency, top, args.limit_requests,
                                                   args.limit_tokens_per_s, args.limit_minute_s)
    print(f"RESULT ideal_fraction_{top}={ours.steady_fraction:.3f} "
          f"whole_run_fraction_{top}={ours.ideal_fraction:.3f} "
          f"cpu_ms_per_request={ours.cpu_ms:.2f} "
          f"speedup_vs_per_document={ours.rps / reference.rps:.1f} "
          f"rate_limit_share={served:.3f} rate_limit_share_steady={served_steady:.3f} "
          f"rejected_share={rejected:.4f}")


if __name__ == "__main__":
    main()
