"""One sweep point: trained by `entigraph train`'s own rules (a completed run of the same config
is skipped, a failed or interrupted one retried from its checkpoint; entigraph/run_identity.py)
and always left with a record saying how it ended."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from entigraph.records import CONFIG, RunRecord, read_record, write_atomic


def run_point(cfg: DictConfig, on_eval: Optional[Callable[[int, float], None]] = None) -> dict:
    """Train and evaluate one point unless already completed; return its record, with
    `skipped: True` when nothing was run. Exceptions propagate after the record says failed."""
    from entigraph.commands import train

    if cfg.trainer.dry_run:  # a plan, printed: no run folder to record anything in
        return train(cfg)
    before = read_record(cfg.run_dir)
    try:
        return train(cfg, on_eval=on_eval)
    except BaseException as err:
        # Failed before the run opened its record: say so there, unless the folder holds a
        # completed run (of another config: never overwritten).
        if read_record(cfg.run_dir) == before and (before or {}).get("status") != "completed":
            record_failure(cfg, err)
        raise


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """A failed record for a point that failed before training opened its folder."""
    write_atomic(Path(cfg.run_dir) / CONFIG,
                 yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True), sort_keys=False))
    RunRecord(cfg.run_dir, "train").finish(err)
