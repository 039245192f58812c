"""The rag protocol's retrieval (entigraph.retrieval.retrieve) at the paper's open-book size.

The paper's setting: QuALITY's 265 articles (~5,000 words, ~27,000 characters each) and 4,609
questions, chunks of 1,024 characters without overlap (~8,500 chunks here: a chunk ends at
its window's last paragraph break, so passages average ~840 characters), 128 candidates a
question from the index, reranked, the best 8 kept. The inputs here are synthetic and seeded:
articles of prose-like text in paragraphs (Zipf-drawn words from a vocabulary of ~4,000: common
English function words, then made-up words; each article with its own characters' names and
favourite words), and questions built from a paragraph of their article, each retrieved by the
query the rag protocol sends (entigraph.rag_prompt.query: the framing names the article's title,
then the question and its four choices).

Stages, each call in a fresh process that reports its wall time, CPU time and peak resident
memory (ru_maxrss; "+N" is the peak above the same process after its imports and inputs):
1. chunking the articles by characters (chunk_documents);
2. BM25 (retriever.backend=bm25): the first call (build, save, search every question for the
   candidates) against a rerun on the cached index;
3. embeddings (retriever.backend=openai, dimensions=3072 as text-embedding-3-large, batch_size
   256, max_in_flight 8) from the local test server (tests/openai_server.py, in its own
   process; its CPU time is reported apart): the first call (embed the chunks and the questions,
   build FAISS, search) against a rerun, which must send no request;
4. reranking (reranker.backend=openai, the server's Cohere-style /v1/rerank) of every question's
   candidates from stage 3's cached index: the first call against a rerun (no request);
   Also the first call's work for a quarter of the questions (own cache file): the client's
   CPU a request, and how often a request waiting for a slot checks the window, should not
   grow with the number of requests a call sends;
5. one new question on top of the cached ones (the stage 4 config): what adding a question
   to the caches costs (1 text embedded, 1 query reranked, each cache file rewritten whole);
6. the questions of a fifth of the articles (as a validation split), all cached: what a
   different batch of questions re-sends to the reranker (the rerank cache is keyed by the
   question and the set of its candidates' ids: nothing, though FAISS may order near-ties
   differently in another batch).
Each call also lists the cache files it wrote (new or changed: path, size); reruns must write
none. Recall is the share of questions with a chunk of their own article among the top_k.

The test server's vectors are hashed word counts (mostly zeros: short JSON numbers); a real
embeddings API's floats are ~3x longer in JSON, so the client's parse time here is a lower bound.

Ends with one line:
RESULT articles=<n> questions=<n> chunks=<n> ... bm25_rerun_speedup=<x> ... rerank_cache_mb=<x>

A quick run: --articles 20 --questions 300 (~20 s); the paper's size takes ~3-4 minutes.

    .venv/bin/python benchmarks/retrieval.py [--articles 265] [--questions 4609]
        [--chunk-size 1024] [--candidates 128] [--top-k 8] [--workdir DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entigraph.corpus import first_last  # noqa: E402
from entigraph.rag_prompt import query as rag_query  # noqa: E402

ENV = {"PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "WANDB_ERROR_REPORTING": "false"}

# ---- synthetic inputs

FUNCTION_WORDS = (
    "the of and to a in was he it that his her she had with for as on at by not but be from "
    "they were is i you all this which there one said so him what would their when have out if "
    "up no them been into more could we some then did my an or are me who over now only your "
    "back down than its like just before after about again where will can our still through "
    "any even how much never here why must").split()
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ar",
                                                          "en", "il", "or", "us")]
VOCABULARY = 4000  # words, function words first (the most frequent)
MEAN_CHARS, SD_CHARS = 27_000, 5_000  # QuALITY's articles: ~5,000 words


def made_up_words(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """`count` distinct pronounceable words of 1-4 syllables not in `taken`, shortest first."""
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(SYLLABLES, size=rng.integers(1, 5)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return sorted(words, key=len)


def make_inputs(articles: int, questions: int, seed: int) -> dict:
    """{"documents": [Document fields], "queries": [...], "owners": [uid per query]}."""
    rng = np.random.default_rng(seed)
    taken = set(FUNCTION_WORDS)
    vocab = FUNCTION_WORDS + made_up_words(rng, VOCABULARY - len(FUNCTION_WORDS), taken)
    names = [w.capitalize() for w in made_up_words(rng, 3000, taken)]
    base = 1.0 / (np.arange(len(vocab)) + 2.7)  # Zipf-Mandelbrot
    content = np.arange(len(FUNCTION_WORDS), len(vocab))
    documents, paragraphs_of, titles = [], [], set()
    for n in range(articles):
        weights = base.copy()
        weights[rng.choice(content, 150, replace=False)] *= 8.0  # the article's own topics
        weights /= weights.sum()
        cast = list(rng.choice(names, 10, replace=False))
        cast_weights = 1.0 / np.arange(1, 11)
        cast_weights /= cast_weights.sum()
        target = int(np.clip(rng.normal(MEAN_CHARS, SD_CHARS), 12_000, 45_000))
        paragraphs, length = [], 0
        while length < target:
            words = [vocab[i] for i in rng.choice(len(vocab), 400, p=weights)]
            for i in np.flatnonzero(rng.random(len(words)) < 0.03):
                words[i] = cast[rng.choice(10, p=cast_weights)]
            sentences, at = [], 0
            for _ in range(1 + min(rng.geometric(0.4), 7)):  # 2-8 sentences, mostly 2-3
                size = int(rng.integers(4, 26))
                sentence = words[at:at + size]
                at += size
                if not sentence:
                    break
                for i in np.flatnonzero(rng.random(len(sentence) - 1) < 0.08):
                    sentence[i] += ","
                sentences.append(" ".join(sentence)[0].upper() + " ".join(sentence)[1:] + ".")
            paragraph = " ".join(sentences)
            paragraphs.append(paragraph)
            length += len(paragraph) + 2
        while True:
            title = " ".join(rng.choice([
                f"The {rng.choice(vocab[200:1500]).capitalize()} of {rng.choice(cast)}",
                f"{rng.choice(cast)}'s {rng.choice(vocab[200:1500]).capitalize()}",
                f"The {rng.choice(vocab[200:1500]).capitalize()} "
                f"{rng.choice(vocab[200:1500]).capitalize()}"]).split())
            if title not in titles:
                titles.add(title)
                break
        author = f"{rng.choice(names)}, {rng.choice(names)}"  # QuALITY's "Last, First"
        year = None if rng.random() < 0.1 else int(rng.integers(1950, 1976))
        documents.append({"uid": f"{n:04d}{rng.integers(16**6):06x}", "title": title,
                          "author": author, "year": year, "text": "\n\n".join(paragraphs)})
        paragraphs_of.append((paragraphs, cast))
    queries, owners = [], []
    for q in range(questions):
        n = q % articles
        doc, (paragraphs, cast) = documents[n], paragraphs_of[n]
        words = [w.strip(".,").lower() for w in paragraphs[rng.integers(len(paragraphs))].split()]
        words = [w for w in words if w not in FUNCTION_WORDS] or words
        picked = " ".join(rng.choice(words, rng.integers(4, 8)))
        question = f"Why does {rng.choice(cast)} {picked}?"
        choices = []
        for _ in range(4):
            other = paragraphs[rng.integers(len(paragraphs))].split()
            start = int(rng.integers(max(1, len(other) - 6)))
            choices.append(" ".join(other[start:start + int(rng.integers(2, 7))]).strip(".,"))
        year = "" if doc["year"] is None else str(doc["year"])
        queries.append(rag_query(doc["title"], first_last(doc["author"]), year, question,
                                 choices))
        owners.append(doc["uid"])
    return {"documents": documents, "queries": queries, "owners": owners}


# ---- one call in a fresh process

# argv: inputs.json, stage ("chunk" or "retrieve"), the eval.rag overrides (JSON), options
# (JSON: "extra", [query, owner uid] pairs asked after the others; "only", the uids whose
# questions are asked, null for all). Prints one JSON line: seconds, cpu_s, rss_mb,
# base_rss_mb, phases (wall seconds by part of the call), phase_cpu, slot_checks, ...
CHILD = r"""
import hashlib, json, resource, sys, time
from functools import wraps

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

