"""trainer.dry_run: what a training run will take, from its config alone (no tokenising, no model
weights, nothing allocated), so a grid of 8B runs can be costed before it is queued.

Blocks are the budget's tokens over the block size (the real count frames documents with BOS
and EOS and drops each stream's tail, so it differs by well under 1%); replay adds blocks by
the run's mixing rule; steps, tokens and checkpoints follow as training counts them. Time is
the tokens over a throughput: trainer.estimate.tokens_per_s per device when measured, else
6 FLOPs per parameter per token at trainer.estimate.mfu of the GPU type's peak.
"""
from __future__ import annotations

import math

from entigraph.config import PEAK_FLOPS
from entigraph.errors import ConfigError
from entigraph.models import count_parameters
from entigraph.corpus_folder import read_manifest
from entigraph.token_data import replay_block_count


def budget_tokens(cfg) -> int:
    """data.synthetic_tokens, or the whole corpus as its manifest counts it."""
    if cfg.data.synthetic_tokens:
        return cfg.data.synthetic_tokens
    manifest = read_manifest(cfg.data.corpus_dir)
    if not manifest:
        raise ConfigError(f"config: data.synthetic_tokens=null takes the whole corpus, and "
                          f"{cfg.data.corpus_dir} holds none yet; set data.synthetic_tokens or "
                          f"generate the corpus first")
    return manifest["totals"]["synthetic_tokens"]


def plan(cfg) -> dict:
    """The run's steps, tokens, checkpoints, time and GPU-hours."""
    data, trainer, estimate = cfg.data, cfg.trainer, cfg.trainer.estimate
    synthetic_blocks = budget_tokens(cfg) // data.block_size
    replace = data.mixing_mode == "replace" and data.mixing_ratio > 0
    rows = synthetic_blocks + (0 if replace else replay_block_count(synthetic_blocks,
                                                                     data.mixing_ratio))
    steps = math.ceil(rows / trainer.batch_size) * trainer.epochs
    tokens = rows * trainer.epochs * data.block_size
    parameters = count_parameters(cfg.model, data.block_size)
    devices = trainer.launch.processes
    per_device = estimate.tokens_per_s or (
        estimate.mfu * PEAK_FLOPS[estimate.gpu] / (6 * parameters))
    hours = tokens / (per_device * devices) / 3600
    by_steps = math.ceil(steps / trainer.checkpoint_every) if trainer.checkpoint_every else 0
    by_clock = (math.floor(60 * hours / trainer.checkpoint_minutes)
                if trainer.checkpoint_minutes else 0)
    return {"status": "dry_run", "run_dir": cfg.run_dir, "synthetic_blocks": synthetic_blocks,
            "steps": steps, "tokens": tokens, "parameters": parameters, "devices": devices,
            "tokens_per_s_per_device": per_device,
            "throughput_from": ("trainer.estimate.tokens_per_s" if estimate.tokens_per_s
                                else f"mfu {estimate.mfu} of {estimate.gpu} peak"),
            # Whichever comes first saves, and the last step always does.
            "checkpoints": by_steps + by_clock + (1 if by_clock and not by_steps else 0)
            + (1 if trainer.checkpoint_minutes and not (by_steps or by_clock) else 0),
            "hours": hours, "gpu_hours": hours * devices}


def describe(plan_: dict) -> str:
    return (f"{plan_['run_dir']}: {plan_['steps']:,} steps, {plan_['tokens']:,} tokens "
            f"({plan_['synthetic_blocks']:,} synthetic blocks), {plan_['parameters']:,} "
            f"parameters on {plan_['devices']} devices at {plan_['tokens_per_s_per_device']:,.0f} "
            f"tokens/s each ({plan_['throughput_from']}): {plan_['hours']:,.2f} h, "
            f"{plan_['gpu_hours']:,.1f} GPU-hours, ~{plan_['checkpoints']} checkpoints")


def total(results: list) -> str | None:
    """The line summing a grid's dry runs (None when none of `results` is one)."""
    plans = [r for r in results if isinstance(r, dict) and r.get("status") == "dry_run"]
    if not plans:
        return None
    return (f"dry run: {len(plans)} runs, {sum(p['steps'] for p in plans):,} steps, "
            f"{sum(p['tokens'] for p in plans):,} tokens, "
            f"{sum(p['gpu_hours'] for p in plans):,.1f} GPU-hours in all")
