"""Evaluation throughput: questions per second with the transformers and the vLLM backend.

Builds the demo's tiny Llama (hidden 128, 4 heads, 4 layers; random weights) with a tokenizer
trained on the built-in corpus's chain-of-thought prompts, saves it to a temporary folder, and
evaluates the built-in corpus's 20 questions, `--copies` times over (as distinct questions), on it through `entigraph.evaluation.evaluate_questions`
with each backend, alternately, `--repeats` rounds after one discarded warm-up round:

  * cot: the paper's five-shot chain-of-thought protocol with `--samples` samples a question and
    at most `--new-tokens` new tokens (the random model seldom writes an answer line, so nearly
    every sample runs to the cap on both backends: equal work);
  * then mc: log-likelihood multiple choice over the four options, in the same call.

Timed: the whole `evaluate_questions` call, as `entigraph eval` makes it (model load, lm-eval
task build, scoring). Each vLLM call starts its own engine, which a user waits for too: the
headline rate includes it. The start is also timed once on its own (a one-question mc call)
and `vllm_warm_questions_per_s` subtracts it, for long evaluations where it is amortised.

Ends with one line:
RESULT hf_questions_per_s=<x> vllm_questions_per_s=<x> ...

    .venv/bin/python benchmarks/evaluation.py [--copies 5] [--samples 8] [--new-tokens 64]
        [--repeats 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from entigraph.config import CotConfig, EvalConfig, ModelConfig  # noqa: E402
from entigraph.corpus import load_builtin, questions_of  # noqa: E402
from entigraph.evaluation import evaluate_questions, question_row  # noqa: E402
from entigraph.tiny_model import build_tiny_model, train_tokenizer  # noqa: E402

# vLLM on CPU: the saved dtype, a bounded KV cache, no torch.compile pass at start.
VLLM_ARGS = {"dtype": "float32", "max_model_len": 4096, "enforce_eager": True,
             "kv_cache_memory_bytes": 512 * 2**20}


def build_model(folder: Path, questions: list) -> None:
    texts = [question_row(doc, q)["cot_prompt"] for doc, q in questions]
    tokenizer = train_tokenizer(texts, vocab_size=2048)
    cfg = ModelConfig(hidden_size=128, num_heads=4, num_layers=4, intermediate_size=512)
    cfg.check()
    build_tiny_model(cfg, tokenizer, 128, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def timed(folder: Path, questions: list, work: Path, cfg: EvalConfig) -> tuple[float, dict]:
    start = time.perf_counter()
    result = evaluate_questions(str(folder), None, questions, work, cfg)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    questions = [(doc, dataclasses.replace(q, uid=f"{q.uid}#{k}"))
                 for k in range(args.copies) for doc, q in questions_of(load_builtin())]
    cot = CotConfig(num_samples=args.samples, max_new_tokens=args.new_tokens)
    configs = {"hf": EvalConfig(protocols=["cot", "mc"], cot=cot, batch_size=16),
               "vllm": EvalConfig(protocols=["cot", "mc"], cot=cot, backend="vllm",
                                  vllm_args=VLLM_ARGS)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model(folder, questions)
        start_s, _ = timed(folder, questions[:1], Path(tmp) / "start", EvalConfig(
            protocols=["mc"], backend="vllm", vllm_args=VLLM_ARGS))
        seconds: dict[str, list[float]] = {"hf": [], "vllm": []}
        for round_ in range(args.repeats + 1):  # round 0 warms caches and is discarded
            order = ["hf", "vllm"] if round_ % 2 == 0 else ["vllm", "hf"]
            for backend in order:
                s, result = timed(folder, questions, Path(tmp) / f"{backend}{round_}",
                                  configs[backend])
                m = result["metrics"]
                print(f"round {round_} {backend:>4}: {s:7.1f} s for {len(questions)} questions "
                      f"({args.samples} cot samples each); cot parse rate "
                      f"{m['cot_parse_rate']:.2f}, mc accuracy {m['mc_accuracy']:.2f}", flush=True)
                if round_:
                    seconds[backend].append(s)
    n = len(questions)
    hf_s, vllm_s = statistics.median(seconds["hf"]), statistics.median(seconds["vllm"])
    print(f"vLLM engine start and a one-question call: {start_s:.1f} s")
    warm = f"{n / (vllm_s - start_s):.3f}" if vllm_s > start_s else "n/a"  # n/a: start dominates
    print(f"RESULT hf_questions_per_s={n / hf_s:.3f} vllm_questions_per_s={n / vllm_s:.3f} "
          f"vllm_warm_questions_per_s={warm} "
          f"vllm_speedup={hf_s / vllm_s:.2f} questions={n} cot_samples={args.samples} "
          f"new_tokens={args.new_tokens}")


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process
    sys.exit(main())
