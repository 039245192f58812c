"""Continued pretraining of a causal LM with accelerate on a run's training blocks.

The data order, and which blocks replace-mode mixing swaps for replay blocks, are a function of
(seed, epoch) alone, so a run killed at any point resumes from its last checkpoint
(<run_dir>/checkpoint: accelerate's model, optimizer, scheduler and RNG state, plus our step
counter) on exactly the batches it would have seen, and ends as an uninterrupted run does. The
last checkpoint is taken at the final step, so a run killed while evaluating does not train
again; the run's command removes it once the run has completed.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from entigraph.accelerator import full_state_dict, make_accelerator, make_optimizer_state
from entigraph.config import PEAK_FLOPS
from entigraph.errors import ConfigError
from entigraph.models import load_model, load_tokenizer
from entigraph.records import RunRecord, write_json_atomic
from entigraph.train_data import build_training_blocks

CHECKPOINT = "checkpoint"
IGNORE_INDEX = -100  # labels the loss leaves out (transformers' convention)
# Keys that change what a checkpoint means; logging and checkpoint cadence do not.
# Precision and attention kernel too: a run resumed with others would not end as it would have.
RESUME_KEYS = ("seed", "data", "model", "optim", "trainer.epochs", "trainer.batch_size",
               "trainer.precision", "trainer.attention", "synthesis.output_dir")
# The rules that turn a config into blocks (2: BOS+EOS framing, replay re-drawn per read): a
# checkpoint made under other rules would resume on other blocks, so it is refused.
DATA_RULES = 2


def gradient_accumulation(trainer_cfg, num_processes: int) -> int:
    """Micro-batches accumulated per step so each step sees trainer.batch_size sequences."""
    per_step = trainer_cfg.micro_batch_size * num_processes
    if trainer_cfg.batch_size % per_step:
        raise ConfigError(f"config: trainer.batch_size={trainer_cfg.batch_size} is not a multiple of "
                          f"trainer.micro_batch_size x devices = {per_step}; change either")
    return trainer_cfg.batch_size // per_step


def resolve_precision(precision: str) -> str:
    """trainer.precision as "bf16" or "fp32": auto is bf16 where the hardware computes it
    natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX-BF16, where bf16 matrix
    multiplies run faster than fp32 ones; elsewhere torch would emulate them, slower)."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    capabilities = torch.cpu.get_capabilities()
    return "bf16" if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16") else "fp32"


# Longest block for which eager attention beats sdpa when training in bf16 on a CPU (measured on
# the tiny model: 31% faster at 128 tokens, 14% at 512, half as fast at 1024; README).
EAGER_MAX_BLOCK_CPU = 512


def resolve_attention(attention: str, precision: str, block_size: int, model_default: str) -> str:
    """trainer.attention as a kernel name: auto is eager for short blocks in bf16 on a CPU,
    else the model's own (sdpa)."""
    import torch

    if attention != "auto":
        return attention
    cpu_bf16 = precision == "bf16" and not torch.cuda.is_available()
    return "eager" if cpu_bf16 and block_size <= EAGER_MAX_BLOCK_CPU else model_default


def _param_groups(model, weight_decay: float):
    """No weight decay on biases and norm weights, as is usual for AdamW on transformers."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def epoch_order(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_blocks)


def rank_passes(batch: np.ndarray, rank: int, world: int,
                micro: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's share of a global batch as micro-batches (rows, real). Every rank makes the
    same number of forward/backward passes whatever the batch's size, so the collectives of DDP
    and FSDP pair up: a rank short of rows (a partial last batch) pads with the batch's first
    row, `real` False, whose tokens the loss ignores."""
    per_rank = -(-len(batch) // world)
    mine = batch[rank::world]
    rows = np.concatenate([mine, np.full(per_rank - len(mine), batch[0])])
    real = np.arange(per_rank) < len(mine)
    return [(rows[i:i + micro], real[i:i + micro]) for i in range(0, per_rank, micro)]


def resume_fingerprint(cfg) -> dict:
    return {**{key: OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)
               if OmegaConf.is_config(OmegaConf.select(cfg, key)) else OmegaConf.select(cfg, key)
               for key in RESUME_KEYS}, "data_rules": DATA_RULES}


def _check_resumable(state: dict, cfg, checkpoint: Path) -> None:
    now = resume_fingerprint(cfg)
    changed = [key for key in now if state["fingerprint"].get(key) != now[key]]
    if changed:
        what = ", ".join(changed).replace("data_rules", "data rules (an older entigraph's)")
        raise ConfigError(f"config: the checkpoint in {checkpoint} was made with different "
                          f"{what}; restore those values, or delete the checkpoint "
                          f"or choose another run_dir to start afresh")


