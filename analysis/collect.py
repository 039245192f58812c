"""Logged results into one tidy table: a row per completed training run (or per CSV line),
plus each run's per-question outcomes when it has them (for the question-level bootstrap).

Local sources live here: run folders (a sweep folder or a glob) and CSV tables, including the
table this module writes, so an analysis can be regenerated from its own cache with no network.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from entigraph.errors import EntigraphError
from entigraph.records import CONFIG, RECORD, write_atomic

COLUMNS = ["run", "group", "synthetic_tokens", "accuracy", "n_questions", "n_scored",
           "mixing_ratio", "lr", "seed", "corpus", "method", "model", "protocol", "eval_split",
           "mixing_mode", "epochs", "accuracy_hard", "accuracy_nonhard", "parse_rate", "steps",
           "source", "input"]
INTEGER = {"synthetic_tokens", "n_questions", "n_scored", "seed", "epochs", "steps"}
FLOAT = {"accuracy", "mixing_ratio", "lr", "accuracy_hard", "accuracy_nonhard", "parse_rate"}
# input: the entry of `input=` a row came from (kept in the cached table, so a combined analysis
# regenerates from it). Runs of one input that differ in any of COMPATIBLE measure different
# things and do not share one curve; rows of different inputs are checked and sliced apart.
COMPATIBLE = ("corpus", "method", "model", "protocol", "eval_split", "n_questions", "mixing_mode",
              "epochs")
# A CSV of results obtained elsewhere may use these shorter names.
ALIASES = {"tokens": "synthetic_tokens", "questions": "n_questions"}
TABLE, QUESTIONS = "results.csv", "questions.csv"


@dataclass
class Results:
    rows: list[dict]
    # run -> question id -> correct, for runs with per-question records.
    questions: dict[str, dict[str, bool]] = field(default_factory=dict)


def headline_protocol(config: dict) -> str:
    """The protocol whose accuracy is the headline: the first of eval.protocols (older
    configs name one eval.protocol; the multiple-choice one when neither is set)."""
    ev = config.get("eval") or {}
    return (ev.get("protocols") or [ev.get("protocol") or "mc"])[0]


def config_row(run: str, config: dict, metrics: dict, derived: dict, source: str) -> dict:
    """A row from a run's resolved config, final metrics and derived quantities: the same for
    a run folder's record and a W&B run's config and summary."""
    data, optim = config.get("data") or {}, config.get("optim") or {}
    model = config.get("model") or {}
    return {
        "run": run, "group": f"mix{data.get('mixing_ratio')}_lr{optim.get('lr')}",
        "synthetic_tokens": derived.get("synthetic_tokens_selected"),
        "accuracy": metrics.get("accuracy"), "n_questions": metrics.get("n_questions"),
        "n_scored": metrics.get("n_scored"),
        "mixing_ratio": data.get("mixing_ratio"), "lr": optim.get("lr"), "seed": config.get("seed"),
        "corpus": (config.get("corpus") or {}).get("name"),
        "method": (config.get("synthesis") or {}).get("method"),
        "model": model.get("pretrained") or model.get("name"),
        "protocol": headline_protocol(config), "eval_split": (config.get("eval") or {}).get("split"),
        "mixing_mode": data.get("mixing_mode"), "epochs": (config.get("trainer") or {}).get("epochs"),
        "accuracy_hard": metrics.get("accuracy_hard"),
        "accuracy_nonhard": metrics.get("accuracy_nonhard"),
        "parse_rate": metrics.get("parse_rate"), "steps": derived.get("steps"), "source": source,
    }


def record_paths(source: str) -> list[Path]:
    """record.json files under a folder (any depth), or of the run folders a glob names."""
    path = Path(source)
    if path.is_dir():
        return sorted(path.rglob(RECORD))
    return sorted(Path(p) / RECORD for p in glob.glob(source) if (Path(p) / RECORD).exists())


def run_row(run_dir: Path) -> dict | None:
    """The row of a completed, evaluated training run; None for anything else."""
    record = json.loads((Path(run_dir) / RECORD).read_text())
    if record.get("job_type") != "train" or record["status"] != "completed" \
            or "accuracy" not in record["metrics"]:
        return None
    config = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    return config_row(str(run_dir), config, record["metrics"], record["derived"], "run folder")


def run_questions(run_dir: Path, protocol: str) -> dict[str, bool] | None:
    """question id -> correct for the headline protocol's lines (a line without a protocol is
    from the multiple-choice protocol); None when the run has no per-question records."""
    path = Path(run_dir) / "questions.jsonl"
    if not path.exists():
        return None
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    # correct is None for a question left out of the denominator (eval.cot.unparsed=drop).
    picked = {q["question_id"]: bool(q["correct"]) for q in lines
              if q.get("protocol", "mc") == protocol and q["correct"] is not None}
    return picked or None


def add_run(results: Results, run_dir: Path) -> None:
    """Add a run folder's row and its per-question outcomes (nothing for an unfinished run)."""
    row = run_row(run_dir)
    if row is None:
        return
    results.rows.append(row)
    questions = run_questions(run_dir, row["protocol"])
    if questions:
        results.questions[row["run"]] = questions


