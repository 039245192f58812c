"""`entigraph generate`: backend, call store and budget around a synthesis method, then the
corpus and its manifest. Also the dry run, which plans and prices the calls without making any.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator, Optional

from tqdm.auto import tqdm

from entigraph.call_store import CallStore
from entigraph.corpus import Document
from entigraph.corpus_folder import CALLS, CORPUS, MANIFEST, PROMPTS, read_manifest, write_texts
from entigraph.engine import Budget, Engine, Prices
from entigraph.errors import ConfigError, CorpusError
from entigraph.llm import rejects_response_format, resolve_structured_output
from entigraph.prompts import PROMPT_SETS, PromptSet
from entigraph.records import write_json_atomic
from entigraph.synthesis import (CHARS_PER_TOKEN, METHODS, Outcome, Plan, parse_extraction,
                                 raw_items, relation_calls)

log = logging.getLogger(__name__)
COUNT_BATCH = 1024  # texts tokenised at a time when counting a corpus's tokens


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
        from entigraph.packaged_models import require_built
        from entigraph.vllm_backend import VLLMBackend

        require_built(generator_cfg.model, "generator.model")  # before a 20 s engine start
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
            elif not store.done(key):
                store.put(key, result)
    return refused


def generate_corpus(docs: list[Document], cfg) -> dict:
    """Build the configured corpus in synthesis.output_dir; return its manifest."""
    syn = cfg.synthesis
    if syn.method == "raw":
        items = raw_items(docs, PROMPT_SETS[syn.prompt_set])
        return write_corpus(Path(syn.output_dir), Outcome(lambda: iter(items), lambda: iter(())),
                            docs, cfg, None, "complete", None)
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
            _remove_torn_writes(out)  # the store's lock is ours: no other writer is at work
            check_prompt_set(out, prompts)
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
            return write_corpus(out, outcome, docs, cfg, store, _status(engine), structured)
    finally:
        if backend is not None:
            await backend.aclose()


def check_prompt_set(out: Path, prompts: PromptSet) -> None:
    """Stored calls are keyed by the prompt set's name, not its words: a set whose wording or
    schema changed since its calls were stored (a new release, a local edit) would be served
    replies to the old prompts. Refused; a set new to the folder is recorded."""
    path = out / PROMPTS
    known = json.loads(path.read_text()) if path.exists() else {}
    fingerprint = prompts.fingerprint()
    if known.get(prompts.name, fingerprint) != fingerprint:
        raise ConfigError(f"config: synthesis.prompt_set={prompts.name} has changed wording since "
                          f"its calls were stored in {out}; give the changed set a new name, or "
                          f"set synthesis.output_dir to a new folder")
    if prompts.name not in known:
        write_json_atomic(path, {**known, prompts.name: fingerprint})


def _remove_torn_writes(out: Path) -> None:
    """Temporary files of a corpus or manifest write that was killed (records.write_atomic
    names them .<name>.<random>.tmp); the finished files are whole or absent."""
    for name in (CORPUS, MANIFEST):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _write_batch(calls, model: str, structured_output: str, out: Path) -> None:
    from entigraph.batch_files import write_batch_requests

    files = write_batch_requests([call.build() for call in calls], model,
                                 out / "batch" / "requests.jsonl", structured_output)
    print(f"wrote {len(calls)} requests to {', '.join(map(str, files))}: submit them "
          f"(OpenAI Batch API, or `python -m entigraph.vllm_backend run-batch -i <file> -o <out> "
          f"--model <model>` on your own GPUs), then rerun with "
          f"generator.batch_results=[<result files>] to ingest them and plan the next stage")


def _status(engine: Engine) -> str:
    if engine.unsent:
        return "waiting_for_batch"
    if engine.budget_reached():
        return "budget_reached"
    return "complete"  # or "incomplete", once the manifest counts failed calls


def _token_counter(model_cfg, out: Path):
    """(tokenizer, what it is): the training tokenizer where it is at hand (the tiny model's is
    trained on this corpus), else None and why: a generation never fails for want of it, and
    training counts the real tokens when it tokenises."""
    from entigraph.models import load_tokenizer

    name = model_cfg.pretrained or f"{model_cfg.name} tokenizer trained on this corpus"
    try:
        return load_tokenizer(model_cfg, out), name
    except OSError as err:  # gated, not cached, no network
        reason = str(err).splitlines()[0][:120]
        log.warning("token counts are estimated (characters / %d): the training tokenizer %s "
                    "is not at hand (%s)", CHARS_PER_TOKEN, name, reason)
        return None, f"estimate: characters / {CHARS_PER_TOKEN} ({name} was not at hand)"


def _count_tokens(path: Path, tokenizer) -> Iterator[tuple[str, int]]:
    """(document uid, tokens) of each text of a corpus file, read and tokenised in batches."""
    with open(path) as f:
        for lines in iter(lambda: list(itertools.islice(f, COUNT_BATCH)), []):
            items = [json.loads(line) for line in lines]
            texts = [item["text"] for item in items]
            counts = ([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
                      if tokenizer else [len(text) // CHARS_PER_TOKEN for text in texts])
            yield from zip((item["doc_uid"] for item in items), counts)


def _call_stats(store, calls: Iterable, docs, prices: Prices) -> dict[str, dict]:
    """Calls, failed calls, tokens and cost per document over this corpus's `calls` (the store's
    index records: no text is read)."""
    stats = {doc.uid: {"title": doc.title, "calls": 0, "input_tokens": 0, "output_tokens": 0,
                       "failed_calls": 0, "texts": 0, "synthetic_tokens": 0, "cost": 0.0}
             for doc in docs}
    for call in calls:
        record = store.record(call.key)
        if record is None:
            continue
        *_, input_tokens, output_tokens, error = record
        row = stats[call.doc]
        if error:
            row["failed_calls"] += 1
            continue
        row["calls"] += 1
        row["input_tokens"] += input_tokens
        row["output_tokens"] += output_tokens
        row["cost"] += prices.cost(input_tokens, output_tokens)
    return stats


def corpus_inputs(docs, cfg, store) -> str:
    """A digest of everything the texts of a corpus follow from: the documents, the synthesis
    and generator settings, and the call store's durable bytes (no call made, retried or
    ingested since). A rerun whose digest matches the manifest's has nothing new to write."""
    from omegaconf import OmegaConf

    state = [[(d.uid, d.title, d.author, d.year, d.text) for d in docs],
             OmegaConf.to_container(cfg.synthesis, resolve=True),
             OmegaConf.to_container(cfg.generator, resolve=True),
             store.size if store is not None else None]
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def write_corpus(out: Path, outcome: Outcome, docs, cfg, store, status: str,
                 structured_output: Optional[str]) -> dict:
    """corpus.jsonl (written as its texts are read), then manifest.json (per document and in
    total: calls, tokens, cost); `structured_output` is the extraction output mode the run used
    (None: no extraction). A corpus whose manifest was made from the same inputs is left as it
    is: at the paper's size, rewriting and recounting 455M tokens takes minutes."""
    inputs = corpus_inputs(docs, cfg, store)
    made = read_manifest(out)
    if made is not None and made.get("inputs_sha256") == inputs:
        print(f"{out}: nothing new since its manifest was written; the corpus is as it was")
        return made
    texts, corpus_sha256 = write_texts(out, outcome.items())
    prices = Prices(cfg.generator.price_input_per_mtok, cfg.generator.price_output_per_mtok)
    per_doc = _call_stats(store, outcome.calls(), docs, prices)
    tokenizer, counter = _token_counter(cfg.model, out)
    for uid, tokens in tqdm(_count_tokens(out / CORPUS, tokenizer), desc="counting tokens",
                            unit="text", total=texts):
        per_doc[uid]["texts"] += 1
        per_doc[uid]["synthetic_tokens"] += tokens
    for uid, reason in outcome.failed_docs.items():
        per_doc[uid]["failure"] = reason
    totals = {key: sum(d[key] for d in per_doc.values())
              for key in ("calls", "input_tokens", "output_tokens", "failed_calls", "texts",
                          "synthetic_tokens", "cost")}
    totals["failed_documents"] = len(outcome.failed_docs)
    if status == "complete" and totals["failed_calls"]:
        status = "incomplete"
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
        "token_counter": counter,
        "corpus_sha256": corpus_sha256,  # what identifies this corpus (corpus_folder.py)
        "inputs_sha256": inputs,
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
    counts = {}
    with CallStore(path, writable=False) as store:
        for doc in docs:
            for attempt in range(syn.extraction_attempts):  # the first valid attempt counts
                result = store.result(plan.key(doc, "extraction", sample=attempt))
                try:
                    if result is not None:
                        counts[doc.uid] = len(parse_extraction(result.text, syn.max_entities)[1])
                        break
                except ValueError:  # an invalid extraction: the next attempt may count
                    continue
    return counts


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
