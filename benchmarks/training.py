"""Training throughput: our accelerate loop vs the transformers Trainer, same model and blocks.

In a temporary folder: generates the built-in demo corpus's synthetic corpus with the offline
generator, then trains the demo's tiny Llama (hidden 128, 4 heads, 4 layers, intermediate 512)
for one epoch on `--tokens` synthetic tokens in blocks of 128, alternately with

  * ours: `entigraph.training.train(cfg, record)` on a composed `train` config, as
    `entigraph train` runs it (progress bar, run record, throughput logging, its checkpoint
    cadence and the final checkpoint and model save included; no evaluation, no tracker), each
    run in a fresh run folder;
  * Trainer: `transformers.Trainer` on the same tiny model (built by `entigraph.models.load_model`
    with the same tokenizer, sizes and init seed), the very blocks our run trains on (from
    `entigraph.train_data.build_training_blocks`), the same batch and micro-batch sizes, and the
    same optimisation: torch AdamW (lr, betas, weight decay off norms), warmup ratio, cosine
    schedule, gradient clipping; 1 epoch, no evaluation, no saving, no logging, `use_cpu=True`,
    its progress bar on as ours is.

What is timed, the same way for both (`loop_s`): from the first forward pass to the end of the
last optimiser step. A class-level wrapper of `LlamaForCausalLM.forward` marks the first forward
and counts the tokens and padding actually fed; a global optimiser step hook marks each real
optimiser step (after gradient accumulation). Tokens/s = tokens fed / loop_s. Setup (Accelerator,
tokenizer, blocks, model build, `prepare`) and, for ours, the final checkpoint and model save
fall outside it; the Trainer's own `train_runtime` and the wall time around each call are
reported beside it. A second rate, at the pace of the median optimiser step, and the process's
CPU seconds per loop second (2.00 = both cores all along) show when other load on the machine
disturbed a run.

Rounds alternate the order (ours, Trainer, Trainer, ours, ...) after one discarded warm-up round;
the headline speedup is the median over rounds of ours/Trainer tokens/s within a round (this
machine is noisy: ratios of neighbouring runs, not absolute times).

Padding: both paths feed our packed blocks, which are full slices of the token stream. The
benchmark checks that the blocks are exactly the selected token stream cut into block_size pieces
(so every position is a real token), and counts positions in the batches actually fed that carry
an attention mask of 0 or a label of -100 (none is passed, so none can be padding).

Precision: ours runs with trainer.precision=auto, i.e. bf16 autocast on a CPU with bf16
instructions (this one), and trainer.attention=`--attention` (default auto: eager for these
128-token blocks in bf16 on a CPU). Two Trainers run beside it: "Trainer"
as a user gets it by default (fp32, the model's default sdpa attention) for the headline, and
"Trainer/same" with bf16=True and our attention kernel, for `speedup_same_precision`: the gain
that is the loop's own rather than the settings'.

Ends with one line: RESULT speedup_vs_trainer=<x> padding_share=<x> speedup_same_precision=<x>

    .venv/bin/python benchmarks/training.py [--tokens 65536] [--repeats 3] [--accum 2]
        [--attention eager|sdpa|auto] [--fused] [--profile]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Progress bars (ours and the Trainer's): redraw at most once a second.
os.environ.setdefault("TQDM_MININTERVAL", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from entigraph import commands, training  # noqa: E402
from entigraph.config import register_configs, validate  # noqa: E402
from entigraph.models import load_model, load_tokenizer  # noqa: E402
from entigraph.records import RunRecord  # noqa: E402
from entigraph.token_data import select_budget  # noqa: E402
from entigraph.train_data import build_training_blocks, synthetic_tokens  # noqa: E402

# The demo's model and data sizes (conf/demo.yaml), one epoch, no evaluation, no tracker.
DEMO = ["model.hidden_size=128", "model.num_heads=4", "model.num_layers=4",
        "model.intermediate_size=512", "data.block_size=128", "optim.lr=1e-3",
        "optim.warmup_ratio=0.1", "trainer.epochs=1", "trainer.batch_size=16",
        "eval.after_training=false", "tracker.mode=disabled"]


def compose(name: str, overrides: list[str]):
    """The config `entigraph <name> overrides` would run, validated as the CLI does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module("entigraph.conf"):
        cfg = hydra_compose(name, overrides=overrides)
    validate(cfg)
    return cfg


