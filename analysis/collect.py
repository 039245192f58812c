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

# unique_tokens and repeats: distinct corpus tokens in the budget, and how often they were
# repeated to fill it (data.repeat; Raw CPT at matched tokens).
COLUMNS = ["run", "group", "synthetic_tokens", "accuracy", "n_questions", "n_scored",
           "mixing_ratio", "lr", "seed", "corpus", "method", "prompt_set", "generator", "model",
           "protocol", "eval_split", "mixing_mode", "epochs", "unique_tokens", "repeats",
           "accuracy_hard", "accuracy_nonhard", "parse_rate", "steps", "source", "input"]
INTEGER = {"synthetic_tokens", "n_questions", "n_scored", "seed", "epochs", "steps",
           "unique_tokens"}
FLOAT = {"accuracy", "mixing_ratio", "lr", "repeats", "accuracy_hard", "accuracy_nonhard",
         "parse_rate"}
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


def protocol_metrics(metrics: dict, protocol: str, headline: str) -> dict | None:
    """`protocol`'s metrics under the headline names (accuracy, parse_rate, n_scored, split,
    ...), or None when the run has no accuracy by it. Its own `<protocol>_*` keys come first:
    `entigraph eval run=` updates those and never the headline's. The headline keys stand in
    for the headline protocol where a record or a trial has no own keys; the question count is
    the run's unless an evaluation of its own counted it."""
    own = {k[len(protocol) + 1:]: v for k, v in metrics.items() if k.startswith(f"{protocol}_")}
    if "accuracy" not in own:
        if protocol != headline or "accuracy" not in metrics:
            return None
        own = metrics
    return {"n_questions": metrics.get("n_questions"), **own}


def config_row(run: str, config: dict, metrics: dict, derived: dict, source: str,
               protocol: str | None = None) -> dict | None:
    """A row from a run's resolved config, final metrics and derived quantities: the same for
    a run folder's record and a W&B run's config and summary. The accuracy is `protocol`'s
    (None: the run's headline protocol's); None when the run has none by that protocol."""
    headline = headline_protocol(config)
    measured = protocol_metrics(metrics, protocol or headline, headline)
    if measured is None:
        return None
    data, optim = config.get("data") or {}, config.get("optim") or {}
    model, ev = config.get("model") or {}, config.get("eval") or {}
    synthesis = config.get("synthesis") or {}
    return {
        "run": run, "group": f"mix{data.get('mixing_ratio')}_lr{optim.get('lr')}",
        "synthetic_tokens": derived.get("synthetic_tokens_selected"),
        "accuracy": measured.get("accuracy"), "n_questions": measured.get("n_questions"),
        "n_scored": measured.get("n_scored"),
        "mixing_ratio": data.get("mixing_ratio"), "lr": optim.get("lr"), "seed": config.get("seed"),
        "corpus": (config.get("corpus") or {}).get("name"),
        "method": synthesis.get("method"), "prompt_set": synthesis.get("prompt_set"),
        "generator": (config.get("generator") or {}).get("model"),
        "model": model.get("pretrained") or model.get("name"),
        # The split of a later evaluation (eval run=) when the protocol had one, else the run's.
        "protocol": protocol or headline, "eval_split": measured.get("split") or ev.get("split"),
        "mixing_mode": data.get("mixing_mode"), "epochs": (config.get("trainer") or {}).get("epochs"),
        "unique_tokens": derived.get("synthetic_tokens_unique"),
        "repeats": derived.get("synthetic_repeats"),
        "accuracy_hard": measured.get("accuracy_hard"),
        "accuracy_nonhard": measured.get("accuracy_nonhard"),
        "parse_rate": measured.get("parse_rate"), "steps": derived.get("steps"), "source": source,
    }


def record_paths(source: str) -> list[Path]:
    """record.json files under a folder (any depth), or of the run folders a glob names."""
    path = Path(source)
    if path.is_dir():
        return sorted(path.rglob(RECORD))
    return sorted(Path(p) / RECORD for p in glob.glob(source) if (Path(p) / RECORD).exists())


def run_row(run_dir: Path, protocol: str | None = None) -> dict | None:
    """The row of a completed training run evaluated by `protocol` (None: its headline one);
    None for anything else."""
    record = json.loads((Path(run_dir) / RECORD).read_text())
    if record.get("job_type") != "train" or record["status"] != "completed":
        return None
    config = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    return config_row(str(run_dir), config, record["metrics"], record["derived"], "run folder",
                      protocol)


def run_questions(run_dir: Path, protocol: str) -> dict[str, bool] | None:
    """question id -> correct for `protocol`'s lines (a line without a protocol is from the
    multiple-choice protocol); None when the run has no per-question records of it."""
    path = Path(run_dir) / "questions.jsonl"
    if not path.exists():
        return None
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    # correct is None for a question left out of the denominator (eval.cot.unparsed=drop).
    picked = {q["question_id"]: bool(q["correct"]) for q in lines
              if q.get("protocol", "mc") == protocol and q["correct"] is not None}
    return picked or None


def add_run(results: Results, run_dir: Path, protocol: str | None = None) -> None:
    """Add a run folder's row and its per-question outcomes by `protocol` (None: the run's
    headline protocol); nothing for an unfinished run or one not evaluated by `protocol`."""
    row = run_row(run_dir, protocol)
    if row is None:
        return
    results.rows.append(row)
    questions = run_questions(run_dir, row["protocol"])
    if questions:
        results.questions[row["run"]] = questions


def read_runs(source: str, protocol: str | None = None) -> Results:
    results = Results([])
    for path in record_paths(source):
        add_run(results, path.parent, protocol)
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


def check(rows: list[dict], source: str, slice_of=None, agree: tuple = COMPATIBLE,
          sliced: tuple = ()) -> None:
    """Refuse rows that cannot be fitted (missing, NaN or out-of-range values), and slices
    (`slice_of(row)` names a row's) whose runs measured different things: they must agree on
    every column of `agree`. Each message names the run or the column, and the fix."""
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
    parts: dict = {}
    for row in rows:
        parts.setdefault(slice_of(row) if slice_of else "", []).append(row)
    for name, part in parts.items():
        _check_agree(part, f"input={source}" + (f", slice {name}," if sliced else ""), agree, sliced)


def _check_agree(rows: list[dict], where: str, agree: tuple, sliced: tuple) -> None:
    for column in agree:
        counts: dict = {}
        for row in rows:
            counts[row.get(column)] = counts.get(row.get(column), 0) + 1
        if len(counts) > 1:
            common = sorted(counts.items(), key=lambda kv: -kv[1])  # most runs first
            seen = ", ".join(f"{v} ({n} runs)" for v, n in common)
            raise EntigraphError(
                f"{where} mixes incompatible runs: {column} differs ({seen}); analyse one at a "
                f"time, e.g. +where.{column}={common[0][0]}, or draw a curve for each: "
                f"slice_by=[{','.join([*sliced, column])}]")


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
