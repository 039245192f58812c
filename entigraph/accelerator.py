"""The accelerate side of a training run's processes: the Accelerator (data parallel or FSDP,
on GPUs or, for tests, on CPU processes over gloo), the optimizer state a sharded checkpoint
loads into, and the whole state dict of a possibly sharded model for the final save."""
from __future__ import annotations

import os


def make_accelerator(precision: str):
    """The run's Accelerator. The first accelerate object made sets up the processes: on a
    machine without an accelerator, cpu=True is what makes a torchrun launch one gloo group of
    N processes (not N lone runs). bf16 is autocast: weights, gradients and optimizer state
    stay fp32.

    Under FSDP (an accelerate config with distributed_type FSDP), checkpoints are always sharded
    (each process writes its own shard of the model and optimizer, nothing is gathered to rank
    0), whatever the config's fsdp_state_dict_type; the final model is gathered whole
    (full_state_dict). Without an accelerator, accelerate makes an FSDP launch a gloo group of
    plain data-parallel (DDP) processes (it picks FSDP on GPU-like devices only,
    AcceleratorState.__init__); torch's FSDP runs on CPU over gloo, so FSDP is set here."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    cpu = not torch.accelerator.is_available()
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if cpu and fsdp:
        # Syncing module states needs a GPU-like device (the plugin raises without one); every
        # process builds the same model from the same seed or files, so there is nothing to sync.
        os.environ["FSDP_SYNC_MODULE_STATES"] = "false"
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    mixed_precision = "bf16" if precision == "bf16" else "no"
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    state = accelerator.state
    if fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # In the process-wide state too, as accelerate does, or a later AcceleratorState() would
        # copy MULTI_CPU back. The device is "cpu", not cpu:<rank>, which FSDP takes for another.
        for shared in (PartialState(), state):
            shared.distributed_type, shared.device = DistributedType.FSDP, torch.device("cpu")
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
        if mixed_precision != "no":  # as accelerate does on a GPU
            state.fsdp_plugin.set_mixed_precision(mixed_precision)
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        plugin.state_dict_config = plugin.optim_state_dict_config = None
        plugin.set_state_dict_type("SHARDED_STATE_DICT")
    return accelerator


def make_optimizer_state(optimizer) -> None:
    """AdamW makes its state (moments, step count) at its first step. accelerate loads a sharded
    FSDP1 checkpoint's optimizer state into the keys the optimizer already has (DCP fills a
    template, FSDP.optim_state_dict), so into a fresh optimizer it loads none: the run would
    resume with its moments reset, silently. A step with zero gradients at lr 0 makes the state,
    changing no weight; the checkpoint's values then replace it (as FSDP2's loading does, through
    torch's get_optimizer_state_dict)."""
    import torch

    if optimizer.state:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    lrs = [group["lr"] for group in optimizer.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def full_state_dict(accelerator, model) -> dict:
    """The model's whole state dict (on the main process; gathered under FSDP). On a CPU, FSDP1's
    gather with offload_to_cpu, which accelerate's get_state_dict asks for, segfaults: the
    offload is a no-op there, then the gathered parameters are freed before they are copied
    (torch FlatParamHandle.to_cpu). Without an accelerator there is nothing to offload from."""
    from accelerate.utils import DistributedType

    if (accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2
            and accelerator.device.type == "cpu"):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        gathered = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, gathered):
            return model.state_dict()
    return accelerator.get_state_dict(model)
