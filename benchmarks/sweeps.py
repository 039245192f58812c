"""Sweep overhead on the tiny model (issue 7): run as `.venv/bin/python benchmarks/sweeps.py`.

1. Per-trial overhead: an Optuna search of four trials (`entigraph search`, one worker, journal
   file) and, side by side, a four-run `entigraph train --multirun` grid. Overhead per trial =
   (wall time of the command - the time its runs spent training and evaluating, from their
   records' duration_s) / trials: process start, Hydra composition, study and storage calls,
   summaries. Targets: under 10 s a trial.
2. Rerun: the same eight-run grid a second time, all completed: every job skipped. Target: under
   15 s in all.

The last line: RESULT overhead_s_per_trial=<search> rerun_s=<x>.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOKE = ["experiment=smoke", "trainer.checkpoint_every=0", "tracker.mode=disabled"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "WANDB_ERROR_REPORTING": "false", "TOKENIZERS_PARALLELISM": "false"}


def entigraph(root: Path, *args: str) -> float:
    """Run one command to the end; its wall time in seconds."""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "entigraph", *args, f"paths.root={root}"],
                         cwd=root, env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"entigraph {args[0]} failed:\n{out.stderr[-3000:]}")
    return time.monotonic() - started


def run_seconds(folder: Path) -> tuple[float, int]:
    """Training plus evaluation time of the runs under `folder` (their records), and their count."""
    records = [json.loads(p.read_text()) for p in folder.rglob("record.json")]
    return sum(r["duration_s"] for r in records), len(records)


def overhead(wall: float, folder: Path) -> float:
    busy, runs = run_seconds(folder)
    return (wall - busy) / runs


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="entigraph-bench-sweeps-"))
    print(f"working in {root}; generating the built-in corpus ...", flush=True)
    entigraph(root, "generate")
    runs = root / "runs" / "sweeps"

    wall = entigraph(root, "search", *SMOKE, "sweep.name=bench", "sweep.optuna.n_trials=4",
                     "eval.every_steps=2", "sweep.optuna.pruner=none")
    search = overhead(wall, runs / "bench")
    print(f"search, 4 trials        : wall {wall:6.1f} s, overhead {search:5.2f} s/trial", flush=True)

    grid = ["train", "--multirun", *SMOKE, "sweep.name=grid8",
            "data.synthetic_tokens=1024,2048", "optim.lr=1e-3,3e-4", "seed=0,1"]
    wall = entigraph(root, *grid)
    multirun = overhead(wall, runs / "grid8")
    print(f"multirun grid, 8 runs   : wall {wall:6.1f} s, overhead {multirun:5.2f} s/run", flush=True)

    rerun = entigraph(root, *grid)
    print(f"rerun of the 8-run grid : {rerun:6.1f} s (every run skipped)", flush=True)
    print(f"RESULT overhead_s_per_trial={search:.2f} rerun_s={rerun:.2f}")


if __name__ == "__main__":
    main()
