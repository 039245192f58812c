"""Versioned prompt sets: the words sent to the generator, in our own phrasing of the paper's
structure (design brief §1). A corpus records the name of the set that made it; change a prompt
and you must give the set a new name, so stored calls and corpora never mix two wordings (a
corpus folder records each set's fingerprint and refuses a set whose wording changed).

- `entigraph-v2` (the default) follows the official code's semantics: exhaustive extraction,
  relation prompts that rephrase the article's content once per entity and then discuss how the
  entities interact, the article shown as `"<title>", <First Last>, <year>.`, entity lists
  written "A, B and C", Rephrase in the paper's three styles (App. G.2) naming title and year.
- `entigraph-v1` (a documented variant) asks for the facts about each entity instead of the
  article's content, shows the author as stored ("Last, First" for QuALITY) and uses milder
  rephrase styles.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Sequence

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


def and_join(items: Sequence[str]) -> str:
    """"A and B", "A, B and C": how the official headings list entities."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


@dataclass(frozen=True)
class PromptSet:
    name: str
    extraction_system: str
    # Entities per call (2 or 3) -> the relation system prompt.
    relation_systems: dict[int, str]
    rephrase_styles: dict[str, str]  # style name -> instruction
    header: Callable[[Document], str]  # the line that names the document
    document_template: str  # with {header} and {text}
    join_entities: Callable[[Sequence[str]], str]

    def document_block(self, doc: Document) -> str:
        """The document as the generator sees it: a header line it can cite, then the text."""
        return self.document_template.format(header=self.header(doc), text=doc.text)

    def relation_headings(self, doc: Document, entities: Sequence[str]) -> list[str]:
        """The H3 headings a relation answer must have, in order (design brief §1)."""
        return ([f"### Discussion of {doc.title} in relation to {e}" for e in entities]
                + [f"### Discussion of Interaction between {self.join_entities(entities)} "
                   f"in context of {doc.title}"])

    def extraction_messages(self, doc: Document) -> tuple[dict, ...]:
        return ({"role": "system", "content": self.extraction_system},
                {"role": "user", "content": self.document_block(doc)})

    def relation_messages(self, doc: Document, entities: tuple[str, ...]) -> tuple[dict, ...]:
        headings = "\n".join(self.relation_headings(doc, entities))
        user = (f"{self.document_block(doc)}\n\n"
                f"Entities: {'; '.join(entities)}\n\n"
                f"Write these sections, in this order:\n{headings}")
        return ({"role": "system", "content": self.relation_systems[len(entities)]},
                {"role": "user", "content": user})

    def rephrase_messages(self, doc: Document, style: str) -> tuple[dict, ...]:
        return ({"role": "system", "content": self.rephrase_styles[style]},
                {"role": "user", "content": self.document_block(doc)})

    def fingerprint(self) -> str:
        """A digest of every message this set sends and of the extraction schema, rendered for
        a probe document: it changes with any wording, template or entity-list rule."""
        probe = Document("probe", "Title", "Author", 1900, "Text.")
        sent = [self.extraction_messages(probe), EXTRACTION_SCHEMA,
                *(self.relation_messages(probe, entities) for entities in (("A", "B"),
                                                                          ("A", "B", "C"))),
                *(self.rephrase_messages(probe, style) for style in sorted(self.rephrase_styles))]
        return hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()[:16]


_V1_RELATION = (
    "You are an analyst who helps readers absorb a document's knowledge. The user gives you "
    "a document and a few entities that appear in it. Your answer has two parts.\n"
    "First, for each entity in turn, retell what the document says about that entity in "
    "your own words, keeping every fact the document gives about it.\n"
    "Second, discuss how the entities are connected in the document: how they meet, "
    "affect or explain one another.\n"
    "Use the markdown level-3 headings the user lists, in that order, one section under "
    "each. Every section must make sense read alone: name the document's title in it and "
    "never point to another section."
)

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
    relation_systems={2: _V1_RELATION, 3: _V1_RELATION},
    rephrase_styles={
        "simpler": ("Rewrite the document the user gives you in simpler terms, so that a young "
                    "reader could follow it. Keep every fact, name and number."),
        "different": ("Paraphrase the document the user gives you with different words and "
                      "sentence structure. Keep every fact, name and number."),
        "sophisticated": ("Rewrite the document the user gives you in more sophisticated, "
                          "scholarly language. Keep every fact, name and number."),
    },
    header=lambda doc: doc.header,
    document_template="Document: {header}\n\n{text}",
    join_entities=" and ".join,
)


def _v2_relation(count: str, times: str, order: str) -> str:
    return (
        f"You are a knowledge analyst working through an article the user gives you, together "
        f"with {count} entities that appear in it. You have two jobs.\n"
        f"1. Rephrase the content of the article {times}, each time told with one of the "
        f"entities at its centre: {order}.\n"
        f"2. Discuss how the {count} entities interact within the article.\n"
        "Keep every rephrasing and the discussion in separate sections, under the markdown "
        "level-3 headings the user lists, in that order. Each section must carry enough context "
        "to be understood on its own: name the article's title in it."
    )


_KEEP_TITLE = (" Open by naming the article's title and the year it was written, and keep "
               "all of its information.")

ENTIGRAPH_V2 = PromptSet(
    name="entigraph-v2",
    extraction_system=(
        "You are a knowledge analyst. The user gives you an article; take it apart in two "
        "steps.\n"
        "1. Summarise the whole article briefly, covering its main points and themes.\n"
        "2. List the significant entities it mentions, including but not limited to: people "
        "(by the names or descriptions the article uses), places (real or abstract), concrete "
        "objects the article refers to, and the central concepts or themes it discusses. Be "
        "exhaustive: list as many entities as you can find.\n"
        "Reply with one JSON object and nothing else, in this form:\n"
        '{"summary": "<the summary>", "entities": ["<entity>", "<entity>", ...]}'
    ),
    relation_systems={
        2: _v2_relation("two", "twice", "first the first entity, then the second"),
        3: _v2_relation("three", "three times",
                        "first the first entity, then the second, then the third"),
    },
    rephrase_styles={
        "toddler": ("Rewrite the article the user gives you for a toddler: use only the very "
                    "simplest words and short sentences." + _KEEP_TITLE),
        "wikipedia": ("Rewrite the article the user gives you in the style of a high-quality "
                      "Wikipedia entry: clear, neutral, encyclopaedic prose." + _KEEP_TITLE),
        "scholar": ("Rewrite the article the user gives you as an erudite scholar would: terse "
                    "and abstruse, in dense, learned vocabulary." + _KEEP_TITLE),
    },
    header=lambda doc: doc.citation,
    document_template="Article: {header}\n\n{text}",
    join_entities=and_join,
)

PROMPT_SETS = {s.name: s for s in (ENTIGRAPH_V2, ENTIGRAPH_V1)}
DEFAULT_PROMPT_SET = ENTIGRAPH_V2.name
