"""OpenAI Batch API request and result files (the format vLLM's run_batch reads and writes too)."""
import json
import re

import pytest

from entigraph import batch_files
from entigraph.batch_files import read_batch_results, write_batch_requests
from entigraph.errors import EntigraphError
from entigraph.llm import ChatRequest, ChatResult, schema_payload

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
MESSAGES = ({"role": "system", "content": "sys"}, {"role": "user", "content": "héllo"})


def requests(n: int, **kwargs) -> list[ChatRequest]:
    return [ChatRequest(key=f"k{i}", messages=MESSAGES, meta={"doc": "d"}, **kwargs)
            for i in range(n)]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def result_line(request_line: dict, text: str, prompt_tokens=11, completion_tokens=5) -> dict:
    """What the Batch API (or vLLM's run_batch) writes for a successful request."""
    return {"id": "batch_req_" + request_line["custom_id"], "custom_id": request_line["custom_id"],
            "response": {"status_code": 200, "request_id": "r",
                         "body": {"id": "chatcmpl-1", "object": "chat.completion",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": prompt_tokens,
                                            "completion_tokens": completion_tokens,
                                            "total_tokens": prompt_tokens + completion_tokens}}},
            "error": None}


def test_request_lines(tmp_path):
    reqs = [ChatRequest("free", MESSAGES, temperature=0.7),
            ChatRequest("ext", MESSAGES, temperature=1.0, max_tokens=300, json_schema=SCHEMA,
                        seed=5)]
    target = tmp_path / "batch" / "requests.jsonl"
    [path] = write_batch_requests(reqs, "gpt-x", target, "json_schema")
    assert path == target
    free, ext = read_lines(path)
    assert free == {"custom_id": "free", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-x", "messages": list(MESSAGES), "temperature": 0.7}}
    assert ext["body"]["max_tokens"] == 300 and ext["body"]["seed"] == 5
    assert ext["body"]["response_format"] == schema_payload(SCHEMA)
    assert "meta" not in json.dumps(ext)  # meta is never sent
    [path] = write_batch_requests(reqs, "gpt-x", path, "json_object")
    assert read_lines(path)[1]["body"]["response_format"] == {"type": "json_object"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_round_trip(tmp_path):
    reqs = requests(3, max_tokens=50)
    [path] = write_batch_requests(reqs, "m", tmp_path / "requests.jsonl", "json_schema")
    lines = read_lines(path)
    out = tmp_path / "results.jsonl"
    failed = {"id": "batch_req_x", "custom_id": "k2", "response": None,
              "error": {"code": "batch_expired", "message": "This request could not be executed"}}
    written = [result_line(lines[1], "second", 20, 7), result_line(lines[0], "first"), failed]
    out.write_text("\n".join(map(json.dumps, written)) + "\n\n")
    results = read_batch_results(out)
    assert results == {"k0": ChatResult("first", 11, 5), "k1": ChatResult("second", 20, 7),
                       "k2": "batch_expired: This request could not be executed"}


def test_http_errors_and_missing_usage(tmp_path):
    out = tmp_path / "results.jsonl"
    bad_status = {"id": "1", "custom_id": "a", "error": None,
                  "response": {"status_code": 400, "body": {"error": {
                      "message": "context too long", "code": "context_length_exceeded"}}}}
    no_usage = result_line({"custom_id": "b"}, "x" * 40)
    del no_usage["response"]["body"]["usage"]
    null_content = result_line({"custom_id": "c"}, None)
    out.write_text("\n".join(map(json.dumps, [bad_status, no_usage, null_content])) + "\n")
    results = read_batch_results(out)
    assert results["a"] == "HTTP 400: context_length_exceeded: context too long"
    assert results["b"] == ChatResult("x" * 40, 0, 10)  # estimated: ~4 characters a token
    assert results["c"] == ChatResult("", 11, 5)


def test_success_wins_over_an_earlier_or_later_error(tmp_path):
    ok = result_line({"custom_id": "a"}, "fine")
    err = {"id": "2", "custom_id": "a", "response": None, "error": {"message": "boom"}}
    for order in ([err, ok], [ok, err]):
        out = tmp_path / "results.jsonl"
        out.write_text("\n".join(map(json.dumps, order)))
        assert read_batch_results(out) == {"a": ChatResult("fine", 11, 5)}


@pytest.mark.parametrize("line, reason", [
    ("{not json", "malformed"),
    ("[1, 2]", "not a JSON object"),
    ('{"response": {"status_code": 200, "body": {}}}', "no custom_id"),
    ('{"custom_id": "a"}', "neither response nor error"),
    ('{"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}}}', "no choices"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    out = tmp_path / "results.jsonl"
    good = json.dumps(result_line({"custom_id": "ok"}, "fine"))
    out.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(EntigraphError, match=rf"{re.escape(str(out))}:3: .*{reason}"):
        read_batch_results(out)


def test_missing_results_file(tmp_path):
    with pytest.raises(EntigraphError, match="cannot read batch results"):
        read_batch_results(tmp_path / "nope.jsonl")


def test_split_by_request_count(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_files, "MAX_REQUESTS_PER_FILE", 2)
    path = tmp_path / "requests.jsonl"
    path.write_text("stale unsplit file\n")
    paths = write_batch_requests(requests(5), "m", path, "json_schema")
    assert [p.name for p in paths] == ["requests.part001.jsonl", "requests.part002.jsonl",
                                       "requests.part003.jsonl"]
    assert ([[x["custom_id"] for x in read_lines(p)] for p in paths]
            == [["k0", "k1"], ["k2", "k3"], ["k4"]])
    assert not path.exists()  # no unsplit file left to submit twice
    # A smaller rerun replaces the parts: none of the old ones stays behind.
    assert write_batch_requests(requests(1), "m", path, "json_schema") == [path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl"]


def test_split_by_bytes(tmp_path, monkeypatch):
    reqs = requests(4)
    one_line = len((json.dumps(batch_files.request_line(reqs[0], "m", "json_schema"),
                               ensure_ascii=False) + "\n").encode())
    monkeypatch.setattr(batch_files, "MAX_BYTES_PER_FILE", 2 * one_line + 1)
    paths = write_batch_requests(reqs, "m", tmp_path / "requests.jsonl", "json_schema")
    assert len(paths) == 2
    assert all(p.stat().st_size <= 2 * one_line + 1 for p in paths)
    assert [x["custom_id"] for p in paths for x in read_lines(p)] == ["k0", "k1", "k2", "k3"]


def test_one_request_over_the_byte_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_files, "MAX_BYTES_PER_FILE", 50)
    with pytest.raises(EntigraphError, match="k0.*over the Batch API file limit"):
        write_batch_requests(requests(1), "m", tmp_path / "requests.jsonl", "json_schema")


def test_round_trip_through_split_files(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_files, "MAX_REQUESTS_PER_FILE", 2)
    paths = write_batch_requests(requests(3), "m", tmp_path / "requests.jsonl", "json_schema")
    results = {}
    for i, path in enumerate(paths):
        out = tmp_path / f"results-{i}.jsonl"
        out.write_text("".join(json.dumps(result_line(x, x["custom_id"].upper())) + "\n"
                               for x in read_lines(path)))
        results.update(read_batch_results(out))
    assert {k: r.text for k, r in results.items()} == {"k0": "K0", "k1": "K1", "k2": "K2"}


def test_batch_results_refusing_the_json_schema_switch_the_requests_to_json_mode(compose, tmp_path):
    """A model that answers json_schema with HTTP 400 in a batch: the extractions are written
    again in JSON mode, and the manifest records the mode used."""
    from entigraph.corpus import Document
    from entigraph.generation import generate_corpus

    docs = [Document("d1", "The Keeper", "Writer, Ann", 1920, "Mara Quell kept the lamp.")]
    overrides = [f"paths.root={tmp_path}", "generator=batch", "generator.model=gpt-4o"]
    cfg = compose("generate", overrides)
    generate_corpus(docs, cfg)
    requests_file = tmp_path / "corpora" / "demo" / "entigraph-entigraph-v2-gpt-4o" / "batch" / "requests.jsonl"
    [line] = read_lines(requests_file)
    assert line["body"]["response_format"]["type"] == "json_schema"  # auto: gpt-4o takes it
    refused = {"id": "batch_req_1", "custom_id": line["custom_id"], "error": None,
               "response": {"status_code": 400, "body": {"error": {
                   "message": "Invalid parameter: 'response_format' of type 'json_schema' is "
                              "not supported with this model."}}}}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(refused) + "\n")
    manifest = generate_corpus(docs, compose("generate", [*overrides,
                                                          f"generator.batch_results=[{results}]"]))
    [again] = read_lines(requests_file)
    assert again["custom_id"] == line["custom_id"]
    assert again["body"]["response_format"] == {"type": "json_object"}
    assert manifest["generator"]["structured_output"] == "json_object"
