"""Source documents and their multiple-choice questions, and the loaders that read them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Question:
    uid: str
    text: str
    options: tuple[str, ...]  # exactly four
    gold: int  # 0-based index into options
    hard: bool = False


@dataclass(frozen=True)
class Document:
    uid: str
    title: str
    author: str
    year: Optional[int]
    text: str
    questions: tuple[Question, ...] = field(default=())

    @property
    def header(self) -> str:
        """The line that introduces the document to a generator, so it can cite the title."""
        year = f" ({self.year})" if self.year else ""
        return f'"{self.title}" by {self.author}{year}'