def _save_checkpoint(accelerator, run_dir: Path, step: int, seen: dict, loss: float, cfg) -> None:
    """Write to a temporary folder, then swap it in: a kill leaves the old checkpoint whole."""
    final, tmp = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Every rank writes into tmp (its RNG state, its FSDP shard) and save_state does not wait
    # for the others: tmp is swapped in only once all have written.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer_state.json",
                          {"step": step, "seen": seen, "loss": loss,
                           "fingerprint": resume_fingerprint(cfg)})
        old = run_dir / f"{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def remove_checkpoint(run_dir: Path) -> None:
    """Once a run has completed (its model saved), been pruned or failed for good, its
    checkpoint (~100 GB for an 8B model) has no use left."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old"):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def _checkpoint_due(accelerator, trainer_cfg, step: int, total_steps: int,
                    last_save: float) -> bool:
    """Whether this step saves: every trainer.checkpoint_every steps or checkpoint_minutes
    minutes (the main process's clock decides for all) and at the last step."""
    import torch

    every, minutes = trainer_cfg.checkpoint_every, trainer_cfg.checkpoint_minutes
    if not (every or minutes):
        return False
    if step == total_steps or (every and step % every == 0):
        return True
    if not minutes:
        return False
    due = float(accelerator.is_main_process and time.monotonic() - last_save >= 60 * minutes)
    return accelerator.reduce(torch.tensor(due, device=accelerator.device), "sum").item() > 0


def _mfu(tokens_per_s: float, n_params: int, devices: int) -> float | None:
    """Model FLOPs utilisation (6 FLOPs per parameter per token) where the GPU's peak is known."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return 6 * n_params * tokens_per_s / (peak * devices) if peak else None


def _probe_everywhere(probe: Callable, accelerator, model, tokenizer, step: int) -> None:
    """Every process runs the same evaluation, so a sharded (FSDP) model's forward passes, which
    gather parameters across processes, pair up; a replicated one is evaluated in each process's
    own copy. The main process reports; its outcome (a pruner stopping the run) is every
    process's, so all stop together."""
    from accelerate.utils import DistributedType, broadcast_object_list

    sharded = accelerator.distributed_type == DistributedType.FSDP
    stop = None
    try:
        probe(model if sharded else accelerator.unwrap_model(model), tokenizer, step,
              accelerator.is_main_process)
    except Exception as err:  # noqa: BLE001 - re-raised below, on every process
        stop = err
    if accelerator.num_processes > 1:
        main_stop = broadcast_object_list([stop])[0]
        stop = stop or main_stop
    if stop is not None:
        raise stop


def train(cfg, record: RunRecord, probe: Callable | None = None):
    """Train per `cfg` (a validated RunConfig); save to <run_dir>/model; return (model, tokenizer).

    probe(model, tokenizer, step, report), when given, runs every cfg.eval.every_steps steps in
    every process; the main process has report=True."""
    import torch
    from accelerate.utils import DistributedType
    from transformers import get_scheduler

    run_dir = Path(cfg.run_dir)
    precision = resolve_precision(cfg.trainer.precision)
    accelerator = make_accelerator(precision)
    accum = gradient_accumulation(cfg.trainer, accelerator.num_processes)
    checkpoint = run_dir / CHECKPOINT
    state = (json.loads((checkpoint / "trainer_state.json").read_text())
             if (checkpoint / "trainer_state.json").exists() else None)
    if state:
        _check_resumable(state, cfg, checkpoint)  # before any heavy work
    with accelerator.main_process_first():  # one process trains a tiny tokenizer, tokenises
        tokenizer = load_tokenizer(cfg.model, cfg.data.corpus_dir)
        data = build_training_blocks(cfg.data, tokenizer, Path(cfg.paths.root) / "tokens",
                                     cfg.seed, cfg.trainer.epochs)
    model = load_model(cfg.model, tokenizer, cfg.data.block_size, cfg.seed)
    model.config.use_cache = False  # no key/value cache is needed while training
    attention = model.config._attn_implementation  # restored for evaluation after training
    training_attention = resolve_attention(cfg.trainer.attention, precision,
                                           cfg.data.block_size, attention)
    model.set_attn_implementation(training_attention)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    steps_per_epoch = math.ceil(len(data) / cfg.trainer.batch_size)
    total_steps = steps_per_epoch * cfg.trainer.epochs
    scheduler = get_scheduler(cfg.optim.schedule, optimizer,
                              num_warmup_steps=math.ceil(cfg.optim.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    step, seen, loss_sum = 0, {"synthetic": 0, "replay": 0}, float("nan")
    if state:
        if accelerator.distributed_type == DistributedType.FSDP:
            make_optimizer_state(optimizer.optimizer)
        accelerator.load_state(str(checkpoint))
        step, seen, loss_sum = state["step"], state["seen"], state["loss"]
    record.resume_history(step)  # earlier attempts' curve up to where this one starts
    record.set_derived(**data.derived, steps=total_steps, steps_per_epoch=steps_per_epoch,
                       gradient_accumulation=accum, devices=accelerator.num_processes,
                       global_batch_tokens=cfg.trainer.batch_size * cfg.data.block_size,
                       parameters=n_params, parameter_dtype=str(next(model.parameters()).dtype),
                       precision=precision, attention=training_attention, resumed_from_step=step)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step",
               disable=not accelerator.is_local_main_process)
    rank, world, bs = accelerator.process_index, accelerator.num_processes, cfg.data.block_size
    interval_tokens, interval_start = 0, time.perf_counter()
    last_save = time.monotonic()
    order_epoch, order, is_replay = None, None, None
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(data), cfg.seed, epoch)
            is_replay = data.epoch(epoch)[1]  # this epoch's draws (replace-mode mixing)
        batch = order[in_epoch * cfg.trainer.batch_size:(in_epoch + 1) * cfg.trainer.batch_size]
        # The step's loss is the mean over the global batch's predicted tokens: each pass sums
        # its tokens' losses over that count, so the ranks' parts add up to the mean. DDP and
        # FSDP average gradients over the ranks, hence `* world` in backward.
        global_tokens = len(batch) * (bs - 1)
        passes = rank_passes(batch, rank, world, cfg.trainer.micro_batch_size)
        part = torch.zeros((), device=accelerator.device)
        for j, (rows, real) in enumerate(passes):
            # Gradients are synchronised across devices only on the last micro-batch.
            sync = nullcontext() if j == len(passes) - 1 else accelerator.no_sync(model)
            with sync:
                inputs = torch.from_numpy(data.batch(rows, epoch)).to(accelerator.device)
                padding = torch.from_numpy(~real).to(accelerator.device)[:, None]
                labels = inputs.masked_fill(padding, IGNORE_INDEX)
                loss = model(input_ids=inputs, labels=labels,
                             num_items_in_batch=global_tokens).loss
                accelerator.backward(loss * world)
            part += loss.detach()
        loss_sum = accelerator.reduce(part, "sum").item()  # the global loss, on every rank
        if cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        n_replay = int(is_replay[batch].sum())  # what this step actually read
        seen["replay"] += n_replay * bs
        seen["synthetic"] += (len(batch) - n_replay) * bs
        interval_tokens += len(batch) * bs
        bar.update()
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if step % cfg.trainer.log_every == 0 or step == total_steps:
            tokens_per_s = interval_tokens / (time.perf_counter() - interval_start)
            mfu = _mfu(tokens_per_s, n_params, world)
            record.log(step, loss=loss_sum, lr=scheduler.get_last_lr()[0],
                       tokens_seen_synthetic=seen["synthetic"], tokens_seen_replay=seen["replay"],
                       tokens_per_s=round(tokens_per_s, 1), **({"mfu": mfu} if mfu else {}))
            interval_tokens, interval_start = 0, time.perf_counter()
        # Before the checkpoint: a run killed while evaluating evaluates that step again.
        if probe and step % cfg.eval.every_steps == 0:
            _probe_everywhere(probe, accelerator, model, tokenizer, step)
            interval_start = time.perf_counter()  # throughput counts training time only
        if _checkpoint_due(accelerator, cfg.trainer, step, total_steps, last_save):
            _save_checkpoint(accelerator, run_dir, step, seen, loss_sum, cfg)
            last_save = time.monotonic()
    bar.close()
    accelerator.wait_for_everyone()
    # Evaluation after training sees the model as `entigraph eval` loads it from disk: without
    # the bf16 autocast wrapper and with the model's own attention kernel.
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    unwrapped.set_attn_implementation(attention)
    # The whole state dict, gathered from a sharded (FSDP) model; only the main process writes.
    unwrapped.save_pretrained(run_dir / "model", is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save,
                              state_dict=full_state_dict(accelerator, model))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(run_dir / "model")
    record.set_metrics(train_loss=loss_sum)
    return unwrapped, tokenizer