# The libraries a call may load, loaded before the baseline: the peak above it is the data's.
import numpy, faiss, bm25s, openai, tqdm.auto
from omegaconf import OmegaConf
import entigraph.openai_backend
from entigraph.config import RagConfig
from entigraph.corpus import Document
from entigraph.retrieval import chunk_documents, retrieve
from entigraph.retrieval import embedders, index, pipeline, store
from entigraph import rate_limits

phases, phase_cpu, rewrites, checks = {}, {}, [], [0]

def timed(owner, name, label):
    fn = getattr(owner, name)
    @wraps(fn)
    def wrapper(*args, **kwargs):
        key = label(*args, **kwargs) if callable(label) else label
        start, start_cpu = time.perf_counter(), cpu_s()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[key] = phases.get(key, 0.0) + time.perf_counter() - start
            phase_cpu[key] = phase_cpu.get(key, 0.0) + cpu_s() - start_cpu
    setattr(owner, name, wrapper)

timed(pipeline, "chunk_documents", "chunk")
timed(index.ChunkIndex, "_build", "build index")  # embedding the chunks included
timed(index.ChunkIndex, "search", "search")  # embedding the questions included
timed(embedders.Embedder, "embed", lambda self, texts, desc: desc)
timed(pipeline, "rerank", "rerank")
timed(store.KeyedStore, "read", "cache reads")
timed(store, "write_lines_atomic", "cache writes")
_write = store.write_lines_atomic
def counted_write(path, lines):
    _write(path, lines)
    rewrites.append(str(path))
