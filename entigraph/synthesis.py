"""Synthetic corpora from documents: EntiGraph, Rephrase and Raw (design brief §1).

Generation writes a corpus folder (corpus_folder.py: the call store, the texts, the manifest
written last). Rerunning
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
from typing import Callable, Iterable, Iterator, Optional

from entigraph.call_store import call_key
from entigraph.corpus import Document
from entigraph.engine import Engine, PlannedCall
from entigraph.llm import ChatRequest
from entigraph.prompts import EXTRACTION_SCHEMA, PromptSet

CHARS_PER_TOKEN = 4  # for estimates before any tokenizer is at hand
log = logging.getLogger(__name__)


# --- planning -------------------------------------------------------------------------------

def nth_combination(items: list, r: int, index: int) -> tuple:
    """The `index`-th r-combination of `items` in itertools.combinations order, without
    listing the ones before it."""
    n, chosen, start = len(items), [], 0
    for slots in range(r, 0, -1):
        for i in range(start, n):
            below = comb(n - i - 1, slots - 1)  # combinations that take item i here
            if index < below:
                chosen.append(items[i])
                start = i + 1
                break
            index -= below
    return tuple(chosen)


def entity_tuples(entities: list[str], max_triples: Optional[int],
                  rng: random.Random) -> Iterator[tuple[str, ...]]:
    """Every pair in extraction order, then the first `max_triples` triples (None: all) of a
    seeded shuffle of all of them, so raising the cap only adds triples. The shuffle is of the
    triples' positions (the same permutation a shuffle of the triples would make), so a
    document with hundreds of entities never lists its millions of triples."""
    yield from itertools.combinations(entities, 2)
    order = list(range(comb(len(entities), 3)))
    rng.shuffle(order)
    for index in order[:max_triples]:
        yield nth_combination(entities, 3, index)


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


def round_robin(*sequences: Iterable) -> Iterator:
    """Interleave per-document call sequences so a budget cut leaves every document covered."""
    for group in itertools.zip_longest(*sequences):
        yield from (x for x in group if x is not None)


@dataclass
class Plan:
    """Turns (document, kind, ...) into keyed calls under one prompt set, model and settings."""
    prompts: PromptSet
    generator: object  # GeneratorConfig

    def __post_init__(self):
        # Read once: a config lookup costs microseconds, and a resume plans a million keys.
        g = self.generator
        self._model, self._temperature, self._max_tokens = g.model, g.temperature, g.max_tokens
        self._sampling = {"temperature": g.temperature, "max_tokens": g.max_tokens}
        self._extraction = {**self._sampling, "structured_output": g.structured_output}

    def settings(self, kind: str) -> dict:
        """What changes a reply besides its prompt: sampling, and the extraction's output mode
        (as configured: the run's own fallback to JSON mode keeps the keys)."""
        return self._extraction if kind == "extraction" else self._sampling

    def key(self, doc: Document, kind: str, entities=(), sample=0, style=None) -> str:
        """The call store key of a call."""
        return call_key(self.prompts.name, self._model, doc.uid,
                        kind if style is None else f"{kind}:{style}", tuple(entities), sample,
                        self.settings(kind))

    def call(self, doc: Document, kind: str, messages: Callable[[], tuple], entities=(),
             sample=0, style=None, schema=None) -> PlannedCall:
        key = self.key(doc, kind, entities, sample, style)
        meta = {"doc": doc.uid, "kind": kind, "entities": list(entities), "sample": sample,
                "style": style}
        return PlannedCall(key, doc.uid, lambda: ChatRequest(key, messages(), self._temperature,
                                                             self._max_tokens, schema, None, meta))

    def extraction(self, doc: Document, attempt: int) -> PlannedCall:
        return self.call(doc, "extraction", lambda: self.prompts.extraction_messages(doc),
                         sample=attempt, schema=EXTRACTION_SCHEMA)

    def relation(self, doc: Document, entities: tuple[str, ...]) -> PlannedCall:
        return self.call(doc, "relation", lambda: self.prompts.relation_messages(doc, entities),
                         entities=entities)

    def rephrase(self, doc: Document, style: str, sample: int) -> PlannedCall:
        return self.call(doc, "rephrase", lambda: self.prompts.rephrase_messages(doc, style),
                         sample=sample, style=style)


# --- running the methods --------------------------------------------------------------------

@dataclass
class Outcome:
    # The corpus texts in order, as a function yielding them (read from the store one by one).
    items: Callable[[], Iterator[dict]]
    # Every call of this corpus (the store may also hold calls made under other settings).
    calls: Callable[[], Iterator[PlannedCall]]
    failed_docs: dict[str, str] = field(default_factory=dict)  # uid -> reason


async def _extract_all(docs, plan: Plan, engine: Engine, cfg) -> tuple[dict, dict]:
    """Valid (summary, entities) per document, and why the others' outputs were invalid. A
    document gets another sample only after an invalid one; one whose call did not complete
    (budget reached, waiting for a batch) simply waits for the next run."""
    extracted, invalid, todo = {}, {}, list(docs)
    for attempt in range(cfg.extraction_attempts):
        if not todo or engine.budget_reached():
            break
        await engine.run(lambda: [plan.extraction(d, attempt) for d in todo],
                         desc=f"entity extraction (attempt {attempt + 1})")
        retry = []
        for doc in todo:
            result = engine.store.result(plan.extraction(doc, attempt).key)
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


def _stored_items(store, planned: Iterable[tuple[PlannedCall, dict]]) -> Iterator[dict]:
    """The corpus items (fields and reply text) of the planned calls whose replies are stored,
    read one at a time."""
    for call, fields in planned:
        if result := store.result(call.key):
            yield {**fields, "text": result.text}


def _calls(planned: Iterable[tuple[PlannedCall, dict]]) -> Iterator[PlannedCall]:
    return (call for call, _ in planned)


async def entigraph_method(docs, plan: Plan, engine: Engine, cfg) -> Outcome:
    extracted, reasons = await _extract_all(docs, plan, engine, cfg)
    valid = [doc for doc in docs if doc.uid in extracted]

    def relations(doc: Document) -> Iterator[tuple[PlannedCall, dict]]:
        for entities in entity_tuples(extracted[doc.uid][1], cfg.max_triples,
                                      random.Random(f"{cfg.seed}:{doc.uid}")):
            call = plan.relation(doc, entities)
            yield call, {"id": f"{doc.uid}/{call.key[:12]}", "doc_uid": doc.uid,
                         "kind": "pair" if len(entities) == 2 else "triple",
                         "entities": list(entities)}

    await engine.run(lambda: _calls(round_robin(*(relations(doc) for doc in valid))),
                     desc="relation analysis")

    def items() -> Iterator[dict]:
        for doc in valid:
            yield {"id": f"{doc.uid}/summary", "doc_uid": doc.uid, "kind": "summary",
                   "entities": [], "text": extracted[doc.uid][0]}
            yield from _stored_items(engine.store, relations(doc))

    def calls() -> Iterator[PlannedCall]:
        yield from (plan.extraction(doc, attempt) for doc in docs
                    for attempt in range(cfg.extraction_attempts))
        yield from _calls(itertools.chain.from_iterable(relations(doc) for doc in valid))

    return Outcome(items, calls, reasons)


async def rephrase_method(docs, plan: Plan, engine: Engine, cfg) -> Outcome:
    styles = list(plan.prompts.rephrase_styles)

    def rephrasings() -> Iterator[tuple[PlannedCall, dict]]:
        for n in range(cfg.rephrase_rounds):  # round by round, so a budget cut is even
            for style in styles:
                for doc in docs:
                    yield plan.rephrase(doc, style, n), {
                        "id": f"{doc.uid}/{style}/{n}", "doc_uid": doc.uid,
                        "kind": f"rephrase-{style}", "entities": []}

    await engine.run(lambda: _calls(rephrasings()), desc="rephrasing")
    return Outcome(lambda: _stored_items(engine.store, rephrasings()),
                   lambda: _calls(rephrasings()))


def raw_items(docs: list[Document], prompts: PromptSet) -> list[dict]:
    """The documents themselves, each under its header line (title, author, year)."""
    return [{"id": doc.uid, "doc_uid": doc.uid, "kind": "raw", "entities": [],
             "text": f"{prompts.header(doc)}\n{doc.text}"} for doc in docs]


METHODS = {"entigraph": entigraph_method, "rephrase": rephrase_method}
