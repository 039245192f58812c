"""Slices compared with one another (slice_by=[method]): one-point slices, paired differences,
token multipliers, decision accuracy, the refusals of slices that mix recipes, sources with a
single budget a slice, and the W&B mirror of a comparison."""
import csv
import glob
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import yaml

from entigraph.analysis.compare import PAIRED, decision_accuracy
from entigraph.analysis.report import describe, write_report
from entigraph.errors import EntigraphError
from test_analysis_sources import make_run

BUDGETS = [10 ** k for k in (3, 4, 5, 6)]


def table(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def line(method: str, base: float):
    """Noise-free points on acc = base + 0.05 log10(tokens), 2,000 questions a run."""
    return [{"method": method, "tokens": t, "accuracy": base + 0.05 * np.log10(t),
             "questions": 2000} for t in BUDGETS]


def method_run(root: Path, method: str, tokens: int, accuracy: float, **kwargs) -> Path:
    run = make_run(root / method, tokens, accuracy, **kwargs)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["synthesis"]["method"] = method
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_a_one_point_method_beside_curves_with_multipliers_and_decision_accuracy(analyze_cfg,
                                                                                  tmp_path):
    raw = {"method": "raw", "tokens": 10 ** 6, "accuracy": 0.2, "questions": 2000}
    source = table(tmp_path / "methods.csv", [*line("entigraph", 0.1), *line("rephrase", 0.05), raw])
    outputs, document = write_report(analyze_cfg(source, "out", "slice_by=[method]",
                                                 "fit.families=[loglinear]", iterations=50))
    slices = document["slices"]
    assert sorted(slices) == ["method=entigraph", "method=raw", "method=rephrase"]
    (point,) = slices["method=raw"]["by_budget"]  # one budget: a point with its interval
    assert slices["method=raw"]["best"] is None and point["tokens"] == 10 ** 6
    assert point["interval"][0] < 0.2 < point["interval"][1]

    comparison = document["comparison"]
    diffs = {(d["a"], d["b"], d["tokens"]): d for d in comparison["differences"]}
    assert len(diffs) == 4 + 1 + 1  # entigraph-rephrase at 4 budgets; raw with each at 10^6
    gap = diffs[("method=entigraph", "method=rephrase", 10 ** 4)]
    assert gap["difference"] == pytest.approx(0.05)
    assert gap["interval"][0] < 0.05 < gap["interval"][1]
    assert gap["interval_from"].startswith("independent: binomial redraw")
    # Rephrase's best is 0.35 at 10^6 tokens; EntiGraph's line reaches it at 10^5: 10x fewer.
    multiplier = next(m for m in comparison["token_multipliers"]
                      if (m["a"], m["b"]) == ("method=entigraph", "method=rephrase"))
    assert multiplier["a_tokens"] == pytest.approx(1e5, rel=1e-3)
    assert multiplier["multiplier"] == pytest.approx(10, rel=1e-3)
    assert multiplier["interval"][0] < 10 < multiplier["interval"][1]
    assert not any(m["a"] == "method=raw" for m in comparison["token_multipliers"])  # no curve
    # Only EntiGraph and Rephrase share the smaller budgets: their order never changes.
    decision = comparison["decision_accuracy"]
    assert decision["target_tokens"] == 10 ** 6 and decision["overall"] == 1.0
    assert [b["pairs"] for b in decision["by_budget"]] == [1, 1, 1]
    text = outputs["fits_md"].read_text()
    assert "# Comparison of slices" in text and "| 10,000 | method=entigraph | method=rephrase | +5.00 |" in text
    assert "decision accuracy: 1.000" in describe(document)


def test_decision_accuracy_counts_pairs_ranked_as_at_the_largest_budget():
    def slice_(name, means):
        return SimpleNamespace(name=name, summary={"by_budget": [
            {"tokens": t, "accuracy": a} for t, a in means.items()]})
    fitted = [slice_("a", {1: 0.5, 2: 0.6, 3: 0.7}), slice_("b", {1: 0.6, 2: 0.5, 3: 0.6}),
              slice_("c", {1: 0.4, 2: 0.4, 3: 0.5}), slice_("d", {1: 0.9})]
    decision = decision_accuracy(fitted)
    # At 3: a > b > c. At 1, a < b disagrees (2 of 3); at 2 all agree; d is not at 3.
    assert decision["target_tokens"] == 3
    assert [(b["tokens"], b["pairs"], b["agreeing"]) for b in decision["by_budget"]] == [
        (1, 3, 2.0), (2, 3, 3.0)]
    assert decision["overall"] == pytest.approx(5 / 6)
    tie = decision_accuracy([slice_("a", {1: 0.5, 2: 0.6}), slice_("b", {1: 0.5, 2: 0.5})])
    assert tie["overall"] == 0.5  # a tie decides nothing: half
    assert decision_accuracy([slice_("a", {1: 0.5}), slice_("b", {2: 0.5})])["overall"] is None


def test_runs_that_answered_the_same_questions_are_compared_paired(analyze_cfg, tmp_path):
    runs = tmp_path / "runs"
    for k, tokens in enumerate(BUDGETS):
        method_run(runs, "entigraph", tokens, 0.3 + 0.1 * k)
        method_run(runs, "rephrase", tokens, 0.25 + 0.05 * k)
    _, document = write_report(analyze_cfg(runs, "out", "slice_by=[method]", iterations=100))
    diffs = document["comparison"]["differences"]
    assert [d["tokens"] for d in diffs] == BUDGETS
    for k, d in enumerate(diffs):
        a, b = 0.3 + 0.1 * k, 0.25 + 0.05 * k
        assert d["difference"] == pytest.approx(a - b, abs=1e-9) and d["interval_from"] == PAIRED
        assert d["interval"][0] <= a - b <= d["interval"][1]
        # The runs' right answers are nested, so resampling the same questions for both moves
        # them together: far narrower than two independent 40-question accuracies would give.
        unpaired = 2 * 1.96 * np.sqrt((a * (1 - a) + b * (1 - b)) / 40)
        assert d["interval"][1] - d["interval"][0] < 0.8 * unpaired

    # Sliced by group (the default), the two methods share one curve: refused, with the fix.
    with pytest.raises(EntigraphError, match=r"method differs \(entigraph \(4 runs\), rephrase "
                                             r"\(4 runs\)\); .*slice_by=\[method\]"):
        write_report(analyze_cfg(runs, "group"))
    # Sliced by method, a slice's runs must share the recipe too.
    method_run(runs, "rephrase", 10 ** 7, 0.6, lr=3e-4)
    with pytest.raises(EntigraphError, match=r"slice method=rephrase, mixes incompatible runs: lr "
                                             r"differs .*slice_by=\[method,lr\]"):
        write_report(analyze_cfg(runs, "lr", "slice_by=[method]"))


def test_an_optuna_study_over_a_continuous_lr_and_a_grid_with_one_finished_budget(analyze_cfg,
                                                                                   tmp_path):
    journal = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="lr", storage=storage, direction="maximize")
    space = {"data.synthetic_tokens": optuna.distributions.CategoricalDistribution([1000, 10000]),
             "optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    rng = np.random.default_rng(0)
    for i in range(6):  # every trial its own lr: a slice each under slice_by=group
        study.add_trial(optuna.trial.create_trial(
            params={"data.synthetic_tokens": [1000, 10000][i % 2],
                    "optim.lr": float(10 ** rng.uniform(-5, -3))},
            distributions=space, value=0.3 + 0.01 * i,
            user_attrs={"n_questions": 40, "n_scored": 40}))
    _, document = write_report(analyze_cfg(f"optuna:{journal}", "optuna"))
    assert len(document["slices"]) == 6 and document["best"] is None
    assert all(len(s["by_budget"]) == 1 for s in document["slices"].values())

    make_run(tmp_path / "grid", 10 ** 5, 0.3)  # a grid whose first budget alone has finished
    _, document = write_report(analyze_cfg(tmp_path / "grid", "grid"))
    (only,) = document["slices"].values()
    assert only["by_budget"][0]["accuracy"] == 0.3 and document["comparison"] == {}


def test_a_comparison_is_mirrored_to_wandb_with_a_line_plot(analyze_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = tmp_path / "runs"
    for k, tokens in enumerate(BUDGETS):
        method_run(runs, "entigraph", tokens, 0.3 + 0.1 * k)
        method_run(runs, "raw", tokens, 0.25)
    write_report(analyze_cfg(runs, "out", "slice_by=[method]", "wandb.project=entigraph-test",
                             "wandb.group=methods"))
    import wandb
    wandb.teardown()  # wandb-core writes the offline log in the background; this waits for it
    (run_dir,) = glob.glob(str(tmp_path / "out" / "wandb" / "offline-run-*"))
    tables = {Path(t).name.split("_")[0]: json.loads(Path(t).read_text()) for t in
              glob.glob(f"{run_dir}/files/media/table/analysis/*.table.json")}
    assert {"results", "curves", "differences"} <= set(tables)
    assert {row[0] for row in tables["curves"]["data"]} == {"method=entigraph", "method=raw"}
    assert len(tables["differences"]["data"]) == 4
    assert b"methods" in Path(glob.glob(f"{run_dir}/run-*.wandb")[0]).read_bytes()  # the group
