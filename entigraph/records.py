"""One folder per run: the resolved config and a machine-readable `record.json`.

The record is ours, written atomically at every change and finalised even when the run fails;
W&B only mirrors it (see tracking.py), so analysis never depends on W&B being reachable.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

RECORD = "record.json"
CONFIG = "config.yaml"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` so a reader sees the old file or the new one, never a torn one."""
    write_lines_atomic(path, [text])


def write_lines_atomic(path: Path, chunks: Iterable[str]) -> None:
    """write_atomic for text made piece by piece (a corpus of millions of lines): written as
    it comes, never held whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(chunks)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def is_main_process() -> bool:
    """Under `accelerate launch` or torchrun every process runs the command; one writes."""
    return os.environ.get("RANK", "0") == "0"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _attempts(previous: dict | None, record_path: Path) -> list[dict]:
    """The attempts of an earlier record, the last one closed: a process killed mid-run left it
    `running`; it ended, as far as anyone knows, at the record's last write."""
    if not previous:
        return []
    attempts = previous.get("attempts") or [  # a record from before attempts were kept
        {"started_at": previous["started_at"], "ended_at": previous.get("ended_at"),
         "duration_s": previous.get("duration_s"), "outcome": previous["status"],
         "host": None, "pid": None}]
    last = attempts[-1]
    if last["outcome"] == "running":
        ended = datetime.fromtimestamp(record_path.stat().st_mtime, timezone.utc)
        started = datetime.fromisoformat(last["started_at"])
        last.update(outcome="interrupted", ended_at=ended.isoformat(timespec="seconds"),
                    duration_s=round(max((ended - started).total_seconds(), 0.0), 3))
    return attempts


class RunRecord:
    """The live record of one run; every update rewrites record.json and mirrors to the tracker.

    A run may take several attempts (killed, requeued, retried): the record keeps every attempt
    (start, end, host, process, SLURM job, outcome), the first start, the time of all attempts,
    the W&B run id, and the earlier attempts' history until the new attempt knows where it
    resumes (`resume_history`), so a kill at any point loses none of the curve."""

    def __init__(self, run_dir: Path, job_type: str, tracker=None, previous: dict | None = None,
                 environment: dict | None = None):
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self._t0 = time.monotonic()
        previous = previous if previous is not None else read_record(self.run_dir)
        attempt = {"started_at": utc_now(), "ended_at": None, "duration_s": None, "outcome": "running",
                   "host": socket.gethostname(), "pid": os.getpid(),
                   "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        self.data: dict[str, Any] = {
            "status": "running", "job_type": job_type, "run_dir": str(self.run_dir),
            "started_at": previous["started_at"] if previous else attempt["started_at"],
            "ended_at": None, "duration_s": None,
            "attempts": [*_attempts(previous, self.run_dir / RECORD), attempt],
            "wandb_run_id": tracker.run.id if tracker else (previous or {}).get("wandb_run_id"),
            "environment": environment or {},  # this attempt's (environment.run_environment)
            "metrics": {}, "derived": {}, "history": (previous or {}).get("history", []),
            "error": None,
        }
        self._save()

    def _save(self) -> None:
        if is_main_process():
            write_json_atomic(self.run_dir / RECORD, self.data)

    def set_metrics(self, **metrics: Any) -> None:
        """Final (summary) metrics, such as accuracy."""
        self.data["metrics"].update(metrics)
        self._save()
        if self.tracker:
            self.tracker.summary(metrics)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Rows for the tracker only (the run folder keeps them in its own files)."""
        if self.tracker:
            self.tracker.table(name, rows)

    def set_derived(self, **derived: Any) -> None:
        """Quantities computed from the config and data: steps, tokens of each source, ..."""
        self.data["derived"].update(derived)
        self._save()
        if self.tracker:
            self.tracker.summary({f"derived/{k}": v for k, v in derived.items()})

    def resume_history(self, step: int) -> None:
        """Training starts at `step` (0: afresh): keep the earlier attempts' curve up to it."""
        self.data["history"] = [h for h in self.data["history"] if h["step"] <= step]
        self._save()

    def log(self, step: int, **values: Any) -> None:
        """A point of a curve (loss, learning rate, tokens seen) at an optimiser step."""
        self.data["history"].append({"step": step, **values})
        self._save()
        if self.tracker:
            self.tracker.log(values, step)

    def finish(self, error: BaseException | None = None) -> None:
        self.data["status"] = _outcome(error)
        self.data["ended_at"] = utc_now()
        self.data["attempts"][-1].update(ended_at=self.data["ended_at"],
                                         outcome=self.data["status"],
                                         duration_s=round(time.monotonic() - self._t0, 3))
        self.data["duration_s"] = round(sum(a["duration_s"] or 0.0
                                            for a in self.data["attempts"]), 3)
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {error}"
            self.data["traceback"] = "".join(traceback.format_exception(error))[-4000:]
        self._save()
        if self.tracker:
            self.tracker.finish(self.data["status"])


def _outcome(error: BaseException | None) -> str:
    """How an attempt ended. A sweep's pruner stops a run by raising optuna.TrialPruned: that
    run did not fail. Ctrl-C, or a preemption signal that submitit turns into SystemExit as it
    requeues a SLURM job, stops it: the next attempt resumes it."""
    if error is None:
        return "completed"
    if type(error).__name__ == "TrialPruned":
        return "pruned"
    return "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"


@contextmanager
def run_record(run_dir: Path, job_type: str, config: dict, tracker_cfg=None) -> Iterator[RunRecord]:
    """Open a run folder: write the resolved config, start the record (and W&B), and finalise
    the record as completed or failed however the body ends (Ctrl-C included)."""
    from entigraph.environment import run_environment
    from entigraph.tracking import start_tracker

    run_dir = Path(run_dir)
    main = is_main_process()
    previous = read_record(run_dir)  # an earlier attempt of this run
    environment = run_environment() if main else {}
    if main:
        write_atomic(run_dir / CONFIG, yaml.safe_dump(config, sort_keys=False))
    # The W&B run of every attempt is one: the id is kept in the record and resumed.
    tracker = (start_tracker(tracker_cfg, {**config, "environment": environment}, run_dir,
                             job_type, (previous or {}).get("wandb_run_id"))
               if tracker_cfg and main else None)
    record = RunRecord(run_dir, job_type, tracker, previous, environment)
    try:
        yield record
    except BaseException as err:
        record.finish(err)
        raise
    record.finish()
