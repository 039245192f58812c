"""Analysis sources (run folders, Optuna studies, W&B rows), slices, incompatible tables, the
W&B mirror of a report, and the command line."""
import glob
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from cli import entigraph
from entigraph.analysis.collect import read_runs, read_table
from entigraph.analysis.curves import points_of, slices
from entigraph.analysis.report import write_report
from entigraph.analysis.sources import optuna_results, wandb_row
from entigraph.errors import EntigraphError

QUESTIONS = [f"q{i}" for i in range(40)]


def make_run(root: Path, tokens: int, accuracy: float, lr=1e-4, mixing_ratio=0.0,
             protocols=("mc",), seed=0) -> Path:
    """A completed training run folder as `entigraph train` writes it; its per-question lines
    carry `accuracy` for the headline protocol and the opposite outcomes for any other."""
    run = root / f"tok{tokens}_mix{mixing_ratio}_lr{lr}_seed{seed}"
    run.mkdir(parents=True)
    config = {"seed": seed, "corpus": {"name": "demo"}, "synthesis": {"method": "entigraph"},
              "model": {"name": "tiny", "pretrained": None}, "trainer": {"epochs": 2},
              "data": {"mixing_ratio": mixing_ratio, "mixing_mode": "add"},
              "optim": {"lr": lr}, "eval": {"protocols": list(protocols), "split": "all"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    record = {"status": "completed", "job_type": "train",
              "metrics": {"accuracy": accuracy, "n_questions": len(QUESTIONS)},
              "derived": {"synthetic_tokens_selected": tokens, "steps": 10}}
    (run / "record.json").write_text(json.dumps(record))
    right = round(accuracy * len(QUESTIONS))
    lines = [{"question_id": q, "correct": (i < right) == (p == protocols[0]), "protocol": p}
             for p in protocols for i, q in enumerate(QUESTIONS)]
    (run / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def sweep(root: Path, **kwargs) -> list[Path]:
    return [make_run(root, 10 ** k, 0.1 * (k - 2), **kwargs) for k in (3, 4, 5, 6)]


@pytest.fixture
def analyze_cfg(compose, tmp_path):
    def make(source, *overrides):
        return compose("analyze", [f"input={source}", f"output_dir={tmp_path / 'out'}",
                                   "fit.bootstrap_iterations=20", *overrides])
    return make


def test_run_folders_give_rows_and_headline_protocol_questions(tmp_path):
    sweep(tmp_path / "runs", protocols=("cot", "mc"))
    make_run(tmp_path / "runs", 10 ** 7, 0.9, protocols=("cot", "mc")).joinpath(
        "record.json").write_text(json.dumps({"status": "running", "job_type": "train",
                                              "metrics": {}, "derived": {}}))
    results = read_runs(str(tmp_path / "runs"))
    assert sorted(r["synthetic_tokens"] for r in results.rows) == [10 ** 3, 10 ** 4, 10 ** 5, 10 ** 6]
    for row in results.rows:
        answers = results.questions[row["run"]]
        assert row["protocol"] == "cot" and len(answers) == len(QUESTIONS)
        assert np.mean(list(answers.values())) == pytest.approx(row["accuracy"])


def test_accuracies_over_the_questions_scored_are_weighed_by_them(analyze_cfg, tmp_path):
    """eval.cot.unparsed=drop scores fewer questions than were asked: the binomial fit counts
    those scored; a run that does not say (older records) counts all it was asked."""
    runs = sweep(tmp_path / "runs")
    for run in runs[1:]:
        record = json.loads((run / "record.json").read_text())
        record["metrics"]["n_scored"] = 30  # ten unparsed answers left out of the accuracy
        (run / "record.json").write_text(json.dumps(record))
    def weights(rows: list[dict]) -> dict[int, float]:
        return {r["synthetic_tokens"]: n for r, n in zip(rows, points_of(rows).n)}

    results = read_runs(str(tmp_path / "runs"))
    assert [r["n_questions"] for r in results.rows] == [40] * 4
    assert weights(results.rows) == {10 ** 3: 40, 10 ** 4: 30, 10 ** 5: 30, 10 ** 6: 30}
    outputs, _ = write_report(analyze_cfg(tmp_path / "runs"))
    assert weights(read_table(outputs["table"]).rows) == weights(results.rows)  # the cache keeps it


def test_per_question_records_give_a_paired_question_bootstrap(analyze_cfg, tmp_path):
    sweep(tmp_path / "runs")
    outputs, document = write_report(analyze_cfg(tmp_path / "runs"))
    bootstrap = document["slices"][document["headline_slice"]]["bootstrap"]
    assert bootstrap["questions"] == "questions resampled (paired across runs)"
    assert document["families"]["loglinear"]["intervals"]["questions"]["beta"]
    assert len(outputs["questions"].read_text().splitlines()) == 1 + 4 * len(QUESTIONS)
    # The cached tables alone reproduce the fit, question bootstrap included.
    _, again = write_report(analyze_cfg(outputs["table"]))
    assert again["families"] == document["families"]


def test_a_glob_of_run_folders(analyze_cfg, tmp_path):
    sweep(tmp_path / "runs")
    make_run(tmp_path / "other", 10 ** 2, 0.5)
    _, document = write_report(analyze_cfg(f"{tmp_path}/runs/tok*"))
    assert document["slices"][document["headline_slice"]]["runs"] == 4


def test_runs_of_another_protocol_are_refused_as_incompatible(analyze_cfg, tmp_path):
    sweep(tmp_path / "runs")
    make_run(tmp_path / "runs", 10 ** 7, 0.6, protocols=("cot",))
    with pytest.raises(EntigraphError, match=r"mixes incompatible runs: protocol differs "
                                             r"\(mc \(4 runs\), cot \(1 runs\)\).*\+where.protocol=mc"):
        write_report(analyze_cfg(tmp_path / "runs"))
    _, document = write_report(analyze_cfg(tmp_path / "runs", "+where.protocol=mc"))
    assert document["slices"][document["headline_slice"]]["runs"] == 4


def rows(spec):
    return [{"run": f"r{i}", "group": f"mix{m}_lr{lr}", "mixing_ratio": m, "lr": lr,
             "synthetic_tokens": t, "accuracy": a} for i, (m, lr, t, a) in enumerate(spec)]


def test_slices_per_group_and_best_lr_envelope():
    table = rows([(0.1, 1e-4, 1000, 0.3), (0.1, 3e-4, 1000, 0.4),
                  (0.1, 1e-4, 2000, 0.5), (0.1, 3e-4, 2000, 0.45), (0.5, 1e-4, 1000, 0.2)])
    assert sorted(slices(table, "group")) == ["mix0.1_lr0.0001", "mix0.1_lr0.0003", "mix0.5_lr0.0001"]
    envelope = slices(table, "envelope")
    assert sorted(envelope) == ["mix0.1_bestlr", "mix0.5_bestlr"]
    assert [r["run"] for r in envelope["mix0.1_bestlr"]] == ["r1", "r2"]  # best LR at each budget
    assert len(slices(table, "none")["all"]) == 5


def test_optuna_study_rows_from_run_folders_and_from_params(tmp_path):
    run = make_run(tmp_path / "runs", 10 ** 5, 0.3)
    journal = tmp_path / "study.log"
    for storage in (f"sqlite:///{tmp_path / 'study.db'}", str(journal)):
        backend = storage if "://" in storage else optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage))
        study = optuna.create_study(study_name="budget", storage=backend, direction="maximize")
        space = {"data.synthetic_tokens": optuna.distributions.CategoricalDistribution(
                     [1000, 10000, 10 ** 5]),
                 "optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
        for tokens, accuracy, attrs in [(1000, 0.1, {}), (10000, 0.2, {}),
                                        (10 ** 5, 0.3, {"run_dir": str(run)})]:
            study.add_trial(optuna.trial.create_trial(
                params={"data.synthetic_tokens": tokens, "optim.lr": 1e-4}, distributions=space,
                value=accuracy, user_attrs=attrs))
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))

        results = optuna_results(storage, None)  # the only study in the storage
        by_tokens = {r["synthetic_tokens"]: r for r in results.rows}
        assert sorted(by_tokens) == [1000, 10000, 10 ** 5]
        assert by_tokens[1000]["accuracy"] == 0.1 and by_tokens[1000]["lr"] == 1e-4
        assert by_tokens[1000]["source"] == "optuna" and by_tokens[1000]["run"] == "budget#0"
        assert by_tokens[10 ** 5]["run"] == str(run) and str(run) in results.questions
    with pytest.raises(EntigraphError, match="set study=<name>; studies there: budget"):
        optuna_results(str(journal), "other")


