"""`entigraph generate`: backend, call store and budget around a synthesis method, then the
corpus and its manifest. Also the dry run, which plans and prices the calls without making any.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Optional

from entigraph.call_store import CallStore
from entigraph.corpus import Document
from entigraph.engine import Budget, Engine, Prices
from entigraph.errors import CorpusError
from entigraph.llm import rejects_response_format, resolve_structured_output
from entigraph.prompts import PROMPT_SETS, PromptSet
from entigraph.records import write_atomic, write_json_atomic
from entigraph.synthesis import (CALLS, CHARS_PER_TOKEN, CORPUS, MANIFEST, METHODS, Plan,
                                 parse_extraction, raw_items, relation_calls)

log = logging.getLogger(__name__)


def check_context(docs: list[Document], generator_cfg) -> None:
    """Refuse, before any call, a document the generator cannot read whole."""
    for doc in docs:
        tokens = len(doc.text) // CHARS_PER_TOKEN
        if tokens > generator_cfg.context_tokens:
            raise CorpusError(f"document {doc.uid!r} ({doc.title}) is about {tokens} tokens, more "
                              f"than generator.context_tokens={generator_cfg.context_tokens}; "
                              f"split it into parts or use a generator with a longer context")


def make_backend(generator_cfg, docs: list[Document], synthesis_cfg, prompts: PromptSet):
    """The configured backend; None for `batch`, whose requests go to files instead."""
    kind = generator_cfg.backend
    if kind == "offline":
        from entigraph.offline_generator import OfflineBackend
        return OfflineBackend(docs, synthesis_cfg.max_entities, prompts)
    if kind == "openai":
        from entigraph.openai_backend import OpenAIBackend
        return OpenAIBackend(generator_cfg)
    if kind == "vllm":
        from entigraph.vllm_backend import VLLMBackend
        return VLLMBackend(generator_cfg)
    return None


def ingest_batch_results(store: CallStore, paths) -> bool:
    """Put the successful lines of OpenAI-format batch result files into the store; True when
    some line says the server refused our JSON schema (its requests are written again in JSON
    mode)."""
    from entigraph.batch_files import read_batch_results

    refused = False
    for path in paths:
        for key, result in read_batch_results(Path(path)).items():
            if isinstance(result, str):
                log.warning("batch result %s failed: %s", key, result)
                refused |= rejects_response_format(result)
            elif store.result(key) is None:
                store.put(key, result)
    return refused


def generate_corpus(docs: list[Document], cfg) -> dict:
    """Build the configured corpus in synthesis.output_dir; return its manifest."""
    syn = cfg.synthesis
    if syn.method == "raw":
        return write_corpus(Path(syn.output_dir), raw_items(docs, PROMPT_SETS[syn.prompt_set]),
                            docs, cfg, None, {}, "complete", None)
    check_context(docs, cfg.generator)
    return asyncio.run(_synthesize(docs, cfg))


async def _synthesize(docs: list[Document], cfg) -> dict:
    syn, gen = cfg.synthesis, cfg.generator
    out = Path(syn.output_dir)
    prompts = PROMPT_SETS[syn.prompt_set]
    structured = resolve_structured_output(gen.structured_output, gen.backend, gen.model)
    # The backend is built and reached first: a missing key or an unreachable server fails
    # in seconds and leaves no corpus folder behind.
    backend = make_backend(gen, docs, syn, prompts)
    try:
        if hasattr(backend, "preflight"):
            await backend.preflight()
        with CallStore(out / CALLS) as store:
            if gen.backend == "batch" and ingest_batch_results(store, gen.batch_results) \
                    and structured == "json_schema":
                structured = "json_object"
                log.warning("a batch result says the server refused response_format "
                            "json_schema; requests are written in JSON mode (json_object)")
            engine = Engine(backend, store, gen.max_in_flight,
                            Prices(gen.price_input_per_mtok, gen.price_output_per_mtok),
                            Budget(syn.budget_tokens, syn.budget_dollars))
            outcome = await METHODS[syn.method](docs, Plan(prompts, gen), engine, syn)
            if engine.unsent:
                _write_batch(engine.unsent, gen.model, structured, out)
            # The backend may have switched to JSON mode when the server refused the schema.
            structured = getattr(backend, "structured_output", structured)
            return write_corpus(out, outcome.items, docs, cfg, store, outcome.failed_docs,
                                _status(engine, store), structured)
    finally:
        if backend is not None:
            await backend.aclose()


def _write_batch(requests, model: str, structured_output: str, out: Path) -> None:
    from entigraph.batch_files import write_batch_requests

    files = write_batch_requests(requests, model, out / "batch" / "requests.jsonl",
                                 structured_output)
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


def write_corpus(out: Path, items: list[dict], docs, cfg, store, failed_docs: dict, status: str,
                 structured_output: Optional[str]) -> dict:
    """corpus.jsonl, then manifest.json (per document and in total: calls, tokens, cost);
    `structured_output` is the extraction output mode the run used (None: no extraction)."""
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
                      "structured_output": structured_output},
        "settings": {"max_entities": syn.max_entities, "max_triples": syn.max_triples,
                     "expected_entities": syn.expected_entities,
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


def stored_entity_counts(docs: list[Document], cfg) -> dict[str, int]:
    """Entities of each document whose extraction is already in the corpus folder's call store
    (a rerun's dry run), read without taking the store's lock: a generation may be running."""
    syn = cfg.synthesis
    path = Path(syn.output_dir) / CALLS
    if not path.exists():
        return {}
    plan = Plan(PROMPT_SETS[syn.prompt_set], cfg.generator)
    wanted = {plan.key(doc, "extraction", sample=attempt): (doc.uid, attempt)
              for doc in docs for attempt in range(syn.extraction_attempts)}
    found: dict[str, tuple[int, int]] = {}  # uid -> (attempt, entities): the first valid attempt
    prefix = b'{"key": "'
    with open(path, "rb") as f:
        for line in f:
            # Only extraction lines are parsed: the key leads every line (CallStore._append).
            key = line[len(prefix):len(prefix) + 32].decode("ascii", "replace")
            if key not in wanted or not line.endswith(b"\n"):
                continue
            entry = json.loads(line)
            uid, attempt = wanted[key]
            try:
                count = len(parse_extraction(entry.get("text", ""), syn.max_entities)[1])
            except ValueError:
                continue
            if uid not in found or attempt < found[uid][0]:
                found[uid] = (attempt, count)
    return {uid: count for uid, (_, count) in found.items()}


def estimate(docs: list[Document], cfg) -> dict:
    """Planned calls, tokens and dollars before anything is spent (dry run). Relation calls
    count each document's stored entities, or synthesis.expected_entities (within
    synthesis.max_entities) where its extraction is not stored yet."""
    syn, gen = cfg.synthesis, cfg.generator
    prompts = PROMPT_SETS[syn.prompt_set]

    def prompt_tokens(doc: Document, system: str) -> int:
        return (len(prompts.document_block(doc)) + len(system)) // CHARS_PER_TOKEN

    entities = {"stored": 0, "expected": 0}
    if syn.method == "raw":
        calls = {}
    elif syn.method == "rephrase":
        styles = prompts.rephrase_styles.values()
        calls = {"rephrase": (len(docs) * len(styles) * syn.rephrase_rounds, syn.rephrase_rounds
                              * sum(prompt_tokens(d, s) for s in styles for d in docs))}
    else:
        stored = stored_entity_counts(docs, cfg)
        expected = min(syn.expected_entities, syn.max_entities or syn.expected_entities)
        per_doc = {d.uid: relation_calls(stored.get(d.uid, expected), syn.max_triples)
                   for d in docs}
        entities = {"stored": len(stored), "expected": len(docs) - len(stored)}
        calls = {"extraction": (len(docs), sum(prompt_tokens(d, prompts.extraction_system)
                                               for d in docs)),
                 "relation": (sum(per_doc.values()), sum(
                     per_doc[d.uid] * prompt_tokens(d, prompts.relation_systems[2]) for d in docs))}
    out_per_call = {"extraction": 300, "relation": syn.expected_output_tokens,
                    "rephrase": syn.expected_output_tokens}
    prices = Prices(gen.price_input_per_mtok, gen.price_output_per_mtok)
    rows = {kind: {"calls": c, "input_tokens": tin, "output_tokens": c * out_per_call[kind],
                   "dollars": prices.cost(tin, c * out_per_call[kind])}
            for kind, (c, tin) in calls.items()}
    total = {k: sum(r[k] for r in rows.values()) for k in ("calls", "input_tokens", "output_tokens", "dollars")}
    return {"by_kind": rows, "total": total, "documents_by_entity_count": entities}
