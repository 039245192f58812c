"""`entigraph generate` as a user runs it, against a real OpenAI-compatible server on 127.0.0.1."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openai_server import OpenAIServer, default_responder, refuse_json_schema

pytestmark = pytest.mark.slow
MODEL = "test-model"


def run_generate(tmp_path, *overrides, env=None, wait=True):
    args = [sys.executable, "-m", "entigraph", "generate", f"paths.root={tmp_path}", *overrides]
    if not wait:
        return subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def generate(tmp_path, server, *overrides, env=None, wait=True):
    """`entigraph generate` against `server` as a vLLM-style OpenAI-compatible server."""
    return run_generate(tmp_path, "generator=vllm_server", f"generator.model={MODEL}",
                        f"generator.base_url={server.base_url}", *overrides, env=env, wait=wait)


def quality_file(tmp_path, articles) -> Path:
    """A QuALITY-format file (authors stored "Last, First") of (id, title, author, text)."""
    lines = [{"article_id": uid, "set_unique_id": f"s-{uid}", "title": title, "author": author,
              "year": "1958", "article": text,
              "questions": [{"question": "Who led the caravan?", "question_unique_id": f"q-{uid}",
                             "options": ["Tomas Brek", "Oster", "Varn", "Nell"], "gold_label": 1,
                             "difficult": 0}]}
             for uid, title, author, text in articles]
    path = tmp_path / "QuALITY.v1.0.1.htmlstripped.dev"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def corpus_dir(tmp_path) -> Path:
    return tmp_path / "corpora" / "demo" / f"entigraph-entigraph-v2-{MODEL}"


def stored_keys(tmp_path) -> list[str]:
    path = corpus_dir(tmp_path) / "calls.jsonl"
    return [json.loads(line)["key"] for line in path.read_text().splitlines()] if path.exists() else []


def manifest(tmp_path) -> dict:
    return json.loads((corpus_dir(tmp_path) / "manifest.json").read_text())


def test_killed_generation_resumes_with_no_duplicate_and_no_missing_call(tmp_path):
    # Built-in corpus: 5 documents; the server names at least 6 entities each, capped to 6.
    overrides = ("synthesis.max_entities=6", "synthesis.max_triples=5", "generator.max_in_flight=8")
    expected = 5 * (1 + 15 + 5)
    with OpenAIServer(latency=0.05) as server:
        proc = generate(tmp_path, server, *overrides, wait=False)
        deadline = time.monotonic() + 120
        while len(stored_keys(tmp_path)) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # the process, not a function, mid group commit
        proc.wait()
        durable = stored_keys(tmp_path)
        assert 40 <= len(durable) < expected
        rerun = generate(tmp_path, server, *overrides)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        keys = stored_keys(tmp_path)
        assert len(keys) == len(set(keys)) == expected
        assert keys[:len(durable)] == durable  # every durable call kept, none made again
        # Only the calls in flight at the kill were made twice.
        assert server.requests <= expected + 8 + 1  # +1: the rerun's preflight is not a chat call
    result = manifest(tmp_path)
    assert result["status"] == "complete" and result["totals"]["calls"] == expected
    assert result["generator"]["model"] == MODEL and result["prompt_set"] == "entigraph-v2"


def uncommitted_bytes(folder: Path) -> int:
    """Bytes of calls.jsonl past the last call its index records: a group commit under way
    (lines written, index not yet), or a torn line."""
    from entigraph.call_store import INDEX

    data, index = folder / "calls.jsonl", folder / "calls.idx"
    if not data.exists() or not index.exists() or index.stat().st_size < INDEX.itemsize:
        return 0
    with open(index, "rb") as f:
        f.seek(index.stat().st_size // INDEX.itemsize * INDEX.itemsize - INDEX.itemsize)
        last = np.frombuffer(f.read(INDEX.itemsize), INDEX)[0]
    return data.stat().st_size - int(last["offset"]) - int(last["length"])


def indexed_keys(folder: Path) -> list[str]:
    """The keys of the calls the index records (the first lines of calls.jsonl)."""
    from entigraph.call_store import INDEX

    count = (folder / "calls.idx").stat().st_size // INDEX.itemsize
    with open(folder / "calls.jsonl") as f:
        return [json.loads(next(f))["key"] for _ in range(count)]


def test_a_kill_during_a_group_commit_loses_and_duplicates_nothing(tmp_path):
    """Killed while a batch of ~100 KB replies is being written and fsynced (seen from outside:
    the data file ahead of its index), then rerun: every call indexed before the kill is kept
    in place, none is made twice, none is missing."""
    def big_replies(body: dict) -> str:
        text = default_responder(body)
        return text if body.get("response_format") else text + " filler" * 15_000

    overrides = ("synthesis.max_entities=6", "synthesis.max_triples=5", "generator.max_in_flight=16")
    expected, folder = 5 * (1 + 15 + 5), corpus_dir(tmp_path)
    with OpenAIServer(responder=big_replies) as server:
        for _ in range(5):  # the commit may end between the poll and the kill: start afresh
            shutil.rmtree(folder, ignore_errors=True)
            proc = generate(tmp_path, server, *overrides, wait=False)
            while proc.poll() is None and not uncommitted_bytes(folder):
                pass  # as fast as Python polls: the window is the commit's write and fsync
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if uncommitted_bytes(folder):
                break
        else:
            pytest.fail("no kill landed during a group commit in 5 tries")
        indexed = indexed_keys(folder)
        rerun = generate(tmp_path, server, *overrides)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    keys = stored_keys(tmp_path)
    assert len(keys) == len(set(keys)) == expected
    assert 0 < len(indexed) < expected and keys[:len(indexed)] == indexed
    assert manifest(tmp_path)["totals"]["calls"] == expected


def test_a_changed_sampling_setting_never_serves_stored_replies(tmp_path):
    overrides = ("synthesis.max_entities=4", "synthesis.max_triples=2")
    expected = 5 * (1 + 6 + 2)
    with OpenAIServer() as server:
        assert generate(tmp_path, server, *overrides).returncode == 0
        made = server.requests
        again = generate(tmp_path, server, *overrides)
        assert again.returncode == 0 and server.requests == made  # all stored
        hotter = generate(tmp_path, server, *overrides, "generator.temperature=0.5")
        assert hotter.returncode == 0, hotter.stderr[-2000:]
        assert server.requests == made + expected  # every call made anew
        assert {body["temperature"] for body in server.received[-expected:]} == {0.5}
    keys = stored_keys(tmp_path)
    assert len(keys) == len(set(keys)) == 2 * expected
    assert manifest(tmp_path)["totals"]["calls"] == expected  # this corpus's calls only
    assert manifest(tmp_path)["generator"]["temperature"] == 0.5


def test_malformed_extraction_fails_that_document_and_the_run_goes_on(tmp_path):
    def responder(body):
        if body.get("response_format") and "Lamplighter" in json.dumps(body["messages"]):
            return "this is not json"
        return default_responder(body)

    with OpenAIServer(responder=responder) as server:
        out = generate(tmp_path, server, "synthesis.max_entities=3", "synthesis.max_triples=1")
    assert out.returncode == 0, out.stderr[-2000:]
    docs = manifest(tmp_path)["documents"]
    assert "not JSON" in docs["lamplighter"]["failure"]
    assert docs["lamplighter"]["calls"] == 3  # every extraction attempt, no relation
    others = [d for uid, d in docs.items() if uid != "lamplighter"]
    assert all("failure" not in d and d["texts"] == 1 + 3 + 1 for d in others)
    assert manifest(tmp_path)["totals"]["failed_documents"] == 1


def test_generation_stops_at_its_dollar_budget(tmp_path):
    with OpenAIServer() as server:
        out = generate(tmp_path, server, "generator.price_output_per_mtok=1000",
                       "synthesis.budget_dollars=0.5", "generator.max_in_flight=1")
    assert out.returncode == 0, out.stderr[-2000:]
    result = manifest(tmp_path)
    assert result["status"] == "budget_reached"
    # max_in_flight=1: the call that crossed the budget is the last one made.
    assert 0.5 <= result["totals"]["cost"] < 0.5 + 0.2
    assert "budget_reached" in out.stdout


def test_missing_api_key_fails_fast_and_leaves_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ENTIGRAPH_TEST_KEY"}
    with OpenAIServer() as server:
        started = time.monotonic()
        out = generate(tmp_path, server, "generator.api_key_env=ENTIGRAPH_TEST_KEY", env=env)
    assert out.returncode == 2 and time.monotonic() - started < 30
    assert "ENTIGRAPH_TEST_KEY" in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "corpora").exists()


def test_unreachable_server_fails_in_seconds(tmp_path):
    class Closed:
        base_url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens

    started = time.monotonic()
    out = generate(tmp_path, Closed)
    assert out.returncode == 2 and time.monotonic() - started < 30
    assert "cannot reach" in out.stderr
    assert not (tmp_path / "corpora").exists()


def answer_batch(requests_file: Path, results_file: Path, server) -> None:
    """Play the Batch API: answer every request line through the server, in its output format."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    lines = []
    for n, line in enumerate(requests_file.read_text().splitlines()):
        request = json.loads(line)
        completion = client.chat.completions.create(**request["body"])
        lines.append({"id": f"batch_req_{n}", "custom_id": request["custom_id"], "error": None,
                      "response": {"status_code": 200, "body": completion.model_dump()}})
    results_file.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_batch_files_round_trip_stage_by_stage(tmp_path):
    overrides = ["generator=batch", f"generator.model={MODEL}", "synthesis.max_entities=3",
                 "synthesis.max_triples=1"]
    requests = corpus_dir(tmp_path) / "batch" / "requests.jsonl"
    results = []
    with OpenAIServer() as server:
        for stage, expected_requests in (("extraction", 5), ("relation", 5 * (3 + 1))):
            out = generate(tmp_path, server, *overrides,
                           f"generator.batch_results=[{','.join(map(repr, results))}]")
            assert out.returncode == 0, out.stderr[-2000:]
            assert f"wrote {expected_requests} requests" in out.stdout, stage
            assert manifest(tmp_path)["status"] == "waiting_for_batch"
            results.append(str(tmp_path / f"results-{stage}.jsonl"))
            answer_batch(requests, Path(results[-1]), server)
        final = generate(tmp_path, server, *overrides,
                         f"generator.batch_results=[{','.join(map(repr, results))}]")
    assert final.returncode == 0, final.stderr[-2000:]
    result = manifest(tmp_path)
    assert result["status"] == "complete" and result["totals"]["texts"] == 5 * (1 + 3 + 1)


