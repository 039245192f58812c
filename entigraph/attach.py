"""`entigraph eval run=<run folder>`: a completed training run's saved model evaluated later (the
paper's cot through vLLM after training with the cheap mc probe, say), the result added to the
run itself: its questions.jsonl, its record and its own W&B run.

The record's headline `accuracy` stays that of the run's evaluation after training. Each
protocol evaluated here gets its `<protocol>_*` metrics (the latest evaluation's), the split they
were measured on (`<protocol>_split`) and its question count (`<protocol>_n_questions`), and an
entry in the record's `evaluations`; `entigraph analyze protocol=<protocol>` reads them.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from entigraph.errors import ConfigError
from entigraph.records import (
    CONFIG, RECORD, read_record, utc_now, write_json_atomic, write_lines_atomic)
from entigraph.run_identity import run_lock

QUESTIONS = "questions.jsonl"


def training_run(folder: str) -> dict:
    """The saved config of the completed training run in `folder`, which must hold its model."""
    record = read_record(folder)
    if not record or record.get("job_type") != "train" or record.get("status") != "completed":
        found = ("it has no record.json" if not record else f"its record says job_type "
                 f"{record.get('job_type')}, status {record.get('status')}")
        raise ConfigError(f"config: run={folder} is not a completed training run ({found}); set "
                          f"run to the folder of a completed `entigraph train` run, or evaluate "
                          f"a model folder with checkpoint=<folder>")
    if not (Path(folder) / "model" / "config.json").is_file():
        raise ConfigError(f"config: run={folder} has no saved model ({Path(folder) / 'model'} "
                          f"has no config.json); set run to a run whose model folder is kept")
    return yaml.safe_load((Path(folder) / CONFIG).read_text())


def questions_config(cfg: DictConfig, saved: dict) -> DictConfig:
    """`cfg` asking the run's own questions: the corpus it was trained and evaluated on, split
    by its validation share. Protocols, backend, split, limit and cot stay the command's."""
    return OmegaConf.merge(cfg, {"corpus": saved["corpus"],
                                 "eval": {"validation_share": saved["eval"]["validation_share"]}})


def add_evaluation(run_dir: str, saved: dict, result: dict, cfg: DictConfig) -> None:
    """Add `result` (evaluation.evaluate_questions's) to the run, holding its lock: the
    protocols' question lines replace theirs (the other protocols' stay), their metrics and an
    `evaluations` entry each go to the record, and both to the run's W&B run."""
    protocols = list(cfg.eval.protocols)
    metrics = _protocol_metrics(result["metrics"], protocols, cfg.eval.split)
    with run_lock(run_dir):
        # Questions first: a kill in between leaves a record that does not claim them yet.
        _merge_questions(Path(run_dir) / QUESTIONS, result["questions"], protocols)
        record = read_record(run_dir)
        record["metrics"].update(metrics)
        record["evaluations"] = [*record.get("evaluations", []),
                                 *_entries(result["metrics"], protocols, cfg.eval)]
        write_json_atomic(Path(run_dir) / RECORD, record)
        _mirror(run_dir, saved, record, metrics, result["questions"], protocols, cfg.tracker)


def _protocol_metrics(metrics: dict, protocols: list[str], split: str) -> dict:
    """Each protocol's own metrics, its question count and split; never the headline's."""
    added = {}
    for protocol in protocols:
        added.update({k: v for k, v in metrics.items() if k.startswith(f"{protocol}_")})
        added.update({f"{protocol}_n_questions": metrics["n_questions"],
                      f"{protocol}_split": split})
    return added


def _entries(metrics: dict, protocols: list[str], eval_cfg) -> list[dict]:
    """One `evaluations` entry a protocol: what was asked, how, when (the cot sampling and the
    rag settings too: the run's saved config holds the settings of its evaluation after
    training, not these)."""
    at = utc_now()
    return [{"protocol": p, "split": eval_cfg.split, "backend": eval_cfg.backend,
             "evaluated_at": at, "n_questions": metrics["n_questions"],
             "n_scored": metrics[f"{p}_n_scored"], "accuracy": metrics[f"{p}_accuracy"],
             **({p: OmegaConf.to_container(eval_cfg[p], resolve=True)} if p != "mc" else {})}
            for p in protocols]


def _merge_questions(path: Path, rows: list[dict], protocols: list[str]) -> None:
    kept = []
    if path.exists():
        # A line without a protocol is an mc line (written before lines named their protocol).
        kept = [line + "\n" for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("protocol", "mc") not in protocols]
    write_lines_atomic(path, [*kept, *(json.dumps(row) + "\n" for row in rows)])


def _mirror(run_dir: str, saved: dict, record: dict, metrics: dict, rows: list[dict],
            protocols: list[str], tracker_cfg) -> None:
    """The metrics to the run's W&B summary and a question table per protocol, resuming the
    run by the id its record keeps, in its own project and group (tracker.mode: this command's)."""
    from entigraph.tracking import resolve_mode, start_tracker

    if resolve_mode(tracker_cfg.mode) == "disabled":
        return
    if not record.get("wandb_run_id"):
        print(f"{run_dir}: not logged to W&B (the run was trained without W&B tracking)")
        return
    tracker = start_tracker(OmegaConf.merge(saved["tracker"], {"mode": tracker_cfg.mode}), saved,
                            Path(run_dir), record["job_type"], record["wandb_run_id"])
    try:
        tracker.summary(metrics)
        for protocol in protocols:
            tracker.table(f"questions_{protocol}", [r for r in rows if r["protocol"] == protocol])
    finally:
        tracker.finish("completed")
