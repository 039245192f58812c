"""One training run as N processes (trainer.launch.processes): the calling process, whether
`entigraph train`, a grid job, an Optuna trial or a W&B agent run, starts `accelerate launch`
on this node and waits for it; each launched process runs `python -m entigraph.launch <spec>`.

The spec (a pickle in a private temporary folder) holds the run's resolved config and the
callback that reads its evaluations during training (an Optuna trial's pruner), so a launched
run is the run the caller composed. Its processes die with the caller (a killed sweep job leaves
no orphan training), and the run's own record says how it ended.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from entigraph.errors import ConfigError, EntigraphError
from entigraph.records import read_record
from entigraph.run_identity import LOCK_HELD

PR_SET_PDEATHSIG = 1  # Linux prctl: the signal a process gets when its parent dies
ACCELERATE = "--accelerate"  # `python -m entigraph.launch --accelerate ...`: the launcher


def launches(cfg: DictConfig) -> bool:
    """Whether this process must start the run's processes: more than one is asked for and this
    is not already one of a launched group (torchrun and accelerate set WORLD_SIZE)."""
    return cfg.trainer.launch.processes > 1 and "WORLD_SIZE" not in os.environ


def accelerate_arguments(launch) -> list[str]:
    """`accelerate launch` options for trainer.launch: one node, a free port, N processes."""
    common = ["--num_processes", str(launch.processes), "--num_machines", "1",
              "--main_process_port", "0"]
    if launch.accelerate_config:
        return ["--config_file", str(launch.accelerate_config), *common]
    # Data parallel; precision is the run's own (trainer.precision, set on its Accelerator).
    return ["--multi_gpu", *common, "--mixed_precision", "no", "--dynamo_backend", "no"]


def accelerate_launch(arguments: list[str]) -> None:
    """`accelerate launch <arguments>` in this process, which gets SIGTERM when the process
    that started it dies (Linux; the launcher then stops its workers). Set here, after exec,
    not in a preexec_fn: forking a process with threads (an Optuna heartbeat) and running code
    before exec can deadlock."""
    from accelerate.commands.launch import main as launch_main

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the launcher's own signal handling only
        pass
    sys.argv = ["accelerate launch", *arguments]
    launch_main()


def check_devices(launch) -> None:
    """More processes than the node's GPUs would share GPUs or fail to start: refused here,
    where the job runs (a login node submitting a SLURM grid has none to count)."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus and launch.processes > gpus:
        raise ConfigError(f"config: trainer.launch.processes={launch.processes} but this node has "
                          f"{gpus} GPUs; set trainer.launch.processes to {gpus} or fewer")


def train_launched(cfg: DictConfig, on_eval: Optional[Callable[[int, float], None]]) -> dict:
    """Run `cfg` as trainer.launch.processes processes; its record once they have ended (a
    pruned run's too: status "pruned"). A failure raises with the run's error."""
    launch = cfg.trainer.launch
    check_devices(launch)
    with tempfile.TemporaryDirectory(prefix="entigraph-launch-") as folder:
        spec = Path(folder) / "run.pkl"
        spec.write_bytes(pickle.dumps({"config": OmegaConf.to_container(cfg, resolve=True),
                                       "on_eval": on_eval}))
        command = [sys.executable, "-m", "entigraph.launch", ACCELERATE,
                   *accelerate_arguments(launch), "-m", "entigraph.launch", str(spec)]
        print(f"{cfg.run_dir}: training on {launch.processes} processes", flush=True)
        held = {**os.environ, LOCK_HELD: str(Path(cfg.run_dir).resolve())}  # by this process
        code = subprocess.run(command, env=held).returncode
    record = read_record(cfg.run_dir) or {}
    if code == 0 and record.get("status") in ("completed", "pruned"):
        return record
    reason = record.get("error") or f"its processes exited with status {code}"
    raise EntigraphError(f"{cfg.run_dir}: the run on {launch.processes} processes failed: "
                         f"{reason}".splitlines()[0])


def main(spec_path: str) -> None:
    """One launched process: train the spec's run. A pruned run ends with status 0 on every
    rank (the pruner's decision is every rank's); bad input is one line and status 2."""
    from entigraph import commands
    from entigraph.config import RunConfig, validate

    spec = pickle.loads(Path(spec_path).read_bytes())
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), spec["config"])
    try:
        validate(cfg)
        commands.train(cfg, on_eval=spec["on_eval"])
    except EntigraphError as err:
        print(f"entigraph train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if type(err).__name__ != "TrialPruned":  # recorded as pruned in the run's record
            raise


if __name__ == "__main__":
    if sys.argv[1] == ACCELERATE:
        accelerate_launch(sys.argv[2:])
    else:
        main(sys.argv[1])
