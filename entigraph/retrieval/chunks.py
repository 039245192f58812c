"""The corpus cut into overlapping passages, each with its document's title, author and year.

A passage is an exact substring of its document's text (surrounding whitespace stripped);
chunk_size counts the passage only, not the metadata prefix, as in the official code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from entigraph.corpus import Document, first_last
from entigraph.errors import EntigraphError
from entigraph.evaluation import _known

# Where a character window may end, best first: a paragraph break, a line break, a space.
_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"\s"))
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class Chunk:
    id: str  # "<document uid>#<n>", n counting the document's chunks in order from 0
    doc_id: str
    text: str  # the metadata prefix, then the passage


def metadata_prefix(doc: Document) -> str:
    """"Title: ...\\nAuthor: ...\\nYear: ...\\n\\n" (the author as "First Last"), without
    the line of an unknown author or year."""
    author, year = first_last(_known(doc.author)), _known(doc.year)
    lines = [f"Title: {doc.title}", f"Author: {author}" if author else "",
             f"Year: {year}" if year else ""]
    return "\n".join(line for line in lines if line) + "\n\n"


def chunk_documents(documents: Sequence[Document], rag_cfg: Any,
                    tokenizer: Optional[Any] = None) -> list[Chunk]:
    """Every document's passages as chunks, documents in the order given (eval.rag.chunk_unit,
    chunk_size, chunk_overlap); `tokenizer` (a fast one) counts the tokens of chunk_unit=tokens."""
    spans = _span_maker(rag_cfg, tokenizer)
    chunks = []
    for doc in documents:
        prefix = metadata_prefix(doc)
        passages = [p for p in (doc.text[a:b].strip() for a, b in spans(doc.text)) if p]
        chunks += [Chunk(f"{doc.uid}#{n}", doc.uid, prefix + passage)
                   for n, passage in enumerate(passages)]
    return chunks


def _span_maker(rag_cfg: Any, tokenizer: Optional[Any]):
    """text -> (start, end) character spans of its windows, per eval.rag.chunk_unit."""
    size, overlap = int(rag_cfg.chunk_size), int(rag_cfg.chunk_overlap)
    if not 0 <= overlap < size:
        raise EntigraphError(f"eval.rag.chunk_overlap={overlap} must be smaller than "
                             f"eval.rag.chunk_size={size} (and not negative)")
    if rag_cfg.chunk_unit == "characters":
        return lambda text: character_spans(text, size, overlap)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise EntigraphError("eval.rag.chunk_unit=tokens needs the evaluated model's fast "
                             "tokenizer (its character offsets); pass one, or set "
                             "eval.rag.chunk_unit=characters")
    return lambda text: token_spans(text, tokenizer, size, overlap)


def token_spans(text: str, tokenizer: Any, size: int,
                overlap: int) -> Iterator[tuple[int, int]]:
    """Windows of `size` tokens, `overlap` shared with the next; the last may be shorter."""
    offsets = tokenizer(text, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    for start in range(0, len(offsets), size - overlap):
        end = min(start + size, len(offsets))
        yield offsets[start][0], offsets[end - 1][1]
        if end == len(offsets):
            return


def character_spans(text: str, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Windows of at most `size` characters that end at the window's last paragraph break,
    else line break, else whitespace (words are not cut), and start at a word within the last
    `overlap` characters of the previous window. A window ends past the previous one's text
    (after at least one new non-space character): no passage repeats a part of another."""
    start = end = 0
    while (fresh := _NON_SPACE.search(text, end)) is not None:
        if end:
            start = _word_start(text, max(end - overlap, start + 1), end)
        end = min(start + size, len(text))
        if end < len(text):
            end = _last_break(text, fresh.start() + 1, end)
        yield start, end


def _last_break(text: str, low: int, end: int) -> int:
    """Where the best break in text[low:end + 1] starts (the character just past the window
    counts: a window ending before a space cuts no word), or end when there is none."""
    for pattern in _BREAKS:
        found = [m.start() for m in pattern.finditer(text, low, end + 1)]
        if found:
            return found[-1]
    return end


def _word_start(text: str, low: int, end: int) -> int:
    """The first position in [low, end] that follows whitespace, else end."""
    if text[low - 1].isspace():
        return low
    space = _BREAKS[-1].search(text, low, end)
    return space.end() if space else end