def test_rephrase_and_raw_from_a_quality_file(tmp_path):
    path = quality_file(tmp_path, [("a1", "The Salt Road", "Nell Avery",
                                    "Tomas Brek led the salt caravan from Oster to Varn. " * 5)])
    corpus = ["corpus=quality", f"corpus.path={path}"]
    with OpenAIServer() as server:
        for method, texts in (("rephrase", 3 * 2), ("raw", 1)):
            out = generate(tmp_path, server, *corpus, f"synthesis.method={method}",
                           "synthesis.rephrase_rounds=2")
            assert out.returncode == 0, out.stderr[-2000:]
            folder = tmp_path / "corpora" / "quality" / f"{method}-entigraph-v2-{MODEL}"
            result = json.loads((folder / "manifest.json").read_text())
            assert result["totals"]["texts"] == texts and result["status"] == "complete"


SALT_ROAD = ("a1", "The Salt Road", "Avery, Nell", "Tomas Brek led the salt caravan from Oster to Varn.")
HARBOUR = ("a2", "Harbour Lights", "Okafor, Ada", "Ines Mora kept the light at Cape Dunn.")
# Entities the server's extraction names: 28 for the first article, 12 for the second.
ENTITIES = {"The Salt Road": [f"Salt Road entity {i}" for i in range(28)],
            "Harbour Lights": [f"Harbour entity {i}" for i in range(12)]}


