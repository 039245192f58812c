"""Logged results into one tidy table: a row per completed training run (or per CSV line)."""
from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import yaml

from entigraph.errors import EntigraphError
from entigraph.records import CONFIG, RECORD

COLUMNS = ["group", "run_dir", "synthetic_tokens", "mixing_ratio", "lr", "seed", "accuracy",
           "accuracy_hard", "accuracy_nonhard", "n_questions", "steps"]


def record_paths(source: str) -> list[Path]:
    """record.json files under a folder (any depth), or of the run folders a glob names."""
    path = Path(source)
    if path.is_dir():
        return sorted(path.rglob(RECORD))
    return sorted(Path(p) / RECORD for p in glob.glob(source) if (Path(p) / RECORD).exists())


def run_row(record_path: Path) -> dict | None:
    """The table row of a completed, evaluated training run; None for anything else."""
    record = json.loads(record_path.read_text())
    if record.get("job_type") != "train" or record["status"] != "completed" \
            or "accuracy" not in record["metrics"]:
        return None
    config = yaml.safe_load((record_path.parent / CONFIG).read_text())
    derived, metrics = record["derived"], record["metrics"]
    return {
        "group": f"mix{config['data']['mixing_ratio']}_lr{config['optim']['lr']}",
        "run_dir": str(record_path.parent),
        "synthetic_tokens": derived["synthetic_tokens_selected"],
        "mixing_ratio": config["data"]["mixing_ratio"],
        "lr": config["optim"]["lr"],
        "seed": config["seed"],
        "accuracy": metrics["accuracy"],
        "accuracy_hard": metrics.get("accuracy_hard"),
        "accuracy_nonhard": metrics.get("accuracy_nonhard"),
        "n_questions": metrics["n_questions"],
        "steps": derived["steps"],
    }


def read_table(path: Path) -> list[dict]:
    """A CSV of results obtained elsewhere: columns tokens, accuracy[, questions, group]."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"tokens", "accuracy"} - set(rows[0] if rows else {})
    if missing:
        raise EntigraphError(f"{path}: needs columns tokens and accuracy (missing: {', '.join(sorted(missing))})")
    return [{"group": r.get("group") or "table", "synthetic_tokens": int(float(r["tokens"])),
             "accuracy": float(r["accuracy"]),
             "n_questions": int(r["questions"]) if r.get("questions") else None} for r in rows]


def collect(source: str) -> list[dict]:
    """Rows from a sweep folder, a glob of run folders, or a CSV table, sorted by tokens."""
    if source.endswith(".csv"):
        rows = read_table(Path(source))
    else:
        rows = [row for p in record_paths(source) if (row := run_row(p))]
    if not rows:
        raise EntigraphError(f"input={source}: no completed, evaluated training runs found")
    return sorted(rows, key=lambda r: (r["group"], r["synthetic_tokens"]))
