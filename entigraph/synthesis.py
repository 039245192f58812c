"""Synthetic corpora from documents: EntiGraph, Rephrase and Raw (design brief §1).

A corpus folder holds `calls.jsonl` (every generator call, durably, see call_store.py),
`corpus.jsonl` (one synthetic text a line) and `manifest.json`, written last. Rerunning
`generate` makes only the calls not yet in the store, so it resumes after a kill, continues after
a raised budget, and costs nothing when everything is done.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import Optional

from entigraph.call_store import call_key
from entigraph.corpus import Document
from entigraph.engine import Engine
from entigraph.errors import CorpusError
from entigraph.llm import ChatRequest
from entigraph.prompts import EXTRACTION_SCHEMA, PromptSet

CORPUS = "corpus.jsonl"
MANIFEST = "manifest.json"
CALLS = "calls.jsonl"
CHARS_PER_TOKEN = 4  # for estimates before any tokenizer is at hand
log = logging.getLogger(__name__)


# --- reading corpus folders -----------------------------------------------------------------

def read_manifest(corpus_dir: Path) -> dict | None:
    path = Path(corpus_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def require_complete(corpus_dir: Path) -> None:
    if read_manifest(corpus_dir) is None:
        raise CorpusError(f"no complete synthetic corpus at {corpus_dir} (no {MANIFEST}); "
                          f"run `entigraph generate` first or set data.corpus_dir")


def read_items(corpus_dir: Path) -> list[dict]:
    """The texts of `corpus.jsonl`, in file order (the manifest is not checked)."""
    with open(Path(corpus_dir) / CORPUS) as f:
        return [json.loads(line) for line in f]


def read_corpus(corpus_dir: Path) -> list[dict]:
    """The synthetic texts of a finished corpus folder, in file order."""
    require_complete(corpus_dir)
    return read_items(corpus_dir)


# --- planning -------------------------------------------------------------------------------

def entity_tuples(entities: list[str], max_triples: Optional[int],
                  rng: random.Random) -> list[tuple[str, ...]]:
    """Every pair in extraction order, then the first `max_triples` triples (None: all) of a
    seeded shuffle of all of them, so raising the cap only adds triples."""
    triples = list(itertools.combinations(entities, 3))
    rng.shuffle(triples)
    return list(itertools.combinations(entities, 2)) + triples[:max_triples]


def relation_calls(entities: int, max_triples: Optional[int]) -> int:
    """Relation calls for a document with this many entities (what entity_tuples yields)."""
    triples = comb(entities, 3)
    return comb(entities, 2) + (triples if max_triples is None else min(triples, max_triples))


def parse_extraction(text: str, max_entities: Optional[int]) -> tuple[str, list[str]]:
    """(summary, entities) from an extraction reply; ValueError says what is wrong with it."""
    try:
        reply = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg})") from None
    if not isinstance(reply, dict):
        raise ValueError("not a JSON object")
    summary, entities = reply.get("summary"), reply.get("entities")
    if not isinstance(summary, str) or not summary.strip():
        raise ValueError("no summary")
    if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
        raise ValueError("entities is not a list of strings")
    unique = list(dict.fromkeys(e.strip() for e in entities if e.strip()))
    if not unique:
        raise ValueError("no entities extracted")
    return summary.strip(), unique[:max_entities]


def round_robin(*sequences: list) -> list:
    """Interleave per-document request lists so a budget cut leaves every document covered."""
    return [x for group in itertools.zip_longest(*sequences) for x in group if x is not None]


@dataclass
class Plan:
    """Turns (document, kind, ...) into keyed chat requests under one prompt set and model."""
    prompts: PromptSet
    generator: object  # GeneratorConfig

    def key(self, doc: Document, kind: str, entities=(), sample=0, style=None) -> str:
        """The call store key of a request (what `request` would build)."""
        return call_key(self.prompts.name, self.generator.model, doc.uid,
                        kind if style is None else f"{kind}:{style}", tuple(entities), sample)

    def request(self, doc: Document, kind: str, messages, entities=(), sample=0, style=None,
                schema=None) -> ChatRequest:
        g = self.generator
        meta = {"doc": doc.uid, "kind": kind, "entities": list(entities), "sample": sample,
                "style": style}
        return ChatRequest(self.key(doc, kind, entities, sample, style), messages, g.temperature,
                           g.max_tokens, schema, None, meta)

    def extraction(self, doc: Document, attempt: int) -> ChatRequest:
        return self.request(doc, "extraction", self.prompts.extraction_messages(doc),
                            sample=attempt, schema=EXTRACTION_SCHEMA)

    def relation(self, doc: Document, entities: tuple[str, ...]) -> ChatRequest:
        return self.request(doc, "relation", self.prompts.relation_messages(doc, entities),
                            entities=entities)

    def rephrase(self, doc: Document, style: str, sample: int) -> ChatRequest:
        return self.request(doc, "rephrase", self.prompts.rephrase_messages(doc, style),
                            sample=sample, style=style)


# --- running the methods --------------------------------------------------------------------

@dataclass
class Outcome:
    items: list[dict] = field(default_factory=list)  # the corpus texts, in order
    failed_docs: dict[str, str] = field(default_factory=dict)  # uid -> reason


async def _extract_all(docs, plan: Plan, engine: Engine, cfg) -> tuple[dict, dict]:
    """Valid (summary, entities) per document, and why the others' outputs were invalid. A
    document gets another sample only after an invalid one; one whose call did not complete
    (budget reached, waiting for a batch) simply waits for the next run."""
    extracted, invalid, todo = {}, {}, list(docs)
    for attempt in range(cfg.extraction_attempts):
        if not todo or engine.budget_reached():
            break
        results = await engine.run([plan.extraction(d, attempt) for d in todo],
                                   desc=f"entity extraction (attempt {attempt + 1})")
        retry = []
        for doc in todo:
            result = results.get(plan.extraction(doc, attempt).key)
            if result is None:
                continue
            try:
                extracted[doc.uid] = parse_extraction(result.text, cfg.max_entities)
                invalid.pop(doc.uid, None)
            except ValueError as err:
                invalid[doc.uid] = f"extraction output invalid in {attempt + 1} attempt(s): {err}"
                retry.append(doc)
        todo = retry
    return extracted, invalid


async def entigraph_method(docs, plan: Plan, engine: Engine, cfg) -> Outcome:
    extracted, reasons = await _extract_all(docs, plan, engine, cfg)
    valid = [doc for doc in docs if doc.uid in extracted]
    per_doc = [[plan.relation(doc, t) for t in entity_tuples(
        extracted[doc.uid][1], cfg.max_triples, random.Random(f"{cfg.seed}:{doc.uid}"))]
        for doc in valid]
    results = await engine.run(round_robin(*per_doc), desc="relation analysis")
    outcome = Outcome(failed_docs=reasons)
    for doc, requests in zip(valid, per_doc):
        outcome.items.append({"id": f"{doc.uid}/summary", "doc_uid": doc.uid, "kind": "summary",
                              "entities": [], "text": extracted[doc.uid][0]})
        outcome.items.extend(
            {"id": f"{doc.uid}/{r.key[:12]}", "doc_uid": doc.uid,
             "kind": "pair" if len(r.meta["entities"]) == 2 else "triple",
             "entities": r.meta["entities"], "text": results[r.key].text}
            for r in requests if r.key in results)
    return outcome


async def rephrase_method(docs, plan: Plan, engine: Engine, cfg) -> Outcome:
    styles = list(plan.prompts.rephrase_styles)
    requests = [plan.rephrase(doc, style, n) for n in range(cfg.rephrase_rounds)
                for style in styles for doc in docs]  # round by round, so a budget cut is even
    results = await engine.run(requests, desc="rephrasing")
    return Outcome(items=[{"id": f"{r.meta['doc']}/{r.meta['style']}/{r.meta['sample']}",
                           "doc_uid": r.meta["doc"], "kind": f"rephrase-{r.meta['style']}",
                           "entities": [], "text": results[r.key].text}
                          for r in requests if r.key in results])


def raw_items(docs: list[Document], prompts: PromptSet) -> list[dict]:
    """The documents themselves, each under its header line (title, author, year)."""
    return [{"id": doc.uid, "doc_uid": doc.uid, "kind": "raw", "entities": [],
             "text": f"{prompts.header(doc)}\n{doc.text}"} for doc in docs]


METHODS = {"entigraph": entigraph_method, "rephrase": rephrase_method}
