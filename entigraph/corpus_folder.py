"""The synthetic-corpus folder: what generation writes and training reads, and nothing else.

A corpus folder holds `calls.jsonl` with its index `calls.idx` (every generator call, durably;
call_store.py), `corpus.jsonl` (one synthetic text a line) and `manifest.json`, written last: a
corpus is complete, and is identified, by its manifest. Training reads a corpus through this
module alone, so it never depends on how the corpus was made.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from entigraph.errors import CorpusError

CORPUS = "corpus.jsonl"
MANIFEST = "manifest.json"
CALLS = "calls.jsonl"


def read_manifest(corpus_dir: Path) -> dict | None:
    path = Path(corpus_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def manifest_digest(corpus_dir: Path) -> str | None:
    """What identifies a corpus: the sha256 of its manifest (None while it has none)."""
    path = Path(corpus_dir) / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def require_complete(corpus_dir: Path) -> None:
    if read_manifest(corpus_dir) is None:
        raise CorpusError(f"no complete synthetic corpus at {corpus_dir} (no {MANIFEST}); "
                          f"run `entigraph generate` first or set data.corpus_dir")


def iter_texts(corpus_dir: Path) -> Iterator[str]:
    """The texts of `corpus.jsonl`, in file order, one line read at a time."""
    with open(Path(corpus_dir) / CORPUS) as f:
        yield from (json.loads(line)["text"] for line in f)


def read_corpus(corpus_dir: Path) -> list[dict]:
    """The items (id, document, kind, entities, text) of a finished corpus folder, in order."""
    require_complete(corpus_dir)
    with open(Path(corpus_dir) / CORPUS) as f:
        return [json.loads(line) for line in f]