store.write_lines_atomic = counted_write
_pause_s = rate_limits.AdaptiveConcurrency._pause_s
def counted_pause_s(self):  # one check of the request window by a request waiting for a slot
    checks[0] += 1
    return _pause_s(self)
rate_limits.AdaptiveConcurrency._pause_s = counted_pause_s

inputs_path, stage, overrides, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \
    json.loads(sys.argv[4])
with open(inputs_path) as f:
    inputs = json.load(f)
documents = [Document(**d) for d in inputs["documents"]]
extra, only = options.get("extra", []), options.get("only")  # only: the questions of these uids
asked = [(q, o) for q, o in zip(inputs["queries"], inputs["owners"]) if only is None or o in only]
queries, owners = [q for q, _ in asked + extra], [o for _, o in asked + extra]
del inputs, asked
cfg = OmegaConf.merge(OmegaConf.structured(RagConfig), overrides)
base_rss, start, start_cpu = rss_mb(), time.perf_counter(), cpu_s()
if stage == "chunk":
    chunks = chunk_documents(documents, cfg)
    seconds, cpu = time.perf_counter() - start, cpu_s() - start_cpu
    passages = [len(c.text.split("\n\n", 1)[1]) for c in chunks]
    out = {"chunks": len(chunks), "mean_chars": sum(len(c.text) for c in chunks) / len(chunks),
           "mean_passage": sum(passages) / len(passages), "max_passage": max(passages),
           "min_passage": min(passages)}
else:
    result = retrieve(documents, queries, cfg)
    seconds, cpu = time.perf_counter() - start, cpu_s() - start_cpu
    own = [[chunk.doc_id == owner for chunk, _ in row] for row, owner in zip(result.chunks, owners)]
    rows = [[(chunk.id, round(float(score), 6)) for chunk, score in row] for row in result.chunks]
    out = {"stats": result.stats, "recall": sum(map(any, own)) / len(own),
           "top1": sum(row[0] for row in own if row) / len(own),
           "kept": sum(map(len, rows)) / len(rows),
           "digest": hashlib.sha256(
               json.dumps(rows[:len(owners) - len(extra)]).encode()).hexdigest(),
           "row_digests": [hashlib.sha256(json.dumps(row).encode()).hexdigest()[:12]
                           for row in rows]}
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "rss_mb": rss_mb(), "base_rss_mb": base_rss,
                  "phases": phases, "phase_cpu": phase_cpu, "cache_rewrites": rewrites,
                  "slot_checks": checks[0], **out}))
