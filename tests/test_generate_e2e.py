"""`entigraph generate` as a user runs it, against a real OpenAI-compatible server on 127.0.0.1."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openai_server import OpenAIServer, default_responder

pytestmark = pytest.mark.slow
MODEL = "test-model"


def generate(tmp_path, server, *overrides, env=None, wait=True):
    args = [sys.executable, "-m", "entigraph", "generate", f"paths.root={tmp_path}",
            "generator=vllm_server", f"generator.model={MODEL}",
            f"generator.base_url={server.base_url}", *overrides]
    if not wait:
        return subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def corpus_dir(tmp_path) -> Path:
    return tmp_path / "corpora" / "demo" / f"entigraph-entigraph-v1-{MODEL}"


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
        proc.send_signal(signal.SIGKILL)  # the process, not a function
        proc.wait()
        done_before = len(stored_keys(tmp_path))
        assert 40 <= done_before < expected
        rerun = generate(tmp_path, server, *overrides)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        keys = stored_keys(tmp_path)
        assert len(keys) == len(set(keys)) == expected
        # Only the calls in flight at the kill were made twice.
        assert server.requests <= expected + 8 + 1  # +1: the rerun's preflight is not a chat call
    result = manifest(tmp_path)
    assert result["status"] == "complete" and result["totals"]["calls"] == expected
    assert result["generator"]["model"] == MODEL and result["prompt_set"] == "entigraph-v1"


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
    article = {"article_id": "a1", "set_unique_id": "s1", "title": "The Salt Road",
               "author": "Nell Avery", "year": "1958",
               "article": "Tomas Brek led the salt caravan from Oster to Varn. " * 5,
               "questions": [{"question": "Who led the caravan?", "question_unique_id": "q1",
                              "options": ["Tomas Brek", "Oster", "Varn", "Nell"],
                              "gold_label": 1, "difficult": 0}]}
    path = tmp_path / "QuALITY.v1.0.1.htmlstripped.dev"
    path.write_text(json.dumps(article) + "\n")
    corpus = ["corpus=quality", f"corpus.path={path}"]
    with OpenAIServer() as server:
        for method, texts in (("rephrase", 3 * 2), ("raw", 1)):
            out = generate(tmp_path, server, *corpus, f"synthesis.method={method}",
                           "synthesis.rephrase_rounds=2")
            assert out.returncode == 0, out.stderr[-2000:]
            folder = tmp_path / "corpora" / "quality" / f"{method}-entigraph-v1-{MODEL}"
            result = json.loads((folder / "manifest.json").read_text())
            assert result["totals"]["texts"] == texts and result["status"] == "complete"
