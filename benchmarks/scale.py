"""The data path at the paper's scale, side by side with the straightforward approach, in one run.

1. Resuming a call store of --calls calls (default 1,000,000, ~3 KB replies: ~3 GB): open it,
   total its spend and look every call up, as a resume with nothing left to do does. Ours
   (entigraph.call_store: the index only, texts left on disk) against loading every line into
   a dict (the store before the index).
2. Tokenising a corpus of --tokens tokens or more (default 100M) with a real fast BPE tokenizer
   (32k vocabulary, trained here on the corpus's words): ours (token_data.tokenize_once,
   streaming batches into the memory-mapped token file) against `datasets` (load the JSON
   lines, `map` batched, the usual recipe).
3. Rerunning `entigraph generate` with nothing new over a store of --rerun-calls finished
   EntiGraph calls (default 200,000 over 265 articles, ~2.5 KB replies; written directly, keyed
   as generation plans them): ours (the manifest says nothing changed: the corpus is left as it
   is) against rewriting corpus.jsonl from the store and counting its tokens again with a real
   BPE tokenizer, as every rerun did before (forced by removing `inputs_sha256` from the
   manifest).

Each measurement runs in a fresh process, which reports its wall time and peak resident memory.

    .venv/bin/python benchmarks/scale.py [--calls N] [--tokens N] [--rerun-calls N]
                                         [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entigraph.call_store import CallStore, reply_entry  # noqa: E402
from entigraph.llm import ChatResult  # noqa: E402

REPLY_CHARS = 3000
WORDS = 20000  # the corpus's vocabulary of made-up words, drawn Zipf-like

# Each child prints one JSON line: its own seconds and peak RSS (MB).
MEASURE = """
import json, resource, sys, time
start = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - start,
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}}))
"""

OURS_RESUME = """
from entigraph.call_store import CallStore
with CallStore(sys.argv[1]) as store:
    latest = store.latest()
    ok = latest[latest["error"] == 0]
    spent = int(ok["input_tokens"].sum()), int(ok["output_tokens"].sum())
    left = sum(not store.done(f"{i:032x}") for i in range(int(sys.argv[2])))
extra = {"left": left, "calls": len(ok)}
"""

LOAD_EVERY_LINE = """
entries = {}
with open(sys.argv[1], "rb") as f:
    for line in f:
        entry = json.loads(line)
        entries[entry["key"]] = entry
ok = [e for e in entries.values() if "error" not in e]
spent = sum(e["input_tokens"] for e in ok), sum(e["output_tokens"] for e in ok)
left = sum(f"{i:032x}" not in entries for i in range(int(sys.argv[2])))
extra = {"left": left, "calls": len(ok)}
"""

OURS_TOKENIZE = """
from pathlib import Path
from transformers import PreTrainedTokenizerFast
from entigraph.corpus_folder import iter_texts
from entigraph.token_data import tokenize_once
tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[2])
arrays = tokenize_once(lambda: iter_texts(sys.argv[1]), tokenizer, Path(sys.argv[3]),
                       {"source": "benchmark"}, total=int(sys.argv[4]))
extra = {"tokens": arrays.n_tokens}
"""

DATASETS_MAP = """
import datasets
from transformers import PreTrainedTokenizerFast
datasets.disable_progress_bars()
tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[2])
corpus = datasets.load_dataset("json", data_files=sys.argv[1] + "/corpus.jsonl", split="train",
                               cache_dir=sys.argv[3])
ids = corpus.map(lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
                 batched=True, batch_size=512, remove_columns=corpus.column_names)
import pyarrow.compute as pc
extra = {"tokens": int(pc.sum(pc.list_value_length(ids.data.column("ids"))).as_py())}
"""


def measure(body: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE.format(body=body), *map(str, args)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_store(path: Path, calls: int) -> float:
    """A store of `calls` replies of REPLY_CHARS characters, keys f"{i:032x}"."""
    start, text = time.perf_counter(), "x" * REPLY_CHARS
    with CallStore(path) as store:
        for first in range(0, calls, 10000):
            store.append_many([reply_entry(f"{i:032x}", ChatResult(text, 1500, 700),
                                           {"doc": f"d{i % 265}", "kind": "relation"})
                               for i in range(first, min(first + 10000, calls))])
    return time.perf_counter() - start


def build_corpus(folder: Path, tokens: int, seed: int = 0) -> int:
    """corpus.jsonl of texts of ~400 made-up words each, about `tokens` words in all."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(WORDS)]
    weights = 1.0 / np.arange(1, WORDS + 1)
    weights /= weights.sum()
    folder.mkdir(parents=True, exist_ok=True)
    texts = 0
    with open(folder / "corpus.jsonl", "w") as f:
        for _ in range(0, tokens, 400 * 1000):
            draws = rng.choice(WORDS, size=(1000, 400), p=weights)
            for row in draws:
                f.write(json.dumps({"text": " ".join(vocab[i] for i in row)}) + "\n")
                texts += 1
    return texts


