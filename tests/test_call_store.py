import json
import subprocess
import sys

import pytest

from entigraph.call_store import CallStore, call_key
from entigraph.errors import EntigraphError
from entigraph.llm import ChatResult


def test_keys_cover_every_part_of_a_call():
    base = ("p", "m", "d", "relation", ("A", "B"), 0)
    variants = [("q",) + base[1:], base[:1] + ("n",) + base[2:], base[:2] + ("e",) + base[3:],
                base[:3] + ("x",) + base[4:], base[:4] + (("A", "C"),) + base[5:], base[:5] + (1,)]
    keys = {call_key(*v) for v in [base, *variants]}
    assert len(keys) == 7


def test_results_survive_reopening_and_the_last_line_wins(tmp_path):
    with CallStore(tmp_path / "calls.jsonl") as store:
        store.put_error("k1", "boom")
        store.put("k1", ChatResult("text", 3, 4), {"doc": "d"})
        store.put_error("k2", "boom")
    with CallStore(tmp_path / "calls.jsonl") as store:
        assert store.result("k1") == ChatResult("text", 3, 4)
        assert store.result("k2") is None and set(store.failures()) == {"k2"}


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
