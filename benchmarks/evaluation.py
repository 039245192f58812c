"""Evaluation throughput: the transformers and the vLLM backend, and vLLM with and without
prefix caching.

Builds the demo's tiny Llama (hidden 128, 4 heads, 4 layers; random weights) with a tokenizer
trained on the built-in corpus's chain-of-thought prompts, saves it to a temporary folder, and
evaluates the built-in corpus's 20 questions, `--copies` times over (as distinct questions),
through `entigraph.evaluation.evaluate_questions`, as `entigraph eval` does:

1. Backends: both protocols with each backend, alternately, `--repeats` rounds after one
   discarded warm-up round:
   * cot: the paper's five-shot chain-of-thought protocol with `--samples` samples a question and
     at most `--new-tokens` new tokens (the random model seldom writes an answer line, so nearly
     every sample runs to the cap on both backends: equal work);
   * then mc: log-likelihood multiple choice over the four options, in the same call.
   Timed: the whole call (model load, lm-eval task build, scoring). Each vLLM call starts its
   own engine, which a user waits for too: the headline rate includes it. The start is also
   timed once on its own (a one-question mc call) and `vllm_warm_questions_per_s` subtracts it,
   for long evaluations where it is amortised.
2. Prefix caching: the cot protocol alone on vLLM, on the first `--pc-copies` copies of the
   questions, `--pc-samples` samples of at most `--pc-new-tokens` new tokens a question (lm-eval's `repeats`: the same prompt sent that many
   times, as the paper's 64-sample scoring does), with `enable_prefix_caching` on (the harness's
   default) and off, alternately, `--pc-rounds` rounds each (no warm-up round: each call starts
   a fresh engine, so no cache survives between calls). Timed: the scoring alone (lm-eval's
   `evaluate`: prefill and decoding; the engine start is the same either way and would only
   dilute the ratio), and the whole call. Few new tokens keep the prompt's prefill, the part
   prefix caching saves, a realistic share of the work: the paper's prompt-to-answer ratio is
   about 900 prompt tokens to a few hundred new ones on a model whose prefill is not free.

Ends with one line:
RESULT hf_questions_per_s=<x> vllm_questions_per_s=<x> ... prefix_caching_speedup=<x> ...

    .venv/bin/python benchmarks/evaluation.py [--copies 5] [--samples 8] [--new-tokens 64]
        [--repeats 1] [--pc-copies 2] [--pc-samples 8] [--pc-new-tokens 32] [--pc-rounds 1]
        [--skip-backends]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

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


def build_model(folder: Path, questions: list) -> int:
    """Save the tiny model and its tokenizer to `folder`; the cot prompt's length in tokens."""
    texts = [question_row(doc, q)["cot_prompt"] for doc, q in questions]
    tokenizer = train_tokenizer(texts, vocab_size=2048)
    cfg = ModelConfig(hidden_size=128, num_heads=4, num_layers=4, intermediate_size=512)
    cfg.check()
    build_tiny_model(cfg, tokenizer, 128, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return len(tokenizer(texts[0]).input_ids)


@contextlib.contextmanager
def scoring_timer() -> Iterator[list[float]]:
    """Times lm-eval's `evaluate` (the scoring: requests, generation, metrics) inside
    evaluate_questions, which imports it from lm_eval.evaluator at call time."""
    import lm_eval.evaluator

    original, spent = lm_eval.evaluator.evaluate, []

    def timed_evaluate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    lm_eval.evaluator.evaluate = timed_evaluate
    try:
        yield spent
    finally:
        lm_eval.evaluator.evaluate = original


def timed(folder: Path, questions: list, work: Path, cfg: EvalConfig) -> tuple[float, float, dict]:
    """(seconds for the whole call, seconds scoring, result)."""
    with scoring_timer() as scoring:
        start = time.perf_counter()
        result = evaluate_questions(str(folder), None, questions, work, cfg)
        total = time.perf_counter() - start
    return total, sum(scoring), result


def backends(folder: Path, questions: list, tmp: Path, args) -> str:
    cot = CotConfig(num_samples=args.samples, max_new_tokens=args.new_tokens)
    configs = {"hf": EvalConfig(protocols=["cot", "mc"], cot=cot, batch_size=16),
               "vllm": EvalConfig(protocols=["cot", "mc"], cot=cot, backend="vllm",
                                  vllm_args=VLLM_ARGS)}
    start_s, _, _ = timed(folder, questions[:1], tmp / "start", EvalConfig(
        protocols=["mc"], backend="vllm", vllm_args=VLLM_ARGS))
    seconds: dict[str, list[float]] = {"hf": [], "vllm": []}
    for round_ in range(args.repeats + 1):  # round 0 warms caches and is discarded
        order = ["hf", "vllm"] if round_ % 2 == 0 else ["vllm", "hf"]
        for backend in order:
            s, _, result = timed(folder, questions, tmp / f"{backend}{round_}", configs[backend])
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
    return (f"hf_questions_per_s={n / hf_s:.3f} vllm_questions_per_s={n / vllm_s:.3f} "
            f"vllm_warm_questions_per_s={warm} vllm_speedup={hf_s / vllm_s:.2f} "
            f"cot_samples={args.samples} new_tokens={args.new_tokens}")


def prefix_caching(folder: Path, questions: list, tmp: Path, args) -> str:
    cot = CotConfig(num_samples=args.pc_samples, max_new_tokens=args.pc_new_tokens)
    configs = {flag: EvalConfig(protocols=["cot"], cot=cot, backend="vllm",
                                vllm_args={**VLLM_ARGS, "enable_prefix_caching": flag})
               for flag in (True, False)}
    scoring: dict[bool, list[float]] = {True: [], False: []}
    whole: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(args.pc_rounds):
        for flag in ((True, False) if round_ % 2 == 0 else (False, True)):
            s, score_s, result = timed(folder, questions, tmp / f"pc-{flag}-{round_}",
                                       configs[flag])
            whole[flag].append(s)
            scoring[flag].append(score_s)
            print(f"prefix caching {'on ' if flag else 'off'} (round {round_ + 1}): scoring "
                  f"{score_s:6.1f} s, whole call {s:6.1f} s for {len(questions)} questions x "
                  f"{args.pc_samples} cot samples; parse rate "
                  f"{result['metrics']['cot_parse_rate']:.2f}", flush=True)
    on, off = statistics.median(scoring[True]), statistics.median(scoring[False])
    on_whole, off_whole = statistics.median(whole[True]), statistics.median(whole[False])
    return (f"prefix_caching_speedup={off / on:.2f} prefix_caching_on_s={on:.1f} "
            f"prefix_caching_off_s={off:.1f} prefix_caching_whole_call_speedup="
            f"{off_whole / on_whole:.2f} pc_samples={args.pc_samples} "
            f"pc_new_tokens={args.pc_new_tokens}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pc-copies", type=int, default=2)
    parser.add_argument("--pc-samples", type=int, default=8)
    parser.add_argument("--pc-new-tokens", type=int, default=32)
    parser.add_argument("--pc-rounds", type=int, default=1)
    parser.add_argument("--skip-backends", action="store_true",
                        help="only the prefix-caching comparison")
    args = parser.parse_args()

    questions = [(doc, dataclasses.replace(q, uid=f"{q.uid}#{k}"))
                 for k in range(args.copies) for doc, q in questions_of(load_builtin())]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        prompt_tokens = build_model(folder, questions)
        parts = [] if args.skip_backends else [backends(folder, questions, Path(tmp), args)]
        pc_questions = questions[:args.pc_copies * len(questions) // args.copies]
        parts.append(prefix_caching(folder, pc_questions, Path(tmp), args))
    print(f"RESULT {' '.join(parts)} questions={len(questions)} pc_questions={len(pc_questions)} "
          f"prompt_tokens={prompt_tokens}")


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process
    sys.exit(main())
