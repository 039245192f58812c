"""`entigraph eval run=<run folder>`: a later evaluation added to its training run (record,
questions.jsonl, W&B), the refusals, and the analysis choosing the protocol (`protocol=`)."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from cli import entigraph
from entigraph.analysis.collect import read_runs
from entigraph.analysis.report import write_report
from entigraph.analysis.sources import wandb_row
from entigraph.attach import add_evaluation, training_run
from entigraph.errors import ConfigError, EntigraphError

QUESTIONS = [f"q{i}" for i in range(8)]


def lines_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "questions.jsonl").read_text().splitlines()]


def record_of(run: Path) -> dict:
    return json.loads((run / "record.json").read_text())


def trained_run(root: Path, tokens: int, mc_right: int = 2) -> Path:
    """A completed training run evaluated by mc after training, as `entigraph train` leaves it
    (its model folder holds a config.json only: nothing here loads it)."""
    run = root / f"tok{tokens}"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    config = {"seed": 0, "corpus": {"name": "demo", "format": "builtin", "path": None,
                                    "download": False},
              "synthesis": {"method": "entigraph"}, "model": {"name": "tiny", "pretrained": None},
              "trainer": {"epochs": 1}, "data": {"mixing_ratio": 0.0, "mixing_mode": "add"},
              "optim": {"lr": 1e-3},
              "eval": {"protocols": ["mc"], "split": "all", "validation_share": 0.2},
              "tracker": {"mode": "disabled", "project": "entigraph", "entity": None,
                          "group": None, "tags": []}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    accuracy = mc_right / len(QUESTIONS)
    metrics = {"accuracy": accuracy, "mc_accuracy": accuracy, "n_questions": len(QUESTIONS),
               "n_scored": len(QUESTIONS), "mc_n_scored": len(QUESTIONS), "parse_rate": 1.0,
               "mc_parse_rate": 1.0}
    (run / "record.json").write_text(json.dumps({
        "status": "completed", "job_type": "train", "metrics": metrics, "wandb_run_id": None,
        "derived": {"synthetic_tokens_selected": tokens, "steps": 4}}))
    (run / "questions.jsonl").write_text("".join(
        json.dumps({"protocol": "mc", "question_id": q, "correct": i < mc_right}) + "\n"
        for i, q in enumerate(QUESTIONS)))
    return run


def cot_result(right: int, asked: int) -> dict:
    """What evaluation.evaluate_questions returns for the cot protocol alone."""
    rows = [{"protocol": "cot", "question_id": q, "prediction": 0, "gold": 0 if i < right else 1,
             "correct": i < right, "hard": False, "parsed": True}
            for i, q in enumerate(QUESTIONS[:asked])]
    summary = {"accuracy": right / asked, "accuracy_hard": None, "accuracy_nonhard": right / asked,
               "parse_rate": 1.0, "n_scored": asked}
    return {"metrics": {"n_questions": asked, **summary,
                        **{f"cot_{k}": v for k, v in summary.items()}},
            "questions": rows}


def add_cot(compose, run: Path, right: int, asked: int, split: str = "all") -> None:
    cfg = compose("eval", [f"run={run}", "eval=cot", "tracker=disabled", f"eval.split={split}"])
    add_evaluation(str(run), training_run(str(run)), cot_result(right, asked), cfg)


# --- adding an evaluation to a run -------------------------------------------------------------

def test_an_evaluation_is_added_to_the_run_and_a_rerun_replaces_it(compose, tmp_path):
    run = trained_run(tmp_path, 1000)
    before = record_of(run)["metrics"]
    add_cot(compose, run, right=3, asked=6)
    add_cot(compose, run, right=1, asked=4, split="validation")  # replaces, never adds

    record = record_of(run)
    metrics = record["metrics"]
    assert {k: metrics[k] for k in before} == before  # the headline and mc: as trained
    assert (metrics["cot_accuracy"], metrics["cot_n_questions"], metrics["cot_n_scored"],
            metrics["cot_parse_rate"], metrics["cot_split"]) == (0.25, 4, 4, 1.0, "validation")
    assert [(e["protocol"], e["split"], e["backend"], e["n_questions"]) for e in
            record["evaluations"]] == [("cot", "all", "hf", 6), ("cot", "validation", "hf", 4)]
    assert all(e["evaluated_at"] and e["cot"]["num_samples"] == 8 for e in record["evaluations"])
    lines = lines_of(run)
    assert [q["question_id"] for q in lines if q["protocol"] == "mc"] == QUESTIONS
    assert [q["question_id"] for q in lines if q["protocol"] == "cot"] == QUESTIONS[:4]
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("record,found", [
    (None, "it has no record.json"),
    ({"status": "completed", "job_type": "eval"}, "its record says job_type eval, status completed"),
    ({"status": "running", "job_type": "train"}, "its record says job_type train, status running"),
])
def test_only_a_completed_training_run_is_taken(tmp_path, record, found):
    run = trained_run(tmp_path, 1000)
    if record is None:
        (run / "record.json").unlink()
    else:
        (run / "record.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"run={run} is not a completed training run "
                                          f"\\({found}\\)"):
        training_run(str(run))


def test_a_run_without_its_model_is_refused(tmp_path):
    run = trained_run(tmp_path, 1000)
    (run / "model" / "config.json").unlink()
    with pytest.raises(ConfigError, match=f"run={run} has no saved model"):
        training_run(str(run))


def test_cli_refuses_run_with_checkpoint_and_a_folder_that_is_not_a_run(tmp_path):
    run = trained_run(tmp_path, 1000)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    both = entigraph("eval", f"run={run}", f"checkpoint={run / 'model'}",
                     f"paths.root={tmp_path}/out", cwd=tmp_path)
    assert both.returncode == 2 and both.stderr.count("\n") == 1
    assert "run and checkpoint are both set; set one" in both.stderr
    not_a_run = entigraph("eval", f"run={run / 'model'}", f"paths.root={tmp_path}/out",
                          cwd=tmp_path)
    assert not_a_run.returncode == 2 and not_a_run.stderr.count("\n") == 1
    assert f"run={run / 'model'} is not a completed training run" in not_a_run.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out").exists()


# --- the analysis chooses the protocol ---------------------------------------------------------

def test_the_analysis_reads_the_protocol_asked_for(compose, analyze_cfg, tmp_path):
    runs = [trained_run(tmp_path / "runs", 10 ** k, mc_right=k) for k in (3, 4, 5, 6)]
    for k, run in zip((3, 4, 5), runs):
        add_cot(compose, run, right=k - 2, asked=4, split="test")  # not the last run

    mc = read_runs(str(tmp_path / "runs"))  # the headline protocol: mc, on all four
    assert [(r["protocol"], r["accuracy"], r["n_questions"], r["eval_split"]) for r in mc.rows] \
        == [("mc", k / 8, 8, "all") for k in (3, 4, 5, 6)]
    assert [sum(mc.questions[str(run)].values()) for run in runs] == [3, 4, 5, 6]
    assert [r["accuracy"] for r in read_runs(str(tmp_path / "runs"), "mc").rows] \
        == [r["accuracy"] for r in mc.rows]
    cot = read_runs(str(tmp_path / "runs"), "cot")  # the run without cot is left out
    assert [(r["run"], r["protocol"], r["accuracy"], r["n_questions"], r["n_scored"],
             r["eval_split"]) for r in cot.rows] \
        == [(str(run), "cot", (k - 2) / 4, 4, 4, "test") for k, run in zip((3, 4, 5), runs)]
    assert [sorted(cot.questions[str(run)]) for run in runs[:3]] == [QUESTIONS[:4]] * 3

    outputs, _ = write_report(analyze_cfg(tmp_path / "runs", "out", "protocol=cot"))
    with open(outputs["table"]) as f:
        table = list(csv.DictReader(f))
    assert [(float(r["accuracy"]), r["protocol"]) for r in table] \
        == [((k - 2) / 4, "cot") for k in (3, 4, 5)]
    answers = outputs["questions"].read_text().splitlines()
    assert len(answers) == 1 + 3 * 4  # the cot lines only


def test_a_protocol_no_run_has_is_named(analyze_cfg, tmp_path):
    trained_run(tmp_path / "runs", 1000)
    with pytest.raises(EntigraphError, match=r"protocol=cot found nothing .*"
                                             r"entigraph eval run=<run folder> "
                                             r"eval.protocols=\[cot\]"):
        write_report(analyze_cfg(tmp_path / "runs", "out", "protocol=cot"))


def test_a_wandb_run_gives_the_protocol_asked_for():
    config = {"eval": {"protocols": ["mc"], "split": "all"}, "data": {}, "optim": {}}
    summary = {"accuracy": 0.5, "mc_accuracy": 0.5, "n_questions": 8, "cot_accuracy": 0.25,
               "cot_n_questions": 4, "cot_split": "test", "derived/synthetic_tokens_selected": 10}
    row = wandb_row("e/p/a", "train", config, summary, "cot")
    assert (row["accuracy"], row["n_questions"], row["protocol"], row["eval_split"]) \
        == (0.25, 4, "cot", "test")
    assert wandb_row("e/p/a", "train", config, summary)["accuracy"] == 0.5
    assert wandb_row("e/p/b", "train", config, {"accuracy": 0.5}, "cot") is None


# --- end to end ------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_run_adds_cot_to_runs_trained_with_mc(generated_root, tmp_path):
    """Train three tiny runs with the mc probe (W&B offline), add cot to them with `entigraph
    eval run=`, twice for one, and analyse either protocol."""
    runs_root = tmp_path / "runs"
    for tokens in (1024, 2048, 4096):
        out = entigraph("train", "experiment=smoke", f"paths.root={generated_root}",
                        f"paths.runs={runs_root}", f"data.synthetic_tokens={tokens}",
                        "tracker.mode=offline", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in runs_root.rglob("record.json"))
    trained = {run: record_of(run) for run in runs}
    cot = ["eval=cot", "eval.cot.num_samples=1", "eval.cot.max_new_tokens=8",
           "tracker.mode=offline"]
    first = entigraph("eval", f"run={runs[0]}", "eval.split=validation", "eval.limit=3", *cot,
                      cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for run in runs:  # the first run's cot again, on another split: replaced
        out = entigraph("eval", f"run={run}", "eval.split=test", "eval.limit=4", *cot,
                        cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "cot accuracy" in out.stdout and f"added to {run / 'record.json'}" in out.stdout
    assert not (tmp_path / "outputs").exists()  # nothing beside the runs

    for run in runs:
        record, before = record_of(run), trained[run]
        metrics = record["metrics"]
        assert {k: metrics[k] for k in before["metrics"]} == before["metrics"]  # mc: as trained
        assert (metrics["cot_n_questions"], metrics["cot_split"]) == (4, "test")
        assert 0 <= metrics["cot_accuracy"] <= 1 and 0 <= metrics["cot_parse_rate"] <= 1
        assert [(e["protocol"], e["split"], e["n_questions"]) for e in record["evaluations"]] \
            == [("cot", "validation", 3)] * (run == runs[0]) + [("cot", "test", 4)]
        protocols = [q["protocol"] for q in lines_of(run)]
        assert protocols == ["mc"] * 8 + ["cot"] * 4  # replaced, never duplicated
        # Training and each evaluation: one W&B run, resumed by the id in the record.
        wandb_id = record["wandb_run_id"]
        assert wandb_id and wandb_id == before["wandb_run_id"]
        offline = sorted((run / "wandb").glob("offline-run-*"))
        assert len(offline) == len(record["evaluations"]) + 1
        assert all(f"-{wandb_id}" in p.name for p in offline), offline
        assert b"cot_accuracy" in next(offline[-1].glob("*.wandb")).read_bytes()
        (table,) = offline[-1].rglob("questions_cot_*.table.json")
        assert len(json.loads(table.read_text())["data"]) == 4

    tables = {}
    for protocol in ("cot", "mc"):
        out = entigraph("analyze", f"input={runs_root}", f"output_dir={tmp_path / protocol}",
                        f"protocol={protocol}", "fit.bootstrap_iterations=5", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        with open(tmp_path / protocol / "results.csv") as f:
            tables[protocol] = {r["run"]: r for r in csv.DictReader(f)}
    for run in runs:
        metrics = record_of(run)["metrics"]
        for protocol, row in ((p, tables[p][str(run)]) for p in ("cot", "mc")):
            assert row["protocol"] == protocol
            assert float(row["accuracy"]) == pytest.approx(metrics[f"{protocol}_accuracy"])
        assert tables["mc"][str(run)]["n_questions"] == "8"
        assert (tables["cot"][str(run)]["n_questions"], tables["cot"][str(run)]["eval_split"]) \
            == ("4", "test")