def extraction_responder(body):
    """Extraction (asked for JSON): the entities above for the article named in the prompt."""
    if body.get("response_format"):
        title = next(t for t in ENTITIES if t in json.dumps(body["messages"]))
        return json.dumps({"summary": f"A summary of {title}.", "entities": ENTITIES[title]})
    return default_responder(body)


def test_paper_preset_generates_the_paper_plan_in_json_mode_for_gpt_4_turbo(tmp_path):
    """experiment=paper_entigraph: JSON mode for gpt-4-turbo, every entity, every pair and the
    preset's 3,000 triples of each article, authors written "First Last"."""
    path = quality_file(tmp_path, [SALT_ROAD, HARBOUR])
    env = {**os.environ, "OPENAI_API_KEY": "sk-local-test"}
    with OpenAIServer(model="gpt-4-turbo", hook=refuse_json_schema,
                      responder=extraction_responder, max_recorded=20000) as server:
        out = run_generate(tmp_path, "experiment=paper_entigraph", "model=tiny", "corpus=quality",
                           f"corpus.path={path}", f"generator.base_url={server.base_url}",
                           "generator.max_in_flight=64", env=env)
        received = server.received
    assert out.returncode == 0, out.stderr[-2000:]
    extractions = [b for b in received if b.get("response_format")]
    relations = [b for b in received if not b.get("response_format")]
    assert [b["response_format"] for b in extractions] == [{"type": "json_object"}] * 2
    assert all(b["model"] == "gpt-4-turbo" and b["temperature"] == 1.0 and "max_tokens" not in b
               for b in received)
    # Every pair (C(28,2) = 378, C(12,2) = 66), then the triples: C(28,3) = 3,276 capped at the
    # preset's 3,000, and all C(12,3) = 220; each exactly once.
    assert len(relations) == 378 + 3000 + 66 + 220
    prompts = [b["messages"][-1]["content"] for b in received]
    assert len(set(prompts)) == len(prompts)
    assert all('"The Salt Road", Nell Avery, 1958.' in p or '"Harbour Lights", Ada Okafor, 1958.'
               in p for p in prompts)
    assert not any("Avery, Nell" in p or "Okafor, Ada" in p for p in prompts)
    triple = next(p for p in prompts
                  if re.search(r"^Entities: Salt[^;\n]+; [^;\n]+; [^;\n]+$", p, re.M))
    assert re.search(r"\n### Discussion of Interaction between Salt Road entity \d+, Salt Road "
                     r"entity \d+ and Salt Road entity \d+ in context of The Salt Road$", triple)
    folder = tmp_path / "corpora" / "quality" / "entigraph-entigraph-v2-gpt-4-turbo"
    result = json.loads((folder / "manifest.json").read_text())
    assert result["status"] == "complete" and result["totals"]["texts"] == 2 + len(relations)
    assert result["generator"]["structured_output"] == "json_object"