def train_bpe(folder: Path, out: Path) -> None:
    from entigraph.corpus_folder import iter_texts
    from entigraph.tiny_model import train_tokenizer

    sample = (text for _, text in zip(range(20000), iter_texts(folder)))
    train_tokenizer(sample, 32000).save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="0: skip the store")
    parser.add_argument("--tokens", type=int, default=100_000_000, help="0: skip tokenising")
    parser.add_argument("--rerun-calls", type=int, default=200_000,
                        help="calls in the store of the rerun (0: skip it)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="entigraph-scale-"))
    try:
        result = []
        if args.calls:
            result = resume_store(work / "store" / "calls.jsonl", args.calls)
        if args.tokens:
            result += tokenise(work, args.tokens)
        if args.rerun_calls:
            result += rerun_generate(work / "generate", args.rerun_calls)
        print("RESULT " + " ".join(result))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def resume_store(store: Path, calls: int) -> list[str]:
    shutil.rmtree(store.parent, ignore_errors=True)
    built = build_store(store, calls)
    size_gb = store.stat().st_size / 1e9
    print(f"store: {calls:,} calls, {size_gb:.2f} GB, built in {built:.0f} s", flush=True)
    ours = measure(OURS_RESUME, store, calls)
    plain = measure(LOAD_EVERY_LINE, store, calls)
    assert ours["left"] == plain["left"] == 0 and ours["calls"] == plain["calls"], (ours, plain)
    for name, row in (("index (ours)", ours), ("every line", plain)):
        print(f"  resume, {name:<13}: {row['seconds']:6.1f} s, peak RSS {row['rss_mb']:7,.0f} MB",
              flush=True)
    return [f"store_calls={calls}", f"store_resume_s={ours['seconds']:.2f}",
            f"store_resume_rss_mb={ours['rss_mb']:.0f}",
            f"store_every_line_s={plain['seconds']:.2f}",
            f"store_every_line_rss_mb={plain['rss_mb']:.0f}"]


def tokenise(work: Path, tokens: int) -> list[str]:

    corpus, tokenizer = work / "corpus", work / "tokenizer"
    if not (corpus / "corpus.jsonl").exists():  # a --workdir keeps it for the next run
        build_corpus(corpus, tokens)
        train_bpe(corpus, tokenizer)
    with open(corpus / "corpus.jsonl") as f:
        texts = sum(1 for _ in f)
    shutil.rmtree(work / "tokens", ignore_errors=True)
    shutil.rmtree(work / "datasets_cache", ignore_errors=True)
    mine = measure(OURS_TOKENIZE, corpus, tokenizer, work / "tokens", texts)
    theirs = measure(DATASETS_MAP, corpus, tokenizer, work / "datasets_cache")
    print(f"corpus: {texts:,} texts, {mine['tokens']:,} tokens "
          f"({(corpus / 'corpus.jsonl').stat().st_size / 1e9:.2f} GB)")
    for name, row in (("ours", mine), ("datasets.map", theirs)):
        print(f"  tokenise, {name:<12}: {row['seconds']:6.1f} s "
              f"({row['tokens'] / row['seconds'] / 1e6:.2f}M tokens/s), "
              f"peak RSS {row['rss_mb']:7,.0f} MB", flush=True)
    # Our count includes each text's BOS and EOS; datasets' does not: speed compares times.
    return [f"tokens={mine['tokens']}",
            f"tokenize_tokens_per_s={mine['tokens'] / mine['seconds']:.0f}",
            f"tokenize_rss_mb={mine['rss_mb']:.0f}",
            f"datasets_tokens_per_s={theirs['tokens'] / theirs['seconds']:.0f}",
            f"datasets_rss_mb={theirs['rss_mb']:.0f}",
            f"tokenize_speedup={theirs['seconds'] / mine['seconds']:.2f}"]



# `entigraph generate` in a child process: its wall time and peak resident memory.
GENERATE = """
import resource, subprocess
subprocess.run([sys.executable, "-m", "entigraph", "generate", *sys.argv[1:]], check=True,
               stdout=subprocess.DEVNULL)
extra = {"child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
"""


def articles_file(path: Path, docs: int) -> None:
    """A QuALITY-format file of `docs` short made-up articles."""
    with open(path, "w") as f:
        for d in range(docs):
            f.write(json.dumps({"article_id": f"a{d}", "set_unique_id": f"s{d}",
                                "title": f"Article {d}", "author": "Writer, Ann", "year": "1958",
                                "article": f"Ada{d} met Bram{d} at the harbour of Port{d}.",
                                "questions": []}) + "\n")


def prefill_store(args: list[str], calls: int, reply_texts: list[str]) -> None:
    """The call store of a finished EntiGraph run, written directly: for every article its
    extraction (20 entities) and its relation calls (190 pairs and as many triples as make up
    `calls`), keyed as `entigraph generate` plans them, each reply one of `reply_texts`."""
    import random

    from hydra import compose, initialize_config_module

    from entigraph.config import register_configs
    from entigraph.corpus import load_corpus
    from entigraph.corpus_folder import CALLS
    from entigraph.prompts import PROMPT_SETS
    from entigraph.synthesis import Plan, entity_tuples

    register_configs()
    with initialize_config_module("entigraph.conf"):
        cfg = compose("generate", overrides=args)
    docs = load_corpus(cfg.corpus, cfg.paths.cache)
    plan, syn = Plan(PROMPT_SETS[cfg.synthesis.prompt_set], cfg.generator), cfg.synthesis
    n = 0
    with CallStore(Path(syn.output_dir) / CALLS) as store:
        for doc in docs:
            entities = [f"Person{doc.uid}x{i}" for i in range(20)]
            extraction = json.dumps({"summary": f"About {doc.title}.", "entities": entities})
            entries = [reply_entry(plan.extraction(doc, 0).key, ChatResult(extraction, 500, 80),
                                   {})]
            for tup in entity_tuples(entities, syn.max_triples,
                                     random.Random(f"{syn.seed}:{doc.uid}")):
                text = reply_texts[n % len(reply_texts)]
                entries.append(reply_entry(plan.relation(doc, tup).key,
                                           ChatResult(text, 1500, 700), {}))
                n += 1
            store.append_many(entries)


def rerun_generate(work: Path, calls: int) -> list[str]:
    """`entigraph generate` over a prefilled store: the first run writes the corpus and counts
    its tokens; then a rerun with nothing new (ours) and one forced to rewrite and recount."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    docs = 265
    articles_file(work / "articles.jsonl", docs)
    build_corpus(work / "texts", calls // 100 * 400 // 5, seed=1)  # a pool of ~2.5 KB texts
    train_bpe(work / "texts", work / "tokenizer")
    with open(work / "texts" / "corpus.jsonl") as f:
        pool = [json.loads(line)["text"] for line in f]
    args = [f"paths.root={work}", "corpus=quality", f"corpus.path={work / 'articles.jsonl'}",
            "synthesis.max_entities=20", f"synthesis.max_triples={max(1, calls // docs - 190)}",
            f"model.pretrained={work / 'tokenizer'}"]
    prefill_store(args, calls, pool)
    first = measure(GENERATE, *args)
    (folder,) = (work / "corpora").glob("*/*")
    manifest = json.loads((folder / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["calls"] == docs * (1 + 190 + max(1, calls // docs - 190)), totals
    print(f"corpus written from the store: {totals['calls']:,} calls, {totals['texts']:,} texts, "
          f"{totals['synthetic_tokens']:,} tokens, "
          f"{(folder / 'corpus.jsonl').stat().st_size / 1e9:.2f} GB in {first['seconds']:.0f} s",
          flush=True)
    ours = measure(GENERATE, *args)
    del manifest["inputs_sha256"]  # as a manifest written before the check: rewritten
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rewrite = measure(GENERATE, *args)
    for name, row in (("nothing new (ours)", ours), ("rewrite and recount", rewrite)):
        print(f"  rerun, {name:<19}: {row['seconds']:6.1f} s, peak RSS "
              f"{row['child_rss_mb']:6,.0f} MB", flush=True)
    return [f"rerun_calls={totals['calls']}", f"rerun_nothing_new_s={ours['seconds']:.2f}",
            f"rerun_nothing_new_rss_mb={ours['child_rss_mb']:.0f}",
            f"rerun_rewrite_s={rewrite['seconds']:.2f}",
            f"rerun_speedup={rewrite['seconds'] / ours['seconds']:.1f}"]


if __name__ == "__main__":
    main()
