"""One sweep point: skipped when its folder already holds a completed run of the same resolved
config, trained otherwise (a failed or interrupted run is retried, resuming from its checkpoint),
and always left with a record saying how it ended."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from entigraph.errors import ConfigError
from entigraph.records import CONFIG, RunRecord, read_record, write_atomic

# Keys that name or launch a run but do not change what it computes.
NOT_THE_RUN = ("command", "sweep", "tracker", "run_dir")


def run_key(config: dict) -> dict:
    """The part of a resolved config that identifies a run's result."""
    return {k: v for k, v in config.items() if k not in NOT_THE_RUN}


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".")


def completed_record(cfg: DictConfig) -> Optional[dict]:
    """The record of a completed run of this very config in cfg.run_dir, else None. A completed
    run of another config there is refused: silently reusing or overwriting it would be wrong."""
    record = read_record(cfg.run_dir)
    if not record or record["status"] != "completed":
        return None
    saved = yaml.safe_load((Path(cfg.run_dir) / CONFIG).read_text())
    wanted = run_key(OmegaConf.to_container(cfg, resolve=True))
    if run_key(saved) != wanted:
        key = _first_difference(run_key(saved), wanted)
        raise ConfigError(f"{cfg.run_dir} holds a completed run of another config (it differs at "
                          f"{key}); remove that folder or set run_name to a new name")
    return record


def run_point(cfg: DictConfig, on_eval: Optional[Callable[[int, float], None]] = None) -> dict:
    """Train and evaluate one point unless already completed; return its record, with
    `skipped: True` when nothing was run. Exceptions propagate after the record says failed."""
    from entigraph.commands import train

    previous = completed_record(cfg)
    if previous:
        print(f"{cfg.run_dir}: already completed; skipping")
        return {**previous, "skipped": True}
    before = read_record(cfg.run_dir)
    try:
        return train(cfg, on_eval=on_eval)
    except BaseException as err:
        if read_record(cfg.run_dir) == before:  # failed before the run opened its record
            record_failure(cfg, err)
        raise


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """A failed record for a point that failed before training opened its folder."""
    write_atomic(Path(cfg.run_dir) / CONFIG,
                 yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True), sort_keys=False))
    RunRecord(cfg.run_dir, "train").finish(err)