def test_a_server_refusing_the_json_schema_still_yields_a_complete_corpus(tmp_path):
    path = quality_file(tmp_path, [SALT_ROAD, HARBOUR])
    with OpenAIServer(hook=refuse_json_schema, responder=extraction_responder) as server:
        out = generate(tmp_path, server, "corpus=quality", f"corpus.path={path}",
                       "generator.structured_output=json_schema", "synthesis.max_entities=4",
                       "synthesis.max_triples=1")
        formats = [(b.get("response_format") or {}).get("type") for b in server.received]
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("refused response_format json_schema") == 1  # logged once
    assert formats.count("json_schema") >= 1 and formats.count("json_object") == 2
    folder = tmp_path / "corpora" / "quality" / f"entigraph-entigraph-v2-{MODEL}"
    result = json.loads((folder / "manifest.json").read_text())
    assert result["status"] == "complete" and result["totals"]["failed_calls"] == 0
    assert result["totals"]["texts"] == 2 * (1 + 6 + 1)
    assert result["generator"]["structured_output"] == "json_object"


def test_a_kill_while_the_corpus_is_written_leaves_the_rerun_whole(tmp_path):
    """The offline generator on 100 articles (14,600 texts): killed while corpus.jsonl is being
    written from the store, then rerun: no call made twice, every text once, no torn file."""
    names = ["Ada", "Bram", "Cleo", "Dov", "Esme", "Finn", "Gus", "Hana", "Ivo", "Juno"]
    articles = [(f"a{i}", f"Article {i}", "Writer, Ann",
                 " ".join(f"{name}{i} met {other}{i} at the harbour."
                          for name, other in zip(names, names[1:] + names[:1])) * 2)
                for i in range(100)]
    path = quality_file(tmp_path, articles)
    args = ("corpus=quality", f"corpus.path={path}", "synthesis.max_entities=10",
            "synthesis.max_triples=100")
    proc = run_generate(tmp_path, *args, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None \
            and not list(tmp_path.glob("corpora/*/*/.corpus.jsonl.*.tmp")):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = tmp_path.glob("corpora/*/*")
    assert list(folder.glob(".corpus.jsonl.*.tmp")), "not killed while writing the corpus"
    assert not (folder / "manifest.json").exists()
    calls = len((folder / "calls.jsonl").read_text().splitlines())

    rerun = run_generate(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len((folder / "calls.jsonl").read_text().splitlines()) == calls  # none made again
    ids = [json.loads(line)["id"] for line in (folder / "corpus.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 100 * (1 + 45 + 100)
    assert not list(folder.glob(".*.tmp"))
    assert json.loads((folder / "manifest.json").read_text())["totals"]["texts"] == len(ids)
