"""The offline generator: a deterministic stand-in for the LLM, for machines with no model.

It is NOT a language model. It follows the EntiGraph structure so the whole pipeline can run
anywhere: entities are the recurring capitalised names of the document, the summary is its
opening sentences, and each relation text has the prompt's markdown H3 sections, filled with the
document's own sentences that mention the entities (so the facts a question asks about reach the
synthetic corpus, as a real generator's rephrasings would).
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

NAME = "offline-template-v1"

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


def analyze_relations(doc: Document, entities: tuple[str, ...], prompts: PromptSet) -> str:
    """The relation call's output for an entity pair or triple, under the prompt set's H3
    headings."""
    all_sentences = sentences(doc.text)
    # A fixed rotation per tuple varies the order of the material, as sampling would.
    shift = zlib.crc32("|".join(entities).encode())
    *entity_headings, interaction = prompts.relation_headings(doc, entities)
    sections = []
    for entity, heading in zip(entities, entity_headings):
        mentions = [s for s in all_sentences if entity in s]
        sections.append(f"{heading}\nIn \"{doc.title}\" by {doc.author}, {entity} matters. "
                        + " ".join(_rotate(mentions, shift)))
    together = [s for s in all_sentences if sum(e in s for e in entities) >= 2]
    joined = prompts.join_entities(entities)
    body = " ".join(_rotate(together, shift)) or (
        f"{joined} each appear in \"{doc.title}\", though the text never brings them together.")
    sections.append(f"{interaction}\nWithin \"{doc.title}\", {joined} are linked. {body}")
    return "\n\n".join(sections)


def rephrase(doc: Document, style: str, sample: int) -> str:
    """A "paraphrase": the document's sentences in a rotated order under a style line."""
    shift = zlib.crc32(f"{style}|{sample}".encode())
    return f"A {style} retelling of \"{doc.title}\" by {doc.author}. " + " ".join(
        _rotate(sentences(doc.text), shift))


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
