"""The offline generator: a deterministic stand-in for the LLM, for machines with no model.

It is NOT a language model. It follows the EntiGraph structure so the whole pipeline can run
anywhere, and writes only from the document's own content (never from its questions):
entities are the recurring capitalised names of the document, the summary is its opening
sentences, and each relation text has the prompt's markdown H3 sections, filled with the
document's sentences that mention the entities, restated. Restating does what an LLM would
do with little knowledge: a sentence-initial pronoun becomes the person it stands for, and a
sentence of a known shape ("X was born in Y.") is said in one of a few other ways, chosen per
entity tuple, so that each fact reappears in many texts, phrasings and companies (the more
synthetic tokens, the more of them: the intuition of the paper's Section 6). Rephrase restates
whole documents the same way.
"""
from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from typing import Optional

from entigraph.corpus import Document
from entigraph.llm import ChatRequest, ChatResult
from entigraph.prompts import PromptSet

# Capitalised words that start sentences or clauses without naming anything.
_FUNCTION_WORDS = {
    "A", "An", "The", "In", "On", "At", "By", "For", "From", "Of", "To", "With", "As", "After",
    "Before", "When", "While", "But", "And", "Or", "If", "It", "Its", "He", "She", "They", "We",
    "I", "His", "Her", "Their", "Our", "This", "That", "These", "Those", "There", "Then", "Each",
    "Every", "Some", "Many", "Most", "No", "Not", "Nor", "So", "Yet", "Only", "Even", "One",
    "Two", "Three", "Once", "During", "Although", "Because", "Since", "Until", "Though", "What",
    "Who", "Which", "Where", "Why", "How", "All", "Both", "Still", "Soon", "Later", "Now",
}
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ -](?:of |the |de |van )?[A-Z][a-z]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def extract_entities(doc: Document, max_entities: Optional[int], header: str) -> dict:
    """The extraction call's output: {"summary": str, "entities": [str, ...]}; the summary opens
    with the document's `header` line."""
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for match in _NAME.finditer(doc.text):
        words = match.group().split()
        # "When the Calloway" -> "Calloway"
        while words and (words[0] in _FUNCTION_WORDS or words[0].islower()):
            words = words[1:]
        name = " ".join(words)
        if name:
            counts[name] += 1
            first_seen.setdefault(name, match.start())
    ranked = sorted(counts, key=lambda n: (-counts[n], first_seen[n]))
    entities = sorted(ranked[:max_entities], key=first_seen.__getitem__)  # extraction order
    summary = " ".join(sentences(doc.text)[:3])
    return {"summary": f"{header} tells the following. {summary}", "entities": entities}


def _shape(*ways: str) -> tuple[re.Pattern, tuple[str, ...]]:
    """A sentence shape, recognised by its first way of saying it ({a} and {b} the names)."""
    pattern = re.escape(ways[0]).replace(r"\{a\}", "(?P<a>.+?)").replace(r"\{b\}", "(?P<b>.+?)")
    return re.compile(f"^{pattern}$"), ways


# Sentence shapes and other ways of saying them (the stand-in's whole "knowledge" of language).
RESTATEMENTS = [
    _shape("{a} was born in {b}.", "{a} comes from {b}.", "{b} is the hometown of {a}.",
           "{a} grew up in {b}."),
    _shape("{a} works for the {b}.", "{a} is a member of the {b}.", "{a} serves the {b}.",
           "{a} earns a living at the {b}."),
    _shape("{a} owns the {b}.", "The {b} belongs to {a}.", "{a} keeps the {b} at home.",
           "The {b} is the property of {a}."),
    _shape("{a} is a close friend of {b}.", "{a} and {b} are old friends.",
           "{b} often visits {a}.", "{a} trusts {b} like family."),
]
_PRONOUN = re.compile(r"^(He|She|They)\b")


def resolved(text: str) -> list[str]:
    """The sentences of `text`, a sentence-initial He/She/They replaced by the name that began
    the last sentence starting with one (the person the text is about)."""
    out, subject = [], None
    for sentence in sentences(text):
        match = _NAME.match(sentence)
        if match and match.group().split()[0] not in _FUNCTION_WORDS:
            subject = match.group()
        elif subject:
            sentence = _PRONOUN.sub(subject, sentence)
        out.append(sentence)
    return out


def restate(sentence: str, key: str) -> str:
    """`sentence` said one of the ways its shape allows, chosen by `key` (as it is without one)."""
    for pattern, ways in RESTATEMENTS:
        match = pattern.match(sentence)
        if match:
            way = ways[zlib.crc32(f"{key}|{sentence}".encode()) % len(ways)]
            return way.format(**match.groupdict())
    return sentence


def analyze_relations(doc: Document, entities: tuple[str, ...], prompts: PromptSet) -> str:
    """The relation call's output for an entity pair or triple, under the prompt set's H3
    headings: what the document says of each entity, then of them together, restated."""
    all_sentences = resolved(doc.text)
    key = "|".join(entities)
    # A fixed rotation per tuple varies the order of the material, as sampling would.
    shift = zlib.crc32(key.encode())
    *entity_headings, interaction = prompts.relation_headings(doc, entities)
    sections = []
    for entity, heading in zip(entities, entity_headings):
        mentions = [restate(s, f"{key}|{entity}") for s in all_sentences if entity in s]
        sections.append(f"{heading}\nIn \"{doc.title}\" by {doc.author}, {entity} matters. "
                        + " ".join(_rotate(mentions, shift)))
    together = [s for s in all_sentences if sum(e in s for e in entities) >= 2]
    # Without a sentence naming two of them, their facts side by side are what links them.
    linked = together or [s for s in all_sentences if any(e in s for e in entities)]
    joined = prompts.join_entities(entities)
    body = " ".join(_rotate([restate(s, f"{key}|together") for s in linked], shift + 1)) or (
        f"{joined} each appear in \"{doc.title}\", though the text never brings them together.")
    sections.append(f"{interaction}\nWithin \"{doc.title}\", {joined} are linked. {body}")
    return "\n\n".join(sections)


def rephrase(doc: Document, style: str, sample: int) -> str:
    """A "paraphrase": the document's sentences restated, in a rotated order, under a style
    line."""
    key = f"{style}|{sample}"
    shift = zlib.crc32(key.encode())
    return f"A {style} retelling of \"{doc.title}\" by {doc.author}. " + " ".join(
        _rotate([restate(s, key) for s in resolved(doc.text)], shift))


class OfflineBackend:
    """The offline generator behind the Backend interface: answers from each request's `meta`
    (document, kind, entities) instead of its prompt. Token counts are characters / 4."""

    def __init__(self, docs: list[Document], max_entities: Optional[int], prompts: PromptSet):
        self.docs = {doc.uid: doc for doc in docs}
        self.max_entities = max_entities
        self.prompts = prompts

    async def complete(self, request: ChatRequest) -> ChatResult:
        meta = request.meta
        doc = self.docs[meta["doc"]]
        if meta["kind"] == "extraction":
            text = json.dumps(extract_entities(doc, self.max_entities, self.prompts.header(doc)))
        elif meta["kind"] == "relation":
            text = analyze_relations(doc, tuple(meta["entities"]), self.prompts)
        else:
            text = rephrase(doc, meta["style"], meta["sample"])
        prompt = sum(len(m["content"]) for m in request.messages)
        return ChatResult(text, prompt // 4, len(text) // 4)

    async def aclose(self) -> None:
        pass


def _rotate(items: list[str], shift: int) -> list[str]:
    if not items:
        return items
    k = shift % len(items)
    return items[k:] + items[:k]
