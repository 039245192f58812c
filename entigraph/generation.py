"""`entigraph generate`: backend, call store and budget around a synthesis method, then the
corpus and its manifest. Also the dry run, which plans and prices the calls without making any.
"""
from __future__ import annotations

import asyncio
import json
import logging
from math import comb
from pathlib import Path

from entigraph.call_store import CallStore
from entigraph.corpus import Document
from entigraph.engine import Budget, Engine, Prices
from entigraph.errors import CorpusError
from entigraph.prompts import PROMPT_SETS
from entigraph.records import write_atomic, write_json_atomic
from entigraph.synthesis import (CALLS, CHARS_PER_TOKEN, CORPUS, MANIFEST, METHODS, Plan,
                                 raw_items)

log = logging.getLogger(__name__)


def check_context(docs: list[Document], generator_cfg) -> None:
    """Refuse, before any call, a document the generator cannot read whole."""
    for doc in docs:
        tokens = len(doc.text) // CHARS_PER_TOKEN
        if tokens > generator_cfg.context_tokens:
            raise CorpusError(f"document {doc.uid!r} ({doc.title}) is about {tokens} tokens, more "
                              f"than generator.context_tokens={generator_cfg.context_tokens}; "
                              f"split it into parts or use a generator with a longer context")


def make_backend(generator_cfg, docs: list[Document], synthesis_cfg):
    """The configured backend; None for `batch`, whose requests go to files instead."""
    kind = generator_cfg.backend
    if kind == "offline":
        from entigraph.offline_generator import OfflineBackend
        return OfflineBackend(docs, synthesis_cfg.max_entities)
    if kind == "openai":
        from entigraph.openai_backend import OpenAIBackend
        return OpenAIBackend(generator_cfg)
    if kind == "vllm":
        from entigraph.vllm_backend import VLLMBackend
        return VLLMBackend(generator_cfg)
    return None


def ingest_batch_results(store: CallStore, paths) -> int:
    """Put the successful lines of OpenAI-format batch result files into the store."""
    from entigraph.batch_files import read_batch_results

    count = 0
    for path in paths:
        for key, result in read_batch_results(Path(path)).items():
            if isinstance(result, str):
                log.warning("batch result %s failed: %s", key, result)
            elif store.result(key) is None:
                store.put(key, result)
                count += 1
    return count


def generate_corpus(docs: list[Document], cfg) -> dict:
    """Build the configured corpus in synthesis.output_dir; return its manifest."""
    syn = cfg.synthesis
    if syn.method == "raw":
        return write_corpus(Path(syn.output_dir), raw_items(docs), docs, cfg, None, {}, "complete")
    check_context(docs, cfg.generator)
    return asyncio.run(_synthesize(docs, cfg))


async def _synthesize(docs: list[Document], cfg) -> dict:
    syn, gen = cfg.synthesis, cfg.generator
    out = Path(syn.output_dir)
    # The backend is built and reached first: a missing key or an unreachable server fails
    # in seconds and leaves no corpus folder behind.
    backend = make_backend(gen, docs, syn)
    try:
        if hasattr(backend, "preflight"):
            await backend.preflight()
        with CallStore(out / CALLS) as store:
            if gen.backend == "batch":
                ingest_batch_results(store, gen.batch_results)
            engine = Engine(backend, store, gen.max_in_flight,
                            Prices(gen.price_input_per_mtok, gen.price_output_per_mtok),
                            Budget(syn.budget_tokens, syn.budget_dollars))
            outcome = await METHODS[syn.method](docs, Plan(PROMPT_SETS[syn.prompt_set], gen),
                                                engine, syn)
            if engine.unsent:
                _write_batch(engine.unsent, gen, out)
            return write_corpus(out, outcome.items, docs, cfg, store, outcome.failed_docs,
                                _status(engine, store))
    finally:
        if backend is not None:
            await backend.aclose()


def _write_batch(requests, gen, out: Path) -> None:
    from entigraph.batch_files import write_batch_requests

    files = write_batch_requests(requests, gen.model, out / "batch" / "requests.jsonl",
                                 gen.structured_output)
    print(f"wrote {len(requests)} requests to {', '.join(map(str, files))}: submit them "
          f"(OpenAI Batch API, or `python -m entigraph.vllm_backend run-batch -i <file> -o <out> "
          f"--model <model>` on your own GPUs), then rerun with "
          f"generator.batch_results=[<result files>] to ingest them and plan the next stage")


def _status(engine: Engine, store: CallStore) -> str:
    if engine.unsent:
        return "waiting_for_batch"
    if engine.budget_reached():
        return "budget_reached"
    return "incomplete" if store.failures() else "complete"