"""


class Server:
    """tests/openai_server.py in its own process (no request bodies kept: the rerank stage
    sends ~0.6 GB of them); its counters over HTTP and its CPU time from /proc."""

    SCRIPT = ("import asyncio, sys; from openai_server import OpenAIServer, serve_forever; "
              "asyncio.run(serve_forever(OpenAIServer(max_recorded=0)))")

    def __enter__(self) -> "Server":
        env = {**os.environ, **ENV, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"listening on (\S+)", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"the test server did not start: {line!r}")
        self.base_url = found.group(1)
        self.root = self.base_url.rsplit("/v1", 1)[0]
        return self

    def __exit__(self, *exc_info) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def _call(self, path: str, data: bytes | None = None) -> dict:
        with urllib.request.urlopen(urllib.request.Request(self.root + path, data=data),
                                    timeout=30) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        self._call("/stats/reset", b"{}")

    def paths(self) -> dict:
        return self._call("/stats")["paths"]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `folder` but lock files: relative path -> (inode, mtime_ns, size)."""
    out = {}
    for path in folder.rglob("*") if folder.exists() else []:
        if path.is_file() and not path.name.endswith(".lock"):
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def run(inputs: Path, stage: str, overrides: dict, server: Server | None = None,
        **options) -> dict:
    """One call in a fresh process, with the cache files it wrote and the server's side."""
    cache = Path(overrides.get("cache_dir", "/nonexistent"))
    before = files(cache)
    if server:
        server.reset()
        server_cpu = server.cpu_s()
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(inputs), stage, json.dumps(overrides),
                          json.dumps(options)], capture_output=True, text=True,
                         env={**os.environ, **ENV}, timeout=3600)
    if out.returncode:
        sys.stderr.write(out.stderr[-5000:])
        raise SystemExit(f"the {stage} call failed (exit {out.returncode})")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_s"] = time.perf_counter() - started
    after = files(cache)
    row["written"] = {p: after[p][2] for p in after if before.get(p) != after[p]}
    if server:
        row["server_cpu_s"] = server.cpu_s() - server_cpu
        row["requests"] = server.paths()
    return row


# ---- reporting

def mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def line(name: str, row: dict) -> str:
    """A call's wall and CPU time, peak memory, phases and requests, on one line."""
    phases = ", ".join(f"{k} {v:.1f}" for k, v in row["phases"].items() if v >= 0.05)
    phases = f" | {phases}" if phases else ""
    server = f", server CPU {row['server_cpu_s']:.1f} s" if "server_cpu_s" in row else ""
    requests = row.get("requests") or {}
    sent = (" requests " + " ".join(f"{k}={v}" for k, v in sorted(requests.items()))
            if requests else (" requests 0" if "requests" in row else ""))
    return (f"  {name:<9} {row['seconds']:7.1f} s (CPU {row['cpu_s']:.1f} s{server}), peak RSS "
            f"{row['rss_mb']:,.0f} MB (+{row['rss_mb'] - row['base_rss_mb']:,.0f}){phases}"
            f"{' |' + sent if sent else ''}")


