import json
import subprocess
import sys

import pytest

from entigraph.call_store import INDEX, CallStore, GroupCommit, call_key, reply_entry
from entigraph.errors import EntigraphError
from entigraph.llm import ChatResult


def test_keys_cover_every_part_of_a_call():
    base = ("p", "m", "d", "relation", ("A", "B"), 0, {"temperature": 1.0})
    variants = [("q",) + base[1:], base[:1] + ("n",) + base[2:], base[:2] + ("e",) + base[3:],
                base[:3] + ("x",) + base[4:], base[:4] + (("A", "C"),) + base[5:],
                base[:5] + (1,) + base[6:], base[:6] + ({"temperature": 0.7},),
                base[:6] + ({"temperature": 1.0, "max_tokens": 512},)]
    keys = {call_key(*v) for v in [base, *variants]}
    assert len(keys) == 9


def test_opening_reads_the_index_and_indexes_what_it_lacks(tmp_path):
    path = tmp_path / "calls.jsonl"
    with CallStore(path) as store:
        store.append_many([reply_entry(f"k{i}", ChatResult(f"t{i}", 2, 3), {"doc": "d"})
                           for i in range(5)])
    index = path.with_suffix(".idx")
    assert index.stat().st_size == 5 * INDEX.itemsize
    # Killed after a line was durable and before its index record; then a torn index record.
    with open(path, "ab") as f:
        f.write((json.dumps(reply_entry("k5", ChatResult("t5", 2, 3), {"doc": "e"})) + "\n")
                .encode())
    with open(index, "ab") as f:
        f.write(b"\x01" * 10)
    with CallStore(path) as store:
        assert len(store) == 6 and store.result("k5") == ChatResult("t5", 2, 3)
        assert index.stat().st_size == 6 * INDEX.itemsize  # repaired for the next open
        latest = store.latest()
        assert latest["output_tokens"].sum() == 18 and latest["error"].sum() == 0
    # A store from before the index: every line is indexed on the first open.
    index.unlink()
    with CallStore(path) as store:
        assert [store.result(f"k{i}").text for i in range(6)] == [f"t{i}" for i in range(6)]
    # Read-only (a dry run beside a running generation): nothing on disk changes.
    index.unlink()
    with CallStore(path, writable=False) as store:
        assert store.done("k3") and not index.exists()


def test_keys_whose_hash_ends_in_zero_bytes_are_found_again(tmp_path):
    import hashlib

    keys = [f"k{i}" for i in range(5000) if hashlib.sha256(f"k{i}".encode()).digest()[15] == 0]
    assert keys  # about 1 in 256
    with CallStore(tmp_path / "calls.jsonl") as store:
        store.append_many([reply_entry(key, ChatResult(key, 1, 1), {}) for key in keys])
    with CallStore(tmp_path / "calls.jsonl") as store:  # from the index this time
        assert all(store.result(key).text == key for key in keys)


def test_a_group_commit_makes_many_calls_durable_per_fsync(tmp_path):
    import asyncio

    path = tmp_path / "calls.jsonl"

    async def calls(commit: GroupCommit) -> None:
        async def one(i: int) -> None:
            await asyncio.sleep(0.001 * (i % 7))
            await commit.put(reply_entry(f"k{i}", ChatResult(f"t{i}", 1, 1), {}))
            # Counted only now: its line is on disk for any reader.
            assert f'"k{i}"'.encode() in path.read_bytes()

        await asyncio.gather(*(one(i) for i in range(200)))

    with CallStore(path) as store:
        commit = GroupCommit(store)
        asyncio.run(calls(commit))
        assert len(store) == 200 and commit.batches < 100
    with CallStore(path) as store:
        assert len(store) == 200 and store.result("k199").text == "t199"


def test_results_survive_reopening_and_the_last_line_wins(tmp_path):
    with CallStore(tmp_path / "calls.jsonl") as store:
        store.put_error("k1", "boom")
        store.put("k1", ChatResult("text", 3, 4), {"doc": "d"})
        store.put_error("k2", "boom")
    with CallStore(tmp_path / "calls.jsonl") as store:
        assert store.result("k1") == ChatResult("text", 3, 4)
        assert store.result("k2") is None and "k2" in store and store.record("k2")[-1] == 1


def test_a_torn_last_line_is_cut_off(tmp_path):
    path = tmp_path / "calls.jsonl"
    with CallStore(path) as store:
        store.put("k1", ChatResult("a", 1, 1))
    with open(path, "ab") as f:
        f.write(b'{"key": "k2", "text": "hal')  # killed mid-write
    with CallStore(path) as store:
        assert store.result("k1") and store.result("k2") is None
        store.put("k3", ChatResult("c", 1, 1))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k3"]


def test_a_second_process_cannot_write_the_same_store(tmp_path):
    path = tmp_path / "calls.jsonl"
    with CallStore(path):
        code = ("from entigraph.call_store import CallStore\n"
                f"CallStore({str(path)!r})")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode != 0 and "another process is generating" in out.stderr
    with pytest.raises(EntigraphError):
        with CallStore(path):
            CallStore(path)