def _count_tokens(items: list[dict], out: Path, model_cfg) -> list[int]:
    """Synthetic tokens of each text, counted with the training tokenizer."""
    from entigraph.models import load_tokenizer

    tokenizer = load_tokenizer(model_cfg, out)
    texts = [item["text"] for item in items]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def write_corpus(out: Path, items: list[dict], docs, cfg, store, failed_docs: dict, status: str) -> dict:
    """corpus.jsonl, then manifest.json (per document and in total: calls, tokens, cost)."""
    write_atomic(out / CORPUS, "".join(json.dumps(item) + "\n" for item in items))
    prices = Prices(cfg.generator.price_input_per_mtok, cfg.generator.price_output_per_mtok)
    per_doc = {doc.uid: {"title": doc.title, "calls": 0, "input_tokens": 0, "output_tokens": 0,
                         "failed_calls": 0, "texts": 0, "synthetic_tokens": 0, "cost": 0.0}
               for doc in docs}
    for entry in (store.entries.values() if store else ()):
        stats = per_doc.get(entry["meta"].get("doc"))
        if stats is None:
            continue
        if "error" in entry:
            stats["failed_calls"] += 1
            continue
        stats["calls"] += 1
        stats["input_tokens"] += entry["input_tokens"]
        stats["output_tokens"] += entry["output_tokens"]
        stats["cost"] += prices.cost(entry["input_tokens"], entry["output_tokens"])
    for item, tokens in zip(items, _count_tokens(items, out, cfg.model)):
        per_doc[item["doc_uid"]]["texts"] += 1
        per_doc[item["doc_uid"]]["synthetic_tokens"] += tokens
    for uid, reason in failed_docs.items():
        per_doc[uid]["failure"] = reason
    totals = {key: sum(d[key] for d in per_doc.values())
              for key in ("calls", "input_tokens", "output_tokens", "failed_calls", "texts",
                          "synthetic_tokens", "cost")}
    totals["failed_documents"] = len(failed_docs)
    gen, syn = cfg.generator, cfg.synthesis
    manifest = {
        "status": status,
        "method": syn.method,
        "prompt_set": None if syn.method == "raw" else syn.prompt_set,
        "generator": {"backend": gen.backend, "model": gen.model, "base_url": gen.base_url,
                      "temperature": gen.temperature, "max_tokens": gen.max_tokens,
                      "structured_output": gen.structured_output},
        "settings": {"max_entities": syn.max_entities, "max_triples": syn.max_triples,
                     "extraction_attempts": syn.extraction_attempts,
                     "rephrase_rounds": syn.rephrase_rounds, "seed": syn.seed,
                     "budget_tokens": syn.budget_tokens, "budget_dollars": syn.budget_dollars},
        "prices_per_mtok": {"input": gen.price_input_per_mtok, "output": gen.price_output_per_mtok},
        "token_counter": cfg.model.pretrained or f"{cfg.model.name} tokenizer trained on this corpus",
        "documents": per_doc,
        "totals": totals,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def estimate(docs: list[Document], cfg) -> dict:
    """Planned calls, tokens and dollars before anything is spent (dry run)."""
    syn, gen = cfg.synthesis, cfg.generator
    prompts = PROMPT_SETS[syn.prompt_set]
    corpus_tokens = sum(len(prompts.document_block(d)) for d in docs) // CHARS_PER_TOKEN

    def prompt_tokens(system: str) -> int:  # one call per document with this system prompt
        return corpus_tokens + len(docs) * len(system) // CHARS_PER_TOKEN

    if syn.method == "raw":
        calls = {}
    elif syn.method == "rephrase":
        styles = prompts.rephrase_styles.values()
        calls = {"rephrase": (len(docs) * len(styles) * syn.rephrase_rounds,
                              syn.rephrase_rounds * sum(prompt_tokens(s) for s in styles))}
    else:
        n = syn.max_entities  # the cap stands in for the entity count not known before extraction
        per_doc = comb(n, 2) + min(comb(n, 3), syn.max_triples)
        calls = {"extraction": (len(docs), prompt_tokens(prompts.extraction_system)),
                 "relation": (len(docs) * per_doc, per_doc * prompt_tokens(prompts.relation_system))}
    out_per_call = {"extraction": 300, "relation": syn.expected_output_tokens,
                    "rephrase": syn.expected_output_tokens}
    prices = Prices(gen.price_input_per_mtok, gen.price_output_per_mtok)
    rows = {kind: {"calls": c, "input_tokens": tin, "output_tokens": c * out_per_call[kind],
                   "dollars": prices.cost(tin, c * out_per_call[kind])}
            for kind, (c, tin) in calls.items()}
    total = {k: sum(r[k] for r in rows.values()) for k in ("calls", "input_tokens", "output_tokens", "dollars")}
    return {"by_kind": rows, "total": total}
