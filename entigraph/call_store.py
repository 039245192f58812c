"""A durable, append-only record of generator calls, and the group commit that fills it.

Two files. `calls.jsonl` holds one JSON line per event (the reply's text or the error, and what
the call was about). `calls.idx` holds a fixed-size binary record per line: a hash of the key, where
the line lies, its token counts and whether it is an error. Opening reads the index only
(37 bytes a call: 37 MB for a million calls), indexes whatever lines the index
lacks (a kill between the two writes, or a store written before the index existed) and cuts a
torn last line; texts are read from disk when asked for.

A batch of events is one write and one fsync of the lines, then their index records: a call
counts once its line is durable, so a kill at any moment loses at most the calls not yet
committed, and the index never points past the durable lines. The last line for a key wins, so
a failed call retried later reads as done. An exclusive lock keeps two processes from writing
the same store.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from entigraph.errors import EntigraphError
from entigraph.llm import ChatResult

# "V16", not "S16": numpy strips trailing zero bytes from "S" values, and 1 digest in 256 ends
# in one.
INDEX = np.dtype([("key", "V16"), ("offset", "<u8"), ("length", "<u4"),
                  ("input_tokens", "<u4"), ("output_tokens", "<u4"), ("error", "u1")])
TAIL_CHUNK = 1 << 16  # bytes read backwards at a time to find the last whole line


def call_key(prompt_set: str, model: str, doc_uid: str, kind: str,
             entities: tuple[str, ...] = (), sample: int = 0,
             settings: Optional[dict] = None) -> str:
    """Stable identity of one call: prompt set, model, document, kind, entity tuple, sample,
    and the settings that change a reply (sampling, output format)."""
    ident = json.dumps([prompt_set, model, doc_uid, kind, list(entities), sample,
                        settings or {}], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()[:16]


def _record(entry: dict, offset: int, length: int) -> tuple:
    error = "error" in entry
    return (_digest(entry["key"]), offset, length, 0 if error else entry["input_tokens"],
            0 if error else entry["output_tokens"], int(error))


class CallStore:
    def __init__(self, path: Path, writable: bool = True):
        """Open the store at `path` (calls.jsonl; the index beside it). writable=False reads
        without the lock and changes nothing on disk (e.g. a dry run beside a running
        generation)."""
        self.path = Path(path)
        self.index_path = self.path.with_suffix(".idx")
        self.writable = writable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data = open(self.path, "a+b" if writable else "rb")
        if writable:
            try:
                fcntl.flock(self._data, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._data.close()
                raise EntigraphError(f"another process is generating into {self.path.parent}; "
                                     f"wait for it or stop it first") from None
        self._index = open(self.index_path, "a+b") if writable else None
        self._size = self._cut_torn_tail()
        self._loaded = self._read_index()
        self._added: list[tuple] = []  # records appended since opening
        self._rows = dict(zip(self._loaded["key"].tolist(), range(len(self._loaded))))
        self._index_missing_lines()

    # --- opening ----------------------------------------------------------------------------

    def _cut_torn_tail(self) -> int:
        """The size of the whole lines; a torn last line (killed mid-write) is cut off."""
        size = os.fstat(self._data.fileno()).st_size
        end = size
        while end > 0:
            start = max(0, end - TAIL_CHUNK)
            chunk = os.pread(self._data.fileno(), end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size and self.writable:
            self._data.truncate(end)
        return end

    def _read_index(self) -> np.ndarray:
        if not self.index_path.exists():
            return np.zeros(0, INDEX)
        raw = self.index_path.read_bytes()
        whole = len(raw) // INDEX.itemsize * INDEX.itemsize
        if whole < len(raw) and self.writable:
            self._index.truncate(whole)  # a torn record
        records = np.frombuffer(raw[:whole], INDEX)
        return records[records["offset"] + records["length"] <= self._size]

    def _index_missing_lines(self) -> None:
        """Index the lines after the last indexed one (appending their records to the index)."""
        start = int((self._loaded["offset"] + self._loaded["length"]).max()) \
            if len(self._loaded) else 0
        if start >= self._size:
            return
        records, offset = [], start
        self._data.seek(start)
        while offset < self._size:
            line = self._data.readline()
            records.append(_record(json.loads(line), offset, len(line)))
            offset += len(line)
        self._remember(records)
        if self.writable:
            self._write_index(records)

    # --- reading ----------------------------------------------------------------------------

    def record(self, key: str) -> Optional[tuple]:
        """The index record of the last event of `key` (the fields of INDEX), or None."""
        row = self._rows.get(_digest(key))
        if row is None:
            return None
        if row < len(self._loaded):
            return self._loaded[row].item()
        return self._added[row - len(self._loaded)]

    def _line(self, record: tuple) -> dict:
        return json.loads(os.pread(self._data.fileno(), record[2], record[1]))

    @property
    def size(self) -> int:
        """Bytes of durable, whole lines: grows with every event appended."""
        return self._size

    def __contains__(self, key: str) -> bool:
        return _digest(key) in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def result(self, key: str) -> Optional[ChatResult]:
        """The stored reply of `key`; None if never made or its last attempt failed."""
        record = self.record(key)
        if record is None or record[5]:
            return None
        entry = self._line(record)
        return ChatResult(entry["text"], entry["input_tokens"], entry["output_tokens"])

    def done(self, key: str) -> bool:
        record = self.record(key)
        return record is not None and not record[5]

    def latest(self) -> np.ndarray:
        """The last record of every key (the fields of INDEX)."""
        rows = np.fromiter(self._rows.values(), np.int64, len(self._rows))
        added = np.array(self._added, INDEX) if self._added else np.zeros(0, INDEX)
        return np.concatenate([self._loaded, added])[rows]

    # --- writing ----------------------------------------------------------------------------

    def _remember(self, records: list[tuple]) -> None:
        for record in records:
            self._added.append(record)  # first: a reader on another thread finds the row
            self._rows[record[0]] = len(self._loaded) + len(self._added) - 1

    def _write_index(self, records: list[tuple]) -> None:
        # Not fsynced: a lost record is rebuilt from its (durable) line on the next open.
        self._index.write(np.array(records, INDEX).tobytes())
        self._index.flush()

    def append_many(self, entries: list[dict]) -> None:
        """Make `entries` durable with one write and one fsync, then index them."""
        lines = [json.dumps(entry).encode() + b"\n" for entry in entries]
        records, offset = [], self._size
        for entry, line in zip(entries, lines):
            records.append(_record(entry, offset, len(line)))
            offset += len(line)
        self._data.seek(0, os.SEEK_END)
        self._data.write(b"".join(lines))
        self._data.flush()
        os.fsync(self._data.fileno())
        self._size = offset
        self._write_index(records)
        self._remember(records)

    def put(self, key: str, result: ChatResult, meta: Optional[dict] = None) -> None:
        self.append_many([reply_entry(key, result, meta)])

    def put_error(self, key: str, error: str, meta: Optional[dict] = None) -> None:
        self.append_many([error_entry(key, error, meta)])

    def close(self) -> None:
        self._data.close()
        if self._index:
            self._index.close()

    def __enter__(self) -> "CallStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reply_entry(key: str, result: ChatResult, meta: Optional[dict]) -> dict:
    return {"key": key, "meta": meta or {}, "text": result.text,
            "input_tokens": result.input_tokens, "output_tokens": result.output_tokens}


def error_entry(key: str, error: str, meta: Optional[dict]) -> dict:
    return {"key": key, "meta": meta or {}, "error": error}


class GroupCommit:
    """Appends events to a store in batches, on a worker thread: while one batch is written and
    fsynced, the calls completing meanwhile gather into the next, so hundreds of requests in
    flight are not serialised behind one fsync each (on NFS or Lustre, milliseconds apiece), and
    the event loop never blocks on the disk. `await put(entry)` returns once that entry is
    durable: a call counts only then."""

    def __init__(self, store: CallStore):
        self.store = store
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._writer: Optional[asyncio.Task] = None
        self.batches = 0  # commits made (for the benchmark and tests)

    async def put(self, entry: dict) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        await done

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(self.store.append_many, [entry for entry, _ in batch])
            except BaseException as err:  # noqa: BLE001 - each waiting call gets the error
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
                continue
            self.batches += 1
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
