"""One folder per run: the resolved config and a machine-readable `record.json`.

The record is ours, written atomically at every change and finalised even when the run fails;
W&B only mirrors it (see tracking.py), so analysis never depends on W&B being reachable.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

RECORD = "record.json"
CONFIG = "config.yaml"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` so a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """The live record of one run; every update rewrites record.json and mirrors to the tracker."""

    def __init__(self, run_dir: Path, job_type: str, tracker=None):
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self._t0 = time.monotonic()
        previous = read_record(self.run_dir)  # an earlier, unfinished attempt of this run
        self._previous_history = previous["history"] if previous else []
        self.data: dict[str, Any] = {
            "status": "running", "job_type": job_type, "run_dir": str(self.run_dir),
            "started_at": _now(), "ended_at": None, "duration_s": None,
            "metrics": {}, "derived": {}, "history": [], "error": None,
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
        """Resuming from a checkpoint at `step`: keep the earlier attempt's curve up to it."""
        self.data["history"] = [h for h in self._previous_history if h["step"] <= step]
        self._save()

    def log(self, step: int, **values: Any) -> None:
        """A point of a curve (loss, learning rate, tokens seen) at an optimiser step."""
        self.data["history"].append({"step": step, **values})
        self._save()
        if self.tracker:
            self.tracker.log(values, step)

    def finish(self, error: BaseException | None = None) -> None:
        # A sweep's pruner stops a run by raising optuna.TrialPruned: that run did not fail.
        pruned = type(error).__name__ == "TrialPruned"
        self.data["status"] = "pruned" if pruned else "failed" if error else "completed"
        self.data["ended_at"] = _now()
        self.data["duration_s"] = round(time.monotonic() - self._t0, 3)
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {error}"
            self.data["traceback"] = "".join(traceback.format_exception(error))[-4000:]
        self._save()
        if self.tracker:
            self.tracker.finish(failed=error is not None)


@contextmanager
def run_record(run_dir: Path, job_type: str, config: dict, tracker_cfg=None) -> Iterator[RunRecord]:
    """Open a run folder: write the resolved config, start the record (and W&B), and finalise
    the record as completed or failed however the body ends (Ctrl-C included)."""
    from entigraph.tracking import start_tracker

    run_dir = Path(run_dir)
    main = is_main_process()
    if main:
        write_atomic(run_dir / CONFIG, yaml.safe_dump(config, sort_keys=False))
    tracker = start_tracker(tracker_cfg, config, run_dir, job_type) if tracker_cfg and main else None
    record = RunRecord(run_dir, job_type, tracker)
    try:
        yield record
    except BaseException as err:
        record.finish(err)
        raise
    record.finish()