# ---- instrumentation: the same for both paths

@dataclass
class Probe:
    """What one training call fed the model and when its optimiser stepped."""
    first_forward: float | None = None
    first_cpu: float | None = None
    step_times: list[float] = field(default_factory=list)
    last_cpu: float | None = None
    forwards: int = 0
    tokens: int = 0
    padded: int = 0  # positions with attention_mask 0 or label -100
    pad_id_tokens: int = 0  # positions holding the pad id (here EOS, the document separator)
    pad_id: int | None = None
    losses: list[float] = field(default_factory=list)  # per-token mean loss of each forward

    @property
    def loop_s(self) -> float:
        return self.step_times[-1] - self.first_forward

    @property
    def median_step_s(self) -> float:
        """The median optimiser step: robust to bursts of other load on the machine."""
        return statistics.median(np.diff([self.first_forward, *self.step_times]))

    @property
    def cpu_share(self) -> float:
        """Process CPU seconds per loop second (2.0 = both cores all along; under other load
        it drops)."""
        return (self.last_cpu - self.first_cpu) / self.loop_s


@contextlib.contextmanager
def probing(pad_id: int):
    probe = Probe(pad_id=pad_id)
    forward = LlamaForCausalLM.forward

    def counted_forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if probe.first_forward is None:
            probe.first_cpu, probe.first_forward = time.process_time(), time.perf_counter()
        probe.forwards += 1
        probe.tokens += input_ids.numel()
        probe.pad_id_tokens += int((input_ids == probe.pad_id).sum())
        real = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None:
            real &= attention_mask.bool()
        if labels is not None:
            real &= labels != -100
        probe.padded += int((~real).sum())
        out = forward(self, input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                      **kwargs)
        # The Trainer passes num_items_in_batch (the whole accumulated batch's label count) and
        # gets sum / num_items back: rescaled here to this micro-batch's per-token mean.
        items = kwargs.get("num_items_in_batch")
        scale = float(items) / int(real[:, 1:].sum()) if items is not None else 1.0
        probe.losses.append(out.loss.item() * scale)
        return out

    def stepped(optimizer, args, kwargs):
        probe.step_times.append(time.perf_counter())
        probe.last_cpu = time.process_time()

    LlamaForCausalLM.forward = counted_forward
    handle = register_optimizer_step_post_hook(stepped)
    try:
        yield probe
    finally:
        handle.remove()
        LlamaForCausalLM.forward = forward


@dataclass
class Row:
    path: str
    round: int
    micro: int
    accum: int
    steps: int
    tokens: int
    padded: int
    loop_s: float
    median_step_s: float
    cpu_share: float
    wall_s: float
    runtime_s: float  # ours: record duration; Trainer: metrics["train_runtime"]
    final_loss: float  # per-token loss, mean over the forwards of the last 4 steps

    @property
    def tps(self) -> float:
        return self.tokens / self.loop_s

    @property
    def step_tps(self) -> float:
        """Tokens/s at the median step's pace."""
        return self.tokens / self.steps / self.median_step_s


# ---- the two trainers

# The Trainer as a user gets it by default, and in our run's precision and attention kernel.
OTHERS = ["Trainer", "Trainer/same"]

def train_cfg(root: Path, tokens: int, micro: int, runs: Path, attention: str):
    return compose("train", [f"paths.root={root}", f"paths.runs={runs}", *DEMO,
                             f"data.synthetic_tokens={tokens}",
                             f"trainer.micro_batch_size={micro}",
                             f"trainer.attention={attention}"])


