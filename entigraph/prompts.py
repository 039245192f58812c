"""Versioned prompt sets: the words sent to the generator, in our own phrasing of the paper's
structure (design brief §1). A corpus records the name of the set that made it; change a prompt
and you must give the set a new name, so stored calls and corpora never mix two wordings.
"""
from __future__ import annotations

from dataclasses import dataclass

from entigraph.corpus import Document

EXTRACTION_SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "entities": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["summary", "entities"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class PromptSet:
    name: str
    extraction_system: str
    relation_system: str
    rephrase_styles: dict[str, str]  # style name -> instruction

    def document_block(self, doc: Document) -> str:
        """The document as the generator sees it: a header line it can cite, then the text."""
        return f"Document: {doc.header}\n\n{doc.text}"

    def extraction_messages(self, doc: Document) -> tuple[dict, ...]:
        return ({"role": "system", "content": self.extraction_system},
                {"role": "user", "content": self.document_block(doc)})

    def relation_messages(self, doc: Document, entities: tuple[str, ...]) -> tuple[dict, ...]:
        headings = "\n".join([f"### Discussion of {doc.title} in relation to {e}" for e in entities]
                             + [f"### Discussion of Interaction between {' and '.join(entities)} "
                                f"in context of {doc.title}"])
        user = (f"{self.document_block(doc)}\n\n"
                f"Entities: {'; '.join(entities)}\n\n"
                f"Write these sections, in this order:\n{headings}")
        return ({"role": "system", "content": self.relation_system},
                {"role": "user", "content": user})

    def rephrase_messages(self, doc: Document, style: str) -> tuple[dict, ...]:
        return ({"role": "system", "content": self.rephrase_styles[style]},
                {"role": "user", "content": self.document_block(doc)})


ENTIGRAPH_V1 = PromptSet(
    name="entigraph-v1",
    extraction_system=(
        "You study a document so that its knowledge can be mapped out. Read the document the "
        "user gives you and reply with a single JSON object with exactly two keys:\n"
        '- "summary": a brief summary of the whole document, a few sentences long, that names '
        "the document by its title;\n"
        '- "entities": a list of the salient entities of the document, as many as you can '
        "find: people, places, organisations, objects, events and ideas, each written as a "
        "short name the way the document refers to it.\n"
        "Reply with the JSON object and nothing else."
    ),
    relation_system=(
        "You are an analyst who helps readers absorb a document's knowledge. The user gives you "
        "a document and a few entities that appear in it. Your answer has two parts.\n"
        "First, for each entity in turn, retell what the document says about that entity in "
        "your own words, keeping every fact the document gives about it.\n"
        "Second, discuss how the entities are connected in the document: how they meet, "
        "affect or explain one another.\n"
        "Use the markdown level-3 headings the user lists, in that order, one section under "
        "each. Every section must make sense read alone: name the document's title in it and "
        "never point to another section."
    ),
    rephrase_styles={
        "simpler": ("Rewrite the document the user gives you in simpler terms, so that a young "
                    "reader could follow it. Keep every fact, name and number."),
        "different": ("Paraphrase the document the user gives you with different words and "
                      "sentence structure. Keep every fact, name and number."),
        "sophisticated": ("Rewrite the document the user gives you in more sophisticated, "
                          "scholarly language. Keep every fact, name and number."),
    },
)

PROMPT_SETS = {ENTIGRAPH_V1.name: ENTIGRAPH_V1}
