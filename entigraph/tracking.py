"""W&B as a mirror of the run record: config, group, tags, job type, curves and summary.

Mode `auto` runs online only when an API key is in the environment and offline otherwise, so
wandb never stops to ask for a login. Keys live only in the environment; the config we send is
the resolved run config, which by construction holds environment variable *names*, not values.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """A started W&B run; the record calls it, nothing else does."""

    def __init__(self, run):
        self.run = run

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import wandb

        # Every row's keys: rag's rows carry the chunks retrieved, mc's and cot's do not.
        columns = list(dict.fromkeys(key for row in rows for key in row))
        self.run.log({name: wandb.Table(columns=columns,
                                        data=[[row.get(c) for c in columns] for row in rows])})

    def finish(self, outcome: str) -> None:
        """End this attempt's part of the W&B run; an interrupted one is marked preempting, so
        W&B shows it as preempted (and a W&B sweep requeues it), not failed."""
        if outcome == "interrupted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if outcome in ("completed", "pruned") else 1)


def run_tags(tracker_cfg, config: dict) -> list[str]:
    """tracker.tags, then the run's method and experiment preset, to filter runs by in W&B."""
    tags = list(tracker_cfg.tags)
    if method := (config.get("synthesis") or {}).get("method"):
        tags.append(f"method:{method}")
    if preset := config.get("preset"):
        tags.append(f"preset:{preset}")
    return list(dict.fromkeys(tags))


def start_tracker(tracker_cfg, config: dict, run_dir: Path, job_type: str,
                  run_id: str | None = None) -> Tracker | None:
    """Start (or, given an earlier attempt's `run_id`, resume) the W&B run of `run_dir`; None
    when tracking is disabled."""
    mode = resolve_mode(tracker_cfg.mode)
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(
        id=run_id,  # None: W&B makes one, kept in the record for the next attempt
        resume="allow" if run_id else None,
        project=tracker_cfg.project,
        entity=tracker_cfg.entity,
        group=tracker_cfg.group,
        tags=run_tags(tracker_cfg, config),
        job_type=job_type,
        name=config.get("run_name") or Path(run_dir).name,
        dir=str(run_dir),
        config=config,
        mode=mode,
        reinit="create_new",
        settings=wandb.Settings(console="off", disable_git=True, x_disable_stats=True,
                                silent=True),
    )
    return Tracker(run)