def run_ours(cfg, run_dir: Path, round_: int, accum: int, pad_id: int) -> Row:
    """One `entigraph train` run in a fresh run folder (train() keeps its model and checkpoint
    in cfg.run_dir and resumes from a checkpoint found there, so every run gets its own)."""
    cfg = copy.deepcopy(cfg)
    cfg.run_dir = str(run_dir)
    record = RunRecord(run_dir, "train")
    # The Trainer runs in this process leave accelerate's process-wide state at their precision;
    # clear it as the Trainer itself does, so train() sets its own.
    AcceleratorState._reset_state()
    with probing(pad_id) as probe:
        t0 = time.perf_counter()
        training.train(cfg, record)
        wall = time.perf_counter() - t0
    record.finish()
    derived = record.data["derived"]
    assert not derived.get("resumed_from_step") and derived["steps"] == len(probe.step_times), \
        (derived, len(probe.step_times))
    return Row("ours", round_, cfg.trainer.micro_batch_size, accum, len(probe.step_times),
               probe.tokens, probe.padded, probe.loop_s, probe.median_step_s, probe.cpu_share,
               wall, record.data["duration_s"],
               statistics.fmean(probe.losses[-4 * accum:]))


class BlockDataset(torch.utils.data.Dataset):
    """Our packed blocks as causal-LM examples, read from the same index our loop reads (labels
    are the inputs: the model shifts them)."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        block = torch.from_numpy(self.data.batch([i], epoch=0)[0])  # one epoch, no replay
        return {"input_ids": block, "labels": block}


def ours_attention(cfg, model_default: str) -> str:
    """The attention kernel our run trains with (resolved as entigraph.training does)."""
    return training.resolve_attention(cfg.trainer.attention,
                                      training.resolve_precision(cfg.trainer.precision),
                                      cfg.data.block_size, model_default)


def run_trainer(cfg, out_dir: Path, round_: int, accum: int, pad_id: int, path: str) -> Row:
    """path: "Trainer" as a user gets it by default (fp32, the model's attention kernel),
    "Trainer/same" in our run's precision and attention kernel, "Trainer/fused" with
    optim=adamw_torch_fused."""
    tokenizer = load_tokenizer(cfg.model, cfg.data.corpus_dir)
    data = build_training_blocks(cfg.data, tokenizer, Path(cfg.paths.root) / "tokens", cfg.seed,
                                 cfg.trainer.epochs)
    model = load_model(cfg.model, tokenizer, cfg.data.block_size, cfg.seed)
    same = path == "Trainer/same"
    if same:
        model.set_attn_implementation(ours_attention(cfg, model.config._attn_implementation))
    args = transformers.TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.trainer.micro_batch_size,
        gradient_accumulation_steps=accum, num_train_epochs=cfg.trainer.epochs,
        learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1, adam_beta2=cfg.optim.beta2,
        warmup_steps=cfg.optim.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=cfg.optim.schedule, max_grad_norm=cfg.optim.grad_clip,
        optim="adamw_torch_fused" if path == "Trainer/fused" else "adamw_torch",
        bf16=same and training.resolve_precision(cfg.trainer.precision) == "bf16",
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[],
        disable_tqdm=False, use_cpu=True, seed=cfg.seed, dataloader_num_workers=0,
        dataloader_pin_memory=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=BlockDataset(data),
                                   data_collator=transformers.default_data_collator)
    with probing(pad_id) as probe, contextlib.redirect_stdout(io.StringIO()):  # its final log
        t0 = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - t0
    return Row(path, round_,
               cfg.trainer.micro_batch_size, accum, len(probe.step_times), probe.tokens,
               probe.padded, probe.loop_s, probe.median_step_s, probe.cpu_share, wall,
               output.metrics["train_runtime"],
               statistics.fmean(probe.losses[-4 * accum:]))


# ---- padding, checked on the data

def check_blocks(cfg) -> dict:
    """Our blocks are the selected token stream cut into full block_size pieces: no padding."""
    tokenizer = load_tokenizer(cfg.model, cfg.data.corpus_dir)
    cache = Path(cfg.paths.root) / "tokens"
    data = build_training_blocks(cfg.data, tokenizer, cache, cfg.seed, cfg.trainer.epochs)
    bs = cfg.data.block_size
    syn = synthetic_tokens(cfg.data, tokenizer, cache)
    spans = select_budget(syn.offsets, cfg.data.synthetic_tokens, cfg.seed)
    stream = np.concatenate([syn.tokens[a:b] for a, b in spans])  # copied here, to compare
    n = len(data)
    blocks = data.batch(np.arange(n), epoch=0)
    assert blocks.shape == (n, bs) and not data.epoch(0)[1].any()
    assert np.array_equal(blocks.ravel(), np.asarray(stream[: n * bs], dtype=np.int64)), \
        "blocks are not the token stream cut into pieces"
    eos = int((blocks == tokenizer.eos_token_id).sum())
    return {"blocks": n, "block_size": bs, "tokens": n * bs, "stream_tokens": len(stream),
            "pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id,
            "eos_separators": eos, "padding": 0}


# ---- report

def print_table(rows: list[Row]) -> None:
    header = (f"{'path':<10}{'round':>6}{'micro':>6}{'accum':>6}{'steps':>6}{'tokens':>7}"
              f"{'padded':>7}{'loop_s':>8}{'tok/s':>8}{'step_ms':>8}{'step_tok/s':>11}{'cpu':>6}"
              f"{'runtime_s':>10}{'wall_s':>8}{'loss':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.path:<10}{r.round:>6}{r.micro:>6}{r.accum:>6}{r.steps:>6}{r.tokens:>7}"
              f"{r.padded:>7}{r.loop_s:>8.2f}{r.tps:>8.0f}{1000 * r.median_step_s:>8.0f}"
              f"{r.step_tps:>11.0f}{r.cpu_share:>6.2f}{r.runtime_s:>10.2f}{r.wall_s:>8.2f}"
              f"{r.final_loss:>7.3f}")


def median_of(rows: list[Row], path: str, micro: int, rate: str = "tps") -> float:
    return statistics.median(getattr(r, rate) for r in rows
                             if r.path == path and r.micro == micro and r.round > 0)


def paired_ratios(rows: list[Row], micro: int, other: str = "Trainer",
                  rate: str = "tps") -> list[float]:
    """ours/other tokens/s within each measured round (neighbouring runs: drift cancels)."""
    by = {(r.path, r.round): r for r in rows if r.micro == micro and r.round > 0}
    return [getattr(by["ours", k], rate) / getattr(by[other, k], rate) for (p, k) in by
            if p == "ours" and (other, k) in by]


def profile_ours(cfg, runs: Path, pad_id: int) -> None:
    """Where one run of ours spends its time: Python (cProfile), then torch operators."""
    from torch.profiler import ProfilerActivity, profile

    profiler = cProfile.Profile()
    profiler.enable()
    run_ours(cfg, runs / "profiled-cprofile", -1, 1, pad_id)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
    print(out.getvalue())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ours(cfg, runs / "profiled-torch", -1, 1, pad_id)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536,
                        help="data.synthetic_tokens (65536 = 512 blocks = 32 full batches of 16)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds at micro 16")
    parser.add_argument("--accum", type=int, default=2,
                        help="also run micro 16/accum with accumulation (0: skip)")
    parser.add_argument("--accum-repeats", type=int, default=2)
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "eager"],
                        help="trainer.attention for ours (Trainer/same uses the kernel it "
                             "resolves to)")
    parser.add_argument("--fused", action="store_true",
                        help="also run the Trainer with its default optimiser (adamw_torch_fused)")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of ours")
    args = parser.parse_args()

    rows: list[Row] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp) / "root"
        with contextlib.redirect_stdout(io.StringIO()):
            commands.generate(compose("generate", [f"paths.root={root}",
                                                   "tracker.mode=disabled"]))
        cfg16 = train_cfg(root, args.tokens, 16, Path(tmp) / "runs", args.attention)
        blocks = check_blocks(cfg16)
        pad_id = blocks["pad_id"]
        n = 0

        def ours(cfg, round_, accum):
            nonlocal n
            n += 1
            rows.append(run_ours(cfg, Path(tmp) / "runs" / f"ours-{n}", round_, accum, pad_id))

        def theirs(cfg, round_, accum, path):
            nonlocal n
            n += 1
            rows.append(run_trainer(cfg, Path(tmp) / f"trainer-{n}", round_, accum, pad_id,
                                    path))

        def round_of(cfg, k, accum, paths):
            """ours and each Trainer variant once, in reversed order every other round."""
            runs = [lambda: ours(cfg, k, accum)] + [lambda p=p: theirs(cfg, k, accum, p)
                                                    for p in paths]
            for run in (runs if k % 2 else runs[::-1]):
                run()

        paths = OTHERS + (["Trainer/fused"] if args.fused else [])
        round_of(cfg16, 0, 1, paths)  # round 0: warm-up (one-off lazy initialisation), not counted
        for k in range(1, args.repeats + 1):
            round_of(cfg16, k, 1, paths)
        if args.accum:
            micro = 16 // args.accum
            cfg_acc = train_cfg(root, args.tokens, micro, Path(tmp) / "runs", args.attention)
            for k in range(1, args.accum_repeats + 1):
                round_of(cfg_acc, k, args.accum, OTHERS)
        if args.profile:
            profile_ours(cfg16, Path(tmp) / "runs", pad_id)

    total = time.perf_counter() - t_start
    print()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads; demo tiny Llama, block {blocks['block_size']}, "
          f"batch 16, 1 epoch on {args.tokens} synthetic tokens; round 0 is a warm-up")
    print(f"ours: trainer.precision={cfg16.trainer.precision} (here "
          f"{training.resolve_precision(cfg16.trainer.precision)}), trainer.attention="
          f"{args.attention} (here {ours_attention(cfg16, 'its own')}); Trainer: its defaults (fp32, the model's attention kernel); "
          f"Trainer/same: bf16=ours, ours' attention kernel")
    print(f"blocks: {blocks['blocks']} x {blocks['block_size']} = {blocks['tokens']} tokens, "
          f"exactly the selected stream of {blocks['stream_tokens']} tokens cut into pieces; "
          f"{blocks['eos_separators']} of them are EOS document separators (EOS = pad id "
          f"{blocks['pad_id']}, real tokens, trained on); padding positions: 0")
    print("loop_s: first forward -> end of the last optimiser step (same probes for both); "
          "tok/s = tokens / loop_s;\nstep_ms: median optimiser step, step_tok/s at its pace; "
          "cpu: process CPU s per loop s (2.00 = both cores, lower = other load);\nruntime_s: "
          "ours = record duration (whole train(): setup, loop, checkpoint, save), Trainer = its "
          "train_runtime; wall_s: around the call;\nloss: per-token loss over the last 4 steps "
          "(the data orders differ: ours is seeded per epoch, the Trainer's sampler)")
    print_table(rows)
    measured = [r for r in rows if r.round > 0]
    shares = {path: sum(r.padded for r in measured if r.path == path)
              / sum(r.tokens for r in measured if r.path == path)
              for path in dict.fromkeys(r.path for r in measured)}
    print()
    print("padding share of the tokens fed: "
          + ", ".join(f"{path} {share:.4f}" for path, share in shares.items()))
    for micro in sorted({r.micro for r in measured}, reverse=True):
        for other in paths:
            if not any(r.path == other and r.micro == micro for r in measured):
                continue
            for rate, name in (("tps", "loop tok/s"), ("step_tps", "median-step tok/s")):
                o, t = median_of(rows, "ours", micro, rate), median_of(rows, other, micro, rate)
                ratios = paired_ratios(rows, micro, other, rate)
                print(f"micro {micro:>2} {name:<17}: ours {o:>6.0f}, {other} {t:>6.0f}; "
                      f"ours/{other}: median of rounds {statistics.median(ratios):.3f} "
                      f"(rounds {', '.join(f'{x:.3f}' for x in ratios)}; ratio of medians "
                      f"{o / t:.3f})")
    print(f"total benchmark time {total:.0f} s")
    speedup = statistics.median(paired_ratios(rows, 16))
    same = statistics.median(paired_ratios(rows, 16, "Trainer/same"))
    print(f"RESULT speedup_vs_trainer={speedup:.3f} padding_share={shares['ours']:.4f} "
          f"speedup_same_precision={same:.3f}")


if __name__ == "__main__":
    main()