def read_runs(source: str) -> Results:
    results = Results([])
    for path in record_paths(source):
        add_run(results, path.parent)
    return results


def _value(column: str, text: str):
    if text is None or text == "":
        return None
    if column in FLOAT or column in INTEGER:
        number = float(text)
        return int(number) if column in INTEGER and math.isfinite(number) else number
    return text


def read_table(path: Path) -> Results:
    """A CSV with columns tokens (or synthetic_tokens) and accuracy, optionally questions (or
    n_questions), group and any other table column; with questions.csv beside it (as this module
    writes), the per-question outcomes too."""
    with open(path, newline="") as f:
        lines = list(csv.DictReader(f))
    header = {ALIASES.get(c, c) for c in (lines[0] if lines else {})}
    missing = {"synthetic_tokens", "accuracy"} - header
    if missing:
        raise EntigraphError(f"{path}: needs columns tokens and accuracy (missing: "
                             f"{', '.join(sorted(missing))})")
    rows = []
    for i, line in enumerate(lines, 2):
        row = {ALIASES.get(k, k): _value(ALIASES.get(k, k), v) for k, v in line.items()}
        rows.append({**dict.fromkeys(COLUMNS), "group": "table", "source": str(path),
                     "run": f"{path.name}:{i}", **{k: v for k, v in row.items() if v is not None}})
    return Results(rows, read_questions(path.with_name(QUESTIONS)))


def read_questions(path: Path) -> dict[str, dict[str, bool]]:
    if not path.exists():
        return {}
    questions: dict[str, dict[str, bool]] = {}
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            questions.setdefault(line["run"], {})[line["question_id"]] = line["correct"] == "1"
    return questions


def select(results: Results, where: dict) -> Results:
    """Only the rows whose columns equal every value of `where` (compared as text)."""
    unknown = set(where) - set(COLUMNS)
    if unknown:
        raise EntigraphError(f"config: where has unknown columns {sorted(unknown)}; columns: "
                             f"{', '.join(COLUMNS)}")
    rows = [r for r in results.rows if all(str(r.get(k)) == str(v) for k, v in where.items())]
    return Results(rows, {r["run"]: results.questions[r["run"]] for r in rows
                          if r["run"] in results.questions})


def check(rows: list[dict], source: str) -> None:
    """Refuse rows that cannot be fitted (missing, NaN or out-of-range values) and tables that
    mix runs measuring different things; each message names the run or the column."""
    if not rows:
        raise EntigraphError(f"input={source}: no completed, evaluated training runs found")
    for row in rows:
        for column in ("synthetic_tokens", "accuracy"):
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise EntigraphError(f"run {row['run']}: {column} is {value}; fix the run or leave "
                                     f"it out (where=..., or a narrower input)")
        if not 0.0 <= row["accuracy"] <= 1.0:
            raise EntigraphError(f"run {row['run']}: accuracy {row['accuracy']} is outside [0, 1]; "
                                 f"give accuracy as a fraction (56.22% is 0.5622)")
        if row["synthetic_tokens"] <= 0:
            raise EntigraphError(f"run {row['run']}: synthetic_tokens {row['synthetic_tokens']} "
                                 f"must be positive")
    for column in COMPATIBLE:
        counts: dict = {}
        for row in rows:
            counts[row.get(column)] = counts.get(row.get(column), 0) + 1
        if len(counts) > 1:
            common = sorted(counts.items(), key=lambda kv: -kv[1])  # most runs first
            seen = ", ".join(f"{v} ({n} runs)" for v, n in common)
            raise EntigraphError(f"input={source} mixes incompatible runs: {column} differs ({seen}); "
                                 f"analyse one at a time, e.g. +where.{column}={common[0][0]}")


def write_tables(results: Results, output_dir: Path) -> dict[str, Path]:
    """The tidy table (and the per-question outcomes): the cache later analyses can read."""
    outputs = {"table": output_dir / TABLE}
    write_atomic(outputs["table"], csv_text(COLUMNS, results.rows))
    if results.questions:
        outputs["questions"] = output_dir / QUESTIONS
        write_atomic(outputs["questions"], csv_text(
            ["run", "question_id", "correct"],
            [{"run": run, "question_id": q, "correct": int(c)}
             for run, answers in sorted(results.questions.items()) for q, c in answers.items()]))
    return outputs


def csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
