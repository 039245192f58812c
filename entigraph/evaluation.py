"""Closed-book multiple-choice evaluation (the EntiGraph paper's QuALITY protocol) through lm-eval.

Each question is asked without its article, in the paper's form

    In the context of "<title>", written by <author> in <year>, <question>
    Answer:

and each of the four options is scored as the continuation " <option>" by log-likelihood
(lm-eval `output_type: multiple_choice`, metric `acc`). The questions are written to a JSONL file
in the work folder and handed to lm-eval as an inline task config (a plain dict) loaded with a
`TaskManager(include_defaults=False)` and run with `lm_eval.evaluator.evaluate`.

`simple_evaluate` is deliberately not used: after scoring it calls `HFLM.get_model_info()`, which
asks the HF hub for the model's sha (`HfApi().model_info`), and it also collects git and
environment info. `evaluate` does the scoring alone.

Module top level is standard library only: torch, transformers and lm_eval load on first use.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from entigraph.errors import EntigraphError

TASK_NAME = "entigraph_closed_book_mc"
N_OPTIONS = 4

# Jinja over the JSONL fields; lm-eval appends target_delimiter " " and the option text.
# The ", written by <author>" and " in <year>" parts drop out when unknown.
DOC_TO_TEXT = (
    'In the context of "{{title}}"'
    "{% if author %}, written by {{author}}{% endif %}"
    "{% if year %}{% if author %} in{% else %}, written in{% endif %} {{year}}{% endif %}"
    ", {{question}}\nAnswer:"
)

# lm-eval warnings that are expected when it is handed a model object, not a hub name.
_EXPECTED_WARNINGS = (
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


# --- prompt pieces and validation ---------------------------------------------------------

def _known(value: Any) -> str:
    """The text of an author or year, or "" when it is unknown."""
    if value is None:
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("", "unknown", "none") else text


def question_row(doc, question) -> dict:
    """The JSONL record lm-eval reads for one question (its prompt pieces, choices and answer)."""
    return {
        "question_id": question.uid,
        "doc_id": doc.uid,
        "title": doc.title,
        "author": _known(doc.author),
        "year": _known(doc.year),
        "question": question.text,
        "choices": list(question.options),
        "gold": question.gold,
        "hard": bool(question.hard),
    }


def render_prompt(doc, question) -> str:
    """The prompt lm-eval builds for `question` (the same template, rendered here for reference)."""
    from jinja2 import Environment, StrictUndefined

    return Environment(undefined=StrictUndefined).from_string(DOC_TO_TEXT).render(
        **question_row(doc, question))


def _validate(questions: Sequence) -> None:
    if not questions:
        raise EntigraphError("evaluation: no questions to evaluate (the question list is empty)")
    seen: set[str] = set()
    for doc, q in questions:
        if len(q.options) != N_OPTIONS:
            raise EntigraphError(f"evaluation: question '{q.uid}' has {len(q.options)} options; "
                                 f"closed-book multiple choice needs exactly {N_OPTIONS}")
        if isinstance(q.gold, bool) or not isinstance(q.gold, int) or not 0 <= q.gold < N_OPTIONS:
            raise EntigraphError(f"evaluation: question '{q.uid}' has gold answer {q.gold!r}; "
                                 f"expected an option index 0..{N_OPTIONS - 1}")
        if q.uid in seen:
            raise EntigraphError(f"evaluation: question uid '{q.uid}' appears more than once")
        seen.add(q.uid)


def _write_questions(rows: list[dict], work_dir: Path) -> Path:
    """Write the rows to work_dir/questions-<content hash>.jsonl (absolute path).

    The content hash in the name means a changed question set is never served from the datasets
    cache of an earlier one with the same path."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = (work_dir / f"questions-{digest}.jsonl").resolve()
    if not path.exists():
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def task_config(data_file: Path, cache_dir: Path) -> dict:
    """The lm-eval task config (a plain dict, as a task YAML would hold) over `data_file`."""
    return {
        "task": TASK_NAME,
        "dataset_path": "json",
        # Absolute paths: datasets resolves relative data_files against the current directory.
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())},
                           "cache_dir": str(Path(cache_dir).resolve())},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": DOC_TO_TEXT,
        "doc_to_choice": "choices",  # field names: lm-eval reads doc["choices"], doc["gold"]
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


# --- keeping lm-eval quiet ----------------------------------------------------------------

class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(m) for m in _EXPECTED_WARNINGS)


@contextlib.contextmanager
def _quiet_and_local() -> Iterator[None]:
    """lm-eval's logger at WARNING, minus its expected model-object warnings, and no datasets
    "download count" ping; both restored on exit. (lm-eval's own progress bars stay.)

    The ping: unless HF_HUB_OFFLINE is set, datasets.load_dataset("json", ...) sends a HEAD
    request to s3.amazonaws.com to count the use of its packaged json builder (errors are
    swallowed, but with no network it can wait out its 3 s timeout)."""
    import datasets
    import lm_eval.models.huggingface

    logger = logging.getLogger("lm_eval")
    level, drop, ping = logger.level, _DropExpected(), datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    hf_logger = logging.getLogger(lm_eval.models.huggingface.__name__)
    logger.setLevel(max(logging.WARNING, level))  # a stricter level set by the caller stays
    hf_logger.addFilter(drop)  # filters sit on the logger that emits, not on its parents
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        logger.setLevel(level)
        hf_logger.removeFilter(drop)
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = ping


