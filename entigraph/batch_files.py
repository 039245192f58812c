"""OpenAI Batch API files: the requests we write and the results we read back.

vLLM's `run_batch` (python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model M) reads and
writes the same format, so one set of files serves a hosted batch and a local GPU alike.

Requests: one JSON line per call,
    {"custom_id": <call store key>, "method": "POST", "url": "/v1/chat/completions",
     "body": {"model", "messages", "temperature", "max_tokens"?, "seed"?, "response_format"?}}
Results: one JSON line per call,
    {"id", "custom_id", "response": {"status_code", "body": <chat completion>} | null,
     "error": {"code", "message"} | null}
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Union

from entigraph.errors import EntigraphError
from entigraph.llm import ChatRequest, ChatResult, chat_body
from entigraph.records import write_atomic

ENDPOINT = "/v1/chat/completions"
# OpenAI Batch API limits per input file (https://platform.openai.com/docs/guides/batch).
# Bytes are counted in decimal megabytes to stay under the limit whichever way it is meant.
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200_000_000


def request_line(request: ChatRequest, model: str, structured_output: str) -> dict[str, Any]:
    """One Batch API request line for `request` (same body as the openai backend sends)."""
    return {"custom_id": request.key, "method": "POST", "url": ENDPOINT,
            "body": chat_body(request, model, structured_output)}


def _part_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.part{index:03d}{path.suffix}")


def _stale_parts(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.part\d{3,}" + re.escape(path.suffix) + "$")
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if pattern.match(p.name)]


def write_batch_requests(requests: list[ChatRequest], model: str, path: Path,
                         structured_output: str) -> list[Path]:
    """Write `requests` as Batch API input; return the files written.

    One file at `path` when the requests fit the per-file limits (MAX_REQUESTS_PER_FILE lines,
    MAX_BYTES_PER_FILE bytes); otherwise `<stem>.part001<suffix>`, `.part002`, ... beside it, each
    within the limits (submit each as its own batch). Each file is written atomically; files of
    an earlier, larger split of the same name are removed so no stale part gets submitted.
    """
    path = Path(path)
    lines = [json.dumps(request_line(r, model, structured_output), ensure_ascii=False) + "\n"
             for r in requests]
    chunks: list[list[str]] = [[]]
    size = 0
    for number, line in enumerate(lines, 1):
        line_bytes = len(line.encode("utf-8"))
        if line_bytes > MAX_BYTES_PER_FILE:
            raise EntigraphError(f"batch request {number} ({requests[number - 1].key}) is "
                                 f"{line_bytes} bytes, over the Batch API file limit of "
                                 f"{MAX_BYTES_PER_FILE}; shorten the document or use another "
                                 f"backend")
        if chunks[-1] and (len(chunks[-1]) >= MAX_REQUESTS_PER_FILE
                           or size + line_bytes > MAX_BYTES_PER_FILE):
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += line_bytes
    targets = ([path] if len(chunks) == 1
               else [_part_path(path, i) for i in range(1, len(chunks) + 1)])
    for target, chunk in zip(targets, chunks):
        write_atomic(target, "".join(chunk))
    for stale in _stale_parts(path):
        if stale not in targets:
            stale.unlink(missing_ok=True)
    if len(chunks) > 1:
        path.unlink(missing_ok=True)
    return targets


def _estimate_tokens(text: str) -> int:
    return len(text) // 4  # ~4 characters per token; only when a result carries no usage


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if code and message:
            return f"{code}: {message}"
        return str(message or code or error)
    return str(error)


def _parse_line(record: Any) -> tuple[str, Union[ChatResult, str]]:
    """(custom_id, result or error string) of one result line; raises ValueError if malformed."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    key = record.get("custom_id")
    if not isinstance(key, str) or not key:
        raise ValueError("no custom_id")
    if record.get("error"):
        return key, _error_text(record["error"])
    response = record.get("response")
    if not isinstance(response, dict):
        raise ValueError("neither response nor error")
    status = response.get("status_code")
    body = response.get("body")
    if status != 200:
        detail = body.get("error") if isinstance(body, dict) and body.get("error") else body
        return key, f"HTTP {status}: {_error_text(detail)}"
    if not isinstance(body, dict):
        raise ValueError("response.body is not an object")
    try:
        text = body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise ValueError("response.body has no choices[0].message.content") from None
    if not isinstance(text, str):
        raise ValueError("message content is not a string")
    usage = body.get("usage")
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        return key, ChatResult(text, int(usage["prompt_tokens"]),
                               int(usage.get("completion_tokens") or 0))
    return key, ChatResult(text, 0, _estimate_tokens(text))


def read_batch_results(path: Path) -> dict[str, Union[ChatResult, str]]:
    """Results of a Batch API output (or error) file by custom_id: a ChatResult for a
    successful line, an error string for a failed one. A success wins over an error for the
    same custom_id (a request that failed in one batch and succeeded in a rerun).
    A malformed line raises EntigraphError naming file:line."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise EntigraphError(f"cannot read batch results {path}: {exc.strerror}; check "
                             f"generator.batch_results") from None
    results: dict[str, Union[ChatResult, str]] = {}
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                key, result = _parse_line(json.loads(line))
            except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
                raise EntigraphError(f"{path}:{number}: malformed batch result line ({exc}); "
                                     f"is this an OpenAI Batch API output file?") from None
            if isinstance(result, str) and isinstance(results.get(key), ChatResult):
                continue
            results[key] = result
    return results