def written(row: dict) -> str:
    if not row["written"]:
        return "    wrote no cache file"
    return "    wrote " + ", ".join(f"{p} ({mb(s)})" for p, s in sorted(row["written"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=265)
    parser.add_argument("--questions", type=int, default=4609)
    parser.add_argument("--chunk-size", type=int, default=1024, help="characters, no overlap")
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--dimensions", type=int, default=3072)
    parser.add_argument("--batch-size", type=int, default=256, help="texts a request")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default a temp dir")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="entigraph-retrieval-"))
    try:
        print("RESULT " + " ".join(f"{k}={v}" for k, v in benchmark(args, work).items()),
              flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def benchmark(args, work: Path) -> dict:
    total = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    for old in ("cache_bm25", "cache_dense"):
        shutil.rmtree(work / old, ignore_errors=True)
    started = time.perf_counter()
    data = make_inputs(args.articles, args.questions, args.seed)
    inputs = work / "inputs.json"
    inputs.write_text(json.dumps(data))
    chars = [len(d["text"]) for d in data["documents"]]
    words = sum(len(d["text"].split()) for d in data["documents"]) / len(chars)
    print(f"inputs: {len(chars):,} articles ({np.mean(chars):,.0f} characters and {words:,.0f} "
          f"words each on average, {sum(chars) / 1e6:.1f}M characters), "
          f"{len(data['queries']):,} questions ({np.mean([len(q) for q in data['queries']]):.0f}"
          f" characters a query); made in {time.perf_counter() - started:.1f} s", flush=True)
    new_question = [(rag_query(data["documents"][0]["title"], "", "", "Who is new here?",
                               ["one", "two", "three", "four"]), data["documents"][0]["uid"])]
    owners, titles = data["owners"], {d["uid"]: d["title"] for d in data["documents"]}
    del data

    base = {"chunk_unit": "characters", "chunk_size": args.chunk_size, "chunk_overlap": 0,
            "candidates": args.candidates, "top_k": args.top_k}
    result = {"articles": args.articles, "questions": args.questions}

    # 1. chunking
    chunked = run(inputs, "chunk", base)
    print(f"1. chunking by characters ({args.chunk_size}/0): {chunked['chunks']:,} chunks "
          f"(passages {chunked['mean_passage']:,.0f} characters on average, "
          f"{chunked['min_passage']:,}-{chunked['max_passage']:,}; "
          f"{chunked['mean_chars']:,.0f} with the title/author/year prefix)", flush=True)
    print(line("chunking", chunked), flush=True)
    result.update(chunks=chunked["chunks"], chunk_s=f"{chunked['seconds']:.2f}",
                  chunk_rss_mb=f"{chunked['rss_mb'] - chunked['base_rss_mb']:.0f}")

    # 2. BM25
    bm25_cfg = {**base, "cache_dir": str(work / "cache_bm25")}
    print(f"2. BM25: {args.questions:,} questions x {args.candidates} candidates, "
          f"top {args.top_k}", flush=True)
    first, again = first_and_rerun(inputs, bm25_cfg)
    assert first["stats"]["index"] == "built" and again["stats"]["index"] == "cached"
    assert again["digest"] == first["digest"], "the rerun's chunks differ from the first call's"
    index_dir = Path(first["stats"]["index_dir"])
    speedup = first["seconds"] / again["seconds"]
    print(f"  first/rerun {speedup:.2f}x; index folder {mb(folder_size(index_dir))} (bm25/ "
          f"{mb(folder_size(index_dir / 'bm25'))}); recall@{args.top_k} {first['recall']:.3f}, "
          f"top-1 own article {first['top1']:.3f}", flush=True)
    result.update(bm25_first_s=f"{first['seconds']:.1f}", bm25_rerun_s=f"{again['seconds']:.1f}",
                  bm25_rerun_speedup=f"{speedup:.2f}",
                  bm25_first_rss_mb=f"{first['rss_mb']:.0f}",
                  bm25_rerun_rss_mb=f"{again['rss_mb']:.0f}",
                  bm25_index_mb=f"{folder_size(index_dir) / 1e6:.1f}",
                  bm25_recall=f"{first['recall']:.3f}")

    with Server() as server:
        print(f"server: {server.base_url} (tests/openai_server.py, pid {server.proc.pid})",
              flush=True)
        service = {"backend": "openai", "base_url": server.base_url,
                   "batch_size": args.batch_size, "max_in_flight": args.max_in_flight}
        dense_cfg = {**base, "cache_dir": str(work / "cache_dense"),
                     "retriever": {**service, "model": "text-embedding-3-large",
                                   "dimensions": args.dimensions}}
        result.update(dense(inputs, dense_cfg, server, args, work))
        rerank_cfg = {**dense_cfg, "reranker": {**service, "model": "rerank-v3.5"}}
        result.update(reranking(inputs, rerank_cfg, server, args, work, new_question, owners,
                                titles))
    result["total_s"] = f"{time.perf_counter() - total:.0f}"
    return result


def first_and_rerun(inputs: Path, cfg: dict, server: Server | None = None) -> tuple[dict, dict]:
    """The same retrieval twice, each in a fresh process: building, then on the caches."""
    calls = []
    for label in ("first", "rerun"):
        calls.append(run(inputs, "retrieve", cfg, server=server))
        print(line(label, calls[-1]), flush=True)
        print(written(calls[-1]), flush=True)
    return calls[0], calls[1]


def dense(inputs: Path, cfg: dict, server: Server, args, work: Path) -> dict:
    print(f"3. embeddings: openai backend, {args.dimensions} dimensions, {args.batch_size} texts "
          f"a request, {args.max_in_flight} in flight; FAISS IndexFlatIP", flush=True)
    first, again = first_and_rerun(inputs, cfg, server=server)
    stats = first["stats"]
    assert stats["index"] == "built" and again["stats"]["index"] == "cached"
    assert first["requests"].get("/v1/embeddings") == stats["embedding_requests"]
    assert not again["requests"], f"the rerun sent requests: {again['requests']}"
    assert again["stats"]["embedded_texts"] == 0 and again["digest"] == first["digest"]
    index_dir = Path(stats["index_dir"])
    [query_cache] = (work / "cache_dense" / "query_embeddings").glob("*.jsonl")
    speedup = first["seconds"] / again["seconds"]
    print(f"  first/rerun {speedup:.2f}x; {stats['embedded_texts']:,} texts in "
          f"{stats['embedding_requests']} requests, rerun 0; index folder "
          f"{mb(folder_size(index_dir))} (index.faiss "
          f"{mb((index_dir / 'index.faiss').stat().st_size)}, chunks.jsonl "
          f"{mb((index_dir / 'chunks.jsonl').stat().st_size)}); query-embedding "
          f"cache {mb(query_cache.stat().st_size)}; recall@{args.top_k} {first['recall']:.3f}, "
          f"top-1 own article {first['top1']:.3f}", flush=True)
    return {"embed_first_s": f"{first['seconds']:.1f}", "embed_rerun_s": f"{again['seconds']:.1f}",
            "embed_rerun_speedup": f"{speedup:.2f}",
            "embed_requests": stats["embedding_requests"], "embed_rerun_requests": 0,
            "embed_first_rss_mb": f"{first['rss_mb']:.0f}",
            "embed_first_rss_over_base_mb": f"{first['rss_mb'] - first['base_rss_mb']:.0f}",
            "embed_rerun_rss_mb": f"{again['rss_mb']:.0f}",
            "embed_index_mb": f"{folder_size(index_dir) / 1e6:.1f}",
            "query_cache_mb": f"{query_cache.stat().st_size / 1e6:.1f}",
            "embed_recall": f"{first['recall']:.3f}"}


def reranking(inputs: Path, cfg: dict, server: Server, args, work: Path, new_question: list,
              owners: list[str], titles: dict[str, str]) -> dict:
    print(f"4. reranking: /v1/rerank, {args.questions:,} questions x {args.candidates} "
          f"candidates (stage 3's cached index and question vectors)", flush=True)
    first, again = first_and_rerun(inputs, cfg, server=server)
    stats = first["stats"]
    assert first["requests"] == {"/v1/rerank": args.questions} == {
        "/v1/rerank": stats["rerank_requests"]}, first["requests"]
    assert not again["requests"], f"the rerun sent requests: {again['requests']}"
    assert again["stats"]["reranked_queries"] == 0 and again["digest"] == first["digest"]
    [rerank_cache] = (work / "cache_dense" / "rerank").glob("*.jsonl")
    cache_size = rerank_cache.stat().st_size  # stage 6 may add to it
    speedup = first["seconds"] / again["seconds"]
    print(f"  first/rerun {speedup:.2f}x; {stats['rerank_requests']:,} requests, rerun 0; rerank "
          f"cache {mb(cache_size)}; recall@{args.top_k} {first['recall']:.3f}, "
          f"top-1 own article {first['top1']:.3f}", flush=True)
    # The same work for a quarter of the questions (another model name: its own cache file):
    # the client's CPU a request should not depend on how many requests one call sends.
    quarter_uids = sorted(set(owners))[:max(1, len(set(owners)) // 4)]
    quarter = run(inputs, "retrieve", {**cfg, "reranker": {**cfg["reranker"],
                                                           "model": "rerank-v3.5-quarter"}},
                  server=server, only=quarter_uids)
    print(line("quarter", quarter), flush=True)
    per = {name: row["phase_cpu"]["rerank"] / row["requests"]["/v1/rerank"]
           for name, row in (("all", first), ("quarter", quarter))}
    checks = {name: row["slot_checks"] / row["requests"]["/v1/rerank"]
              for name, row in (("all", first), ("quarter", quarter))}
    print(f"  client CPU a rerank request (the rerank phase's CPU time): "
          f"{1000 * per['all']:.1f} ms with {first['requests']['/v1/rerank']:,} requests, "
          f"{1000 * per['quarter']:.1f} ms with {quarter['requests']['/v1/rerank']:,} "
          f"({per['all'] / per['quarter']:.2f}x); waiting-for-a-slot checks a request "
          f"{checks['all']:,.0f} vs {checks['quarter']:,.0f} "
          f"({checks['all'] / checks['quarter']:.2f}x)",
          flush=True)

    print("5. one new question on top of the cached ones (stage 4's config)", flush=True)
    more = run(inputs, "retrieve", cfg, server=server, extra=new_question)
    print(line("+1", more), flush=True)
    print(written(more), flush=True)
    assert more["requests"].get("/v1/embeddings") == 1, more["requests"]
    moved = sum(a != b for a, b in zip(more["row_digests"], first["row_digests"]))
    rewritten = sum(more["written"].values())
    print(f"  {more['seconds'] / again['seconds']:.2f}x the rerun's time; "
          f"{len(more['cache_rewrites'])} cache files rewritten whole ({mb(rewritten)}) for "
          f"1 embedded text; questions reranked: the new one and "
          f"{more['stats']['reranked_queries'] - 1} old ones (missed the rerank cache); "
          f"{moved} old questions' top {args.top_k} differ from stage 4's", flush=True)

    uids = sorted(set(owners), key=lambda uid: titles[uid])[:max(1, len(titles) // 5)]
    subset = [n for n, owner in enumerate(owners) if owner in set(uids)]
    print(f"6. a subset: the {len(subset):,} questions of the first {len(uids)} articles by title "
          f"(as a validation split), all cached by stage 4", flush=True)
    part = run(inputs, "retrieve", cfg, server=server, only=uids)
    print(line("subset", part), flush=True)
    print(written(part), flush=True)
    differ = sum(a != first["row_digests"][n] for a, n in zip(part["row_digests"], subset))
    print(f"  {part['stats']['embedded_texts']} texts embedded, "
          f"{part['stats']['reranked_queries']} of {len(subset):,} questions reranked again "
          f"(missed the rerank cache), {differ} questions' top {args.top_k} differ from stage "
          f"4's", flush=True)
    return {"rerank_first_s": f"{first['seconds']:.1f}",
            "rerank_rerun_s": f"{again['seconds']:.1f}", "rerank_rerun_speedup": f"{speedup:.2f}",
            "rerank_requests": stats["rerank_requests"], "rerank_rerun_requests": 0,
            "rerank_first_rss_mb": f"{first['rss_mb']:.0f}",
            "rerank_rerun_rss_mb": f"{again['rss_mb']:.0f}",
            "rerank_cache_mb": f"{cache_size / 1e6:.1f}",
            "rerank_client_ms_per_request": f"{1000 * per['all']:.1f}",
            "rerank_quarter_client_ms_per_request": f"{1000 * per['quarter']:.1f}",
            "rerank_slot_checks_per_request": f"{checks['all']:.0f}",
            "rerank_quarter_slot_checks_per_request": f"{checks['quarter']:.0f}",
            "rerank_recall": f"{first['recall']:.3f}",
            "new_question_s": f"{more['seconds']:.1f}",
            "new_question_rewritten_mb": f"{rewritten / 1e6:.1f}",
            "new_question_reranked": more["stats"]["reranked_queries"],
            "subset_questions": len(subset),
            "subset_reranked": part["stats"]["reranked_queries"],
            "subset_rows_differ": differ}


if __name__ == "__main__":
    main()
