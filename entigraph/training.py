"""Continued pretraining of a causal LM with accelerate on a run's training blocks."""
from __future__ import annotations

import math
from pathlib import Path

from tqdm.auto import tqdm

from entigraph.errors import ConfigError
from entigraph.models import load_model, load_tokenizer
from entigraph.records import RunRecord
from entigraph.train_data import build_training_blocks


def gradient_accumulation(trainer_cfg, num_processes: int) -> int:
    """Micro-batches accumulated per step so each step sees trainer.batch_size sequences."""
    per_step = trainer_cfg.micro_batch_size * num_processes
    if trainer_cfg.batch_size % per_step:
        raise ConfigError(f"config: trainer.batch_size={trainer_cfg.batch_size} is not a multiple of "
                          f"trainer.micro_batch_size x devices = {per_step}; change either")
    return trainer_cfg.batch_size // per_step


def _param_groups(model, weight_decay: float):
    """No weight decay on biases and norm weights, as is usual for AdamW on transformers."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def train(cfg, record: RunRecord):
    """Train per `cfg` (a validated RunConfig); save to <run_dir>/model; return (model, tokenizer)."""
    import torch
    from accelerate import Accelerator, PartialState
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import get_scheduler

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    accum = gradient_accumulation(cfg.trainer, PartialState().num_processes)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no",
                              gradient_accumulation_steps=accum)
    tokenizer = load_tokenizer(cfg.model, cfg.data.corpus_dir)
    with accelerator.main_process_first():
        data = build_training_blocks(cfg.data, tokenizer, Path(cfg.paths.root) / "tokens",
                                     cfg.seed, cfg.trainer.epochs)
    model = load_model(cfg.model, tokenizer, cfg.data.block_size, cfg.seed)
    loader = DataLoader(TensorDataset(torch.from_numpy(data.blocks), torch.from_numpy(data.is_replay)),
                        batch_size=cfg.trainer.micro_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / accum)
    total_steps = steps_per_epoch * cfg.trainer.epochs
    scheduler = get_scheduler(cfg.optim.schedule, optimizer,
                              num_warmup_steps=math.ceil(cfg.optim.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    record.set_derived(**data.derived, steps=total_steps, steps_per_epoch=steps_per_epoch,
                       gradient_accumulation=accum, devices=accelerator.num_processes,
                       global_batch_tokens=cfg.trainer.batch_size * cfg.data.block_size)

    model.train()
    step, seen = 0, {"synthetic": 0, "replay": 0}
    bar = tqdm(total=total_steps, desc="training", unit="step",
               disable=not accelerator.is_local_main_process)
    for _ in range(cfg.trainer.epochs):
        for blocks, is_replay in loader:
            with accelerator.accumulate(model):
                loss = model(input_ids=blocks, labels=blocks).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            n_replay = int(accelerator.gather(is_replay).sum())
            n_blocks = blocks.shape[0] * accelerator.num_processes
            seen["replay"] += n_replay * cfg.data.block_size
            seen["synthetic"] += (n_blocks - n_replay) * cfg.data.block_size
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.trainer.log_every == 0 or step == total_steps:
                record.log(step, loss=loss.item(), lr=scheduler.get_last_lr()[0],
                           tokens_seen_synthetic=seen["synthetic"], tokens_seen_replay=seen["replay"])
    bar.close()
    model = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        model.save_pretrained(Path(cfg.run_dir) / "model")
        tokenizer.save_pretrained(Path(cfg.run_dir) / "model")
    record.set_metrics(train_loss=loss.item())
    return model, tokenizer