# --- the model ----------------------------------------------------------------------------

def _make_lm(model, tokenizer, batch_size: int):
    """An lm-eval HFLM around a model object (with its tokenizer) or a saved model folder."""
    import torch
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return HFLM(pretrained=str(folder.resolve()), tokenizer=tokenizer, device=device,
                    batch_size=batch_size, dtype="auto")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def check_model(model, tokenizer) -> None:
    """Fail fast, before anything heavy is imported, on a model that cannot be loaded."""
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        # A missing local folder would otherwise be taken for a hub repo id and looked up online.
        if not (folder / "config.json").is_file():
            raise EntigraphError(f"evaluation: model folder {folder} not found or has no config.json")
        if tokenizer is None and not any((folder / name).is_file() for name in
                                         ("tokenizer.json", "tokenizer_config.json")):
            raise EntigraphError(f"evaluation: model folder {folder} has no tokenizer; "
                                 "pass one or save it beside the model")
    elif tokenizer is None:
        # HFLM would fall back to model.name_or_path: a hub lookup, or "" for a fresh model.
        raise EntigraphError("evaluation: a model object needs its tokenizer (tokenizer=None is "
                             "only for a model folder)")


# --- evaluation ---------------------------------------------------------------------------

def _accuracy(records: list[dict]) -> Optional[float]:
    return sum(r["correct"] for r in records) / len(records) if records else None


def evaluate_multiple_choice(model, tokenizer, questions: list, work_dir: Path,
                             batch_size: int = 8, limit: Optional[int] = None) -> dict:
    """Closed-book multiple-choice accuracy of `model`, scored by lm-eval log-likelihood.

    model: a transformers causal LM object (then `tokenizer` is required) or a saved model
        folder (then `tokenizer` may be None and is loaded from the folder).
    questions: (Document, Question) pairs; the first `limit` are evaluated when it is set.
    work_dir: where the questions JSONL and the datasets cache are written.

    Returns {"metrics": {accuracy, accuracy_hard, accuracy_nonhard, n_questions, parse_rate},
    "questions": [{question_id, prediction, gold, correct, hard}, ...]} in question order.
    accuracy_hard / accuracy_nonhard are None when there are no such questions; parse_rate is
    always 1.0 here (every log-likelihood answer is one of the options).
    """
    questions = list(questions)
    _validate(questions)
    if limit is not None:
        if limit <= 0:
            raise EntigraphError(f"evaluation: limit={limit} must be a positive number of questions")
        questions = questions[:limit]
    check_model(model, tokenizer)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = [question_row(doc, q) for doc, q in questions]
    data_file = _write_questions(rows, work_dir)

    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    was_training = getattr(model, "training", None)  # HFLM puts a model object in eval mode
    try:
        with _quiet_and_local():
            lm = _make_lm(model, tokenizer, batch_size)
            # include_defaults=False: no index of lm-eval's ~10k bundled task YAMLs (seconds).
            task_dict = TaskManager(include_defaults=False).load(
                [task_config(data_file, work_dir / "hf_datasets_cache")])
            results = evaluate(lm=lm, task_dict=task_dict, bootstrap_iters=0, log_samples=True)
    finally:
        if was_training:
            model.train()

    return _collect(rows, results)


def _collect(rows: list[dict], results: dict) -> dict:
    """Per-question records from lm-eval's logged samples, cross-checked against its `acc`."""
    samples = sorted(results["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    if [s["doc"]["question_id"] for s in samples] != [row["question_id"] for row in rows]:
        raise RuntimeError("lm-eval returned samples that do not match the questions asked")
    records = []
    for row, sample in zip(rows, samples):
        lls = [resp[0] for resp in sample["filtered_resps"]]
        if len(lls) != N_OPTIONS:
            raise RuntimeError(f"lm-eval scored {len(lls)} options for '{row['question_id']}'")
        prediction = max(range(N_OPTIONS), key=lambda i: lls[i])  # first maximum, like np.argmax
        correct = prediction == row["gold"]
        if correct != bool(sample["acc"]):
            raise RuntimeError(f"lm-eval's acc disagrees on question '{row['question_id']}'")
        records.append({"question_id": row["question_id"], "prediction": prediction,
                        "gold": row["gold"], "correct": correct, "hard": row["hard"]})

    accuracy = _accuracy(records)
    lm_eval_acc = results["results"][TASK_NAME]["acc,none"]
    if not math.isclose(accuracy, lm_eval_acc, abs_tol=1e-9):
        raise RuntimeError(f"accuracy {accuracy} from the records differs from lm-eval's acc "
                           f"{lm_eval_acc}")
    return {
        "metrics": {
            "accuracy": accuracy,
            "accuracy_hard": _accuracy([r for r in records if r["hard"]]),
            "accuracy_nonhard": _accuracy([r for r in records if not r["hard"]]),
            "n_questions": len(records),
            "parse_rate": 1.0,
        },
        "questions": records,
    }

