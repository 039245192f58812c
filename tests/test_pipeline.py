"""End to end: the real commands, small, in a temporary folder."""
import json
from pathlib import Path

import pytest

from cli import entigraph

pytestmark = pytest.mark.slow


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "runs").rglob("record.json"))]


def test_demo_end_to_end(compose, tmp_path):
    """The demo's own command and code paths on a smaller world and grid (the full demo is
    measured in the README)."""
    cfg = compose("demo")
    assert list(cfg.sweep.grid["synthesis.method"]) == ["entigraph", "rephrase", "raw"]
    assert len(cfg.sweep.grid["data.synthetic_tokens"]) >= 5 and cfg.data.repeat
    budgets = [1024, 2048, 4096]
    out = entigraph("demo", f"paths.root={tmp_path}/demo", "corpus.people=8",
                    f"sweep.grid={{synthesis.method:[entigraph,rephrase,raw],"
                    f"data.synthetic_tokens:[{','.join(map(str, budgets))}]}}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = records(tmp_path / "demo")
    assert len(runs) == 9
    for run in runs:
        assert run["status"] == "completed"
        assert run["metrics"]["n_questions"] == 32  # every question of the 8-person world
        assert run["derived"]["synthetic_tokens_selected"] in budgets
        assert len((Path(run["run_dir"]) / "questions.jsonl").read_text().splitlines()) == 32
    document = json.loads((tmp_path / "demo" / "analysis" / "fit.json").read_text())
    assert sorted(document["slices"]) == ["method=entigraph", "method=raw", "method=rephrase"]
    assert document["comparison"]["decision_accuracy"]["target_tokens"] == budgets[-1]
    plot = tmp_path / "demo" / "analysis" / "accuracy_vs_tokens.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The outcome in two lines, then where the figure is.
    tail = out.stdout.strip().splitlines()[-3:]
    assert tail[0].startswith("accuracy at 4,096 synthetic tokens (chance 0.25): entigraph ")
    assert tail[1].startswith("entigraph − raw = ") and "entigraph − rephrase = " in tail[1]
    assert tail[2] == f"figure: {plot}"


def test_sweep_survives_a_failing_point_and_rerun_skips_completed(generated_root, tmp_path):
    grid = "sweep.grid={data.synthetic_tokens:[1024,2048,99999999]}"
    args = ("sweep", "experiment=smoke", grid, f"paths.root={generated_root}", f"paths.runs={tmp_path}/runs")
    first = entigraph(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]  # after running every other point
    assert "2/3 runs completed" in first.stdout
    assert "1 of 3 runs failed" in first.stderr.strip().splitlines()[-1]
    status = {r["derived"].get("synthetic_tokens_selected", "failed"): r["status"]
              for r in records(tmp_path)}
    assert status == {1024: "completed", 2048: "completed", "failed": "failed"}
    failed = next(r for r in records(tmp_path) if r["status"] == "failed")
    assert "exceeds the" in failed["error"]

    second = entigraph(*args, cwd=tmp_path)
    assert "already completed; skipping" in second.stdout + second.stderr
    assert second.stdout.count("skipping") + second.stderr.count("skipping") == 2


def test_train_without_a_corpus_says_to_generate(tmp_path):
    out = entigraph("train", "experiment=smoke", f"paths.root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert "run `entigraph generate` first" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_eval_command_scores_a_trained_model(generated_root, tmp_path):
    train = entigraph("train", "experiment=smoke", f"paths.root={generated_root}",
                      f"paths.runs={tmp_path}/runs", "eval.every_steps=2", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    (run,) = records(tmp_path)
    # the validation curve, every 2 of the 4 steps, beside the loss curve
    curve = [(h["step"], h["val_accuracy"]) for h in run["history"] if "val_accuracy" in h]
    assert [step for step, _ in curve] == [2, 4] and all(0 <= a <= 1 for _, a in curve)
    assert [h["step"] for h in run["history"] if "loss" in h] == [4]  # smoke logs every 10

    model = Path(run["run_dir"]) / "model"
    out = entigraph("eval", f"checkpoint={model}", f"paths.root={tmp_path}/ev", "eval.limit=8",
                    "eval.cot.num_samples=2", "eval.cot.max_new_tokens=16", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cot accuracy" in out.stdout and "mc accuracy" in out.stdout and "parse rate" in out.stdout
    (evaluated,) = records(tmp_path / "ev")
    assert evaluated["job_type"] == "eval" and evaluated["status"] == "completed"
    metrics = evaluated["metrics"]
    assert metrics["n_questions"] == 8 and metrics["accuracy"] == metrics["cot_accuracy"]
    assert 0 <= metrics["cot_parse_rate"] <= 1 and metrics["mc_parse_rate"] == 1
    lines = [json.loads(line) for line in
             (Path(evaluated["run_dir"]) / "questions.jsonl").read_text().splitlines()]
    assert sorted(r["protocol"] for r in lines) == ["cot"] * 8 + ["mc"] * 8

