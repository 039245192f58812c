"""A durable, append-only record of generator calls: each completed call written once.

One JSON line per event, flushed and fsynced before the call counts as done, so a kill at any
moment loses at most the calls in flight; a torn last line (killed mid-write) is cut off on the
next open. The last line for a key wins, so a failed call retried later reads as done. An
exclusive lock keeps two processes from writing the same store.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from entigraph.errors import EntigraphError
from entigraph.llm import ChatResult


def call_key(prompt_set: str, model: str, doc_uid: str, kind: str,
             entities: tuple[str, ...] = (), sample: int = 0) -> str:
    """Stable identity of one call: prompt set, model, document, kind, entity tuple, sample."""
    ident = json.dumps([prompt_set, model, doc_uid, kind, list(entities), sample])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


class CallStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise EntigraphError(f"another process is generating into {self.path.parent}; "
                                 f"wait for it or stop it first") from None
        self.entries: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        end = data.rfind(b"\n") + 1  # anything after the last newline is a torn write
        if end < len(data):
            self._file.truncate(end)
        for line in data[:end].splitlines():
            entry = json.loads(line)
            self.entries[entry["key"]] = entry

    def result(self, key: str) -> Optional[ChatResult]:
        entry = self.entries.get(key)
        if entry is None or "error" in entry:
            return None
        return ChatResult(entry["text"], entry["input_tokens"], entry["output_tokens"])

    def failures(self) -> dict[str, dict]:
        return {k: e for k, e in self.entries.items() if "error" in e}

    def _append(self, entry: dict) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(json.dumps(entry).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries[entry["key"]] = entry

    def put(self, key: str, result: ChatResult, meta: Optional[dict] = None) -> None:
        self._append({"key": key, "meta": meta or {}, "text": result.text,
                      "input_tokens": result.input_tokens, "output_tokens": result.output_tokens})

    def put_error(self, key: str, error: str, meta: Optional[dict] = None) -> None:
        self._append({"key": key, "meta": meta or {}, "error": error})

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "CallStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