def test_wandb_run_maps_to_a_row():
    config = {"seed": 1, "data": {"mixing_ratio": 0.1, "mixing_mode": "replace"},
              "optim": {"lr": 5e-6}, "model": {"name": "llama3_8b", "pretrained": "meta/llama3"},
              "eval": {"protocols": ["cot", "mc"], "split": "test"}, "corpus": {"name": "quality"}}
    summary = {"accuracy": 0.56, "n_questions": 4609, "derived/synthetic_tokens_selected": 455_000_000,
               "derived/steps": 100}
    row = wandb_row("ent/proj/abc", "train", config, summary)
    assert row["synthetic_tokens"] == 455_000_000 and row["accuracy"] == 0.56
    assert (row["model"], row["protocol"], row["eval_split"]) == ("meta/llama3", "cot", "test")
    assert row["group"] == "mix0.1_lr5e-06" and row["run"] == "ent/proj/abc"
    assert wandb_row("ent/proj/def", "eval", config, summary) is None
    assert wandb_row("ent/proj/ghi", "train", config, {"derived/steps": 3}) is None


def test_report_is_logged_to_an_offline_wandb_run(analyze_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep(tmp_path / "runs")
    outputs, _ = write_report(analyze_cfg(tmp_path / "runs", "wandb.project=entigraph-test"))
    (run_dir,) = glob.glob(str(tmp_path / "out" / "wandb" / "offline-run-*"))
    assert glob.glob(f"{run_dir}/run-*.wandb")
    images = glob.glob(f"{run_dir}/files/media/images/analysis/*.png")
    assert sorted(Path(i).name.split("_")[0] for i in images) == ["plot", "residuals"]
    (table,) = glob.glob(f"{run_dir}/files/media/table/analysis/results_*.table.json")
    assert len(json.loads(Path(table).read_text())["data"]) == 4


def test_cli_writes_the_report_and_refuses_bad_input_in_one_line(tmp_path):
    sweep(tmp_path / "runs")
    out = entigraph("analyze", f"input={tmp_path}/runs", f"output_dir={tmp_path}/out",
                    "fit.bootstrap_iterations=10", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best family (mix0.0_lr0.0001, by heldout_abs_error)" in out.stdout
    assert (tmp_path / "out" / "fit.json").exists()
    bad = entigraph("analyze", f"input={tmp_path}/missing.csv", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "missing.csv: no such file" in bad.stderr
