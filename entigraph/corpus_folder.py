"""The synthetic-corpus folder: what generation writes and training reads, and nothing else.

A corpus folder holds `calls.jsonl` with its index `calls.idx` (every generator call, durably;
call_store.py), `corpus.jsonl` (one synthetic text a line) and `manifest.json`, written last: a
corpus is complete, and is identified, by its manifest, which records the sha256 of the texts
beside it. Training reads a corpus through this module alone, so it never depends on how the
corpus was made.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

from entigraph.errors import CorpusError
from entigraph.records import write_lines_atomic

CORPUS = "corpus.jsonl"
MANIFEST = "manifest.json"
CALLS = "calls.jsonl"
PROMPTS = "prompts.json"  # the fingerprint of each prompt set whose calls the store holds


def read_manifest(corpus_dir: Path) -> dict | None:
    path = Path(corpus_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def corpus_digest(corpus_dir: Path) -> str | None:
    """What identifies a corpus (None while it has no manifest): the sha256 of its texts, as
    its manifest records it, so a manifest rewritten over the same texts (other prices, another
    token counter) keeps every run and token cache made from them. A manifest written before it
    recorded that is identified by its own sha256."""
    path = Path(corpus_dir) / MANIFEST
    if not path.exists():
        return None
    raw = path.read_bytes()
    return json.loads(raw).get("corpus_sha256") or hashlib.sha256(raw).hexdigest()


def write_texts(corpus_dir: Path, items: Iterable[dict]) -> tuple[int, str]:
    """Write `corpus.jsonl` from `items` as they come, atomically; (texts written, their
    sha256). The manifest goes first: it describes the texts beside it, so until a new one is
    written the folder reads as unfinished."""
    (Path(corpus_dir) / MANIFEST).unlink(missing_ok=True)
    digest, count = hashlib.sha256(), 0

    def lines() -> Iterator[str]:
        nonlocal count
        for item in items:
            line = json.dumps(item) + "\n"
            digest.update(line.encode())
            count += 1
            yield line

    write_lines_atomic(Path(corpus_dir) / CORPUS, lines())
    return count, digest.hexdigest()


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
