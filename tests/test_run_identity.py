"""One run folder, one run: concurrent commands, a changed config, and kills at any point,
through `entigraph train` as a user runs it."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import entigraph

pytestmark = pytest.mark.slow
SMALL = ["model.hidden_size=64", "model.num_heads=2", "data.block_size=64",
         "data.synthetic_tokens=40000", "trainer.epochs=2", "trainer.batch_size=8",
         "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.checkpoint_every=5",
         "optim.lr=1e-3", "eval.after_training=false", "tracker.mode=disabled"]


def record_of(run_dir: Path) -> dict:
    path = run_dir / "record.json"
    return json.loads(path.read_text()) if path.exists() else {}


def train(root, run_dir, *extra, wait=True):
    return entigraph("train", f"paths.root={root}", f"run_dir={run_dir}", *SMALL, *extra,
                     cwd=root, wait=wait)


@pytest.mark.parametrize("processes", [1, 2])
def test_two_commands_of_one_run_train_it_once(generated_root, tmp_path, processes):
    """Started together, one trains and the other waits, then skips; a run launched on two
    processes is locked by its launching command, for all its processes."""
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "entigraph", "train",
                               f"paths.root={generated_root}", f"run_dir={run_dir}", *SMALL,
                               f"trainer.launch.processes={processes}"],
                              cwd=generated_root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert sum("already completed; skipping" in out for out in outputs) == 1
    record = record_of(run_dir)
    assert record["status"] == "completed" and len(record["attempts"]) == 1
    assert record["derived"]["devices"] == processes

    # A completed run's folder never takes a run of another config.
    before = (run_dir / "record.json").read_text()
    changed = train(generated_root, run_dir, "optim.warmup_ratio=0.2")
    assert changed.returncode == 2
    assert "holds a completed run of another config (it differs at optim.warmup_ratio)" \
        in changed.stderr and changed.stderr.strip().count("\n") == 0
    assert (run_dir / "record.json").read_text() == before


def test_kills_in_training_tokenising_and_before_the_resume_point_lose_no_history(
        generated_root, tmp_path):
    """Killed in training, as soon as the next attempt is recorded, and while the next one
    tokenises its replay file: one history with no gap, every attempt listed, one W&B run."""
    run_dir, tokens = tmp_path / "run", generated_root / "tokens"
    replay = tmp_path / "replay.jsonl"  # ~20 MB: tokenising it takes seconds
    words = [f"word{i}" for i in range(5000)]
    replay.write_text("".join(json.dumps({"text": " ".join(words[(i * 7 + j) % 5000]
                                                           for j in range(300))}) + "\n"
                              for i in range(8000)))
    args = [*(a for a in SMALL if not a.startswith("tracker.")), "tracker.mode=offline",
            f"data.replay_path={replay}", "data.mixing_ratio=0.1"]

    def attempt(wait=True):
        return entigraph("train", f"paths.root={generated_root}", f"run_dir={run_dir}", *args,
                         cwd=generated_root, wait=wait)

    first = attempt(wait=False)
    deadline = time.monotonic() + 300
    state = run_dir / "checkpoint" / "trainer_state.json"
    while time.monotonic() < deadline and not (state.exists()
                                               and json.loads(state.read_text())["step"] >= 10):
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = record_of(run_dir)
    logged = [h["step"] for h in killed["history"]]
    assert logged and logged[-1] >= 10 and killed["wandb_run_id"]

    # Killed again as soon as its attempt is recorded: before it loads the model and knows
    # where it resumes. The first attempt's curve must survive.
    second = attempt(wait=False)
    while time.monotonic() < deadline and len(record_of(run_dir).get("attempts", [])) < 2:
        time.sleep(0.01)
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert [h["step"] for h in record_of(run_dir)["history"]][:len(logged)] == logged

    # Killed while tokenising: the replay file's token cache is made again, into a temporary
    # folder that the kill leaves behind.
    for cache in tokens.glob("replay-*"):
        shutil.rmtree(cache)
    third = attempt(wait=False)
    while time.monotonic() < deadline and third.poll() is None \
            and not list(tokens.glob(".replay-*.tmp")):
        time.sleep(0.01)
    third.send_signal(signal.SIGKILL)
    third.wait()
    assert list(tokens.glob(".replay-*.tmp")) and not list(tokens.glob("replay-*")), \
        "not killed while tokenising"
    assert [h["step"] for h in record_of(run_dir)["history"]][:len(logged)] == logged

    fourth = attempt()
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    record = record_of(run_dir)
    assert record["status"] == "completed"
    assert [h["step"] for h in record["history"]] == list(range(1, record["derived"]["steps"] + 1))
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted"] * 3 + ["completed"]
    assert record["started_at"] == record["attempts"][0]["started_at"]
    assert record["wandb_run_id"] == killed["wandb_run_id"]
    assert not list(tokens.glob(".replay-*.tmp"))  # the stale folder removed when remade


def test_a_kill_during_evaluation_evaluates_again_without_training_again(generated_root,
                                                                         tmp_path):
    run_dir = tmp_path / "run"
    evaluated = ["eval.after_training=true", "tracker.mode=offline"]
    first = train(generated_root, run_dir, *evaluated, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run_dir / "eval").exists():
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)  # the model is saved; its questions are being scored
    first.wait()
    killed = record_of(run_dir)
    assert killed["status"] == "running" and "accuracy" not in killed["metrics"]

    second = train(generated_root, run_dir, *evaluated)
    assert second.returncode == 0, second.stderr[-2000:]
    record = record_of(run_dir)
    steps = record["derived"]["steps"]
    assert record["status"] == "completed" and record["metrics"]["accuracy"] is not None
    assert record["derived"]["resumed_from_step"] == steps  # the last checkpoint: no retraining
    assert [h["step"] for h in record["history"]] == list(range(1, steps + 1))
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted", "completed"]
    assert record["wandb_run_id"] == killed["wandb_run_id"] is not None
    assert not (run_dir / "checkpoint").exists()


def test_a_regenerated_corpus_is_another_run(tmp_path):
    """The corpus is identified by its texts: regenerated (same folder, other texts), its
    runs get folders of their own, and a completed run on the old texts is never reused."""
    def train_smoke(*extra):
        return entigraph("train", f"paths.root={tmp_path}", "experiment=smoke",
                         "trainer.checkpoint_every=0", "eval.after_training=false",
                         "tracker.mode=disabled", *extra, cwd=tmp_path)

    assert entigraph("generate", f"paths.root={tmp_path}", cwd=tmp_path).returncode == 0
    first = train_smoke()
    assert first.returncode == 0, first.stderr[-2000:]
    (old_run,) = [p.parent for p in tmp_path.rglob("record.json")]
    # Its manifest rewritten over the same texts (another price), the corpus is the same one.
    repriced = entigraph("generate", f"paths.root={tmp_path}", "generator.price_input_per_mtok=2",
                         cwd=tmp_path)
    assert repriced.returncode == 0, repriced.stderr[-2000:]
    assert "already completed" in train_smoke().stdout
    regenerated = entigraph("generate", f"paths.root={tmp_path}", "synthesis.max_triples=3",
                            cwd=tmp_path)
    assert regenerated.returncode == 0, regenerated.stderr[-2000:]
    second = train_smoke()
    assert second.returncode == 0 and "already completed" not in second.stdout
    runs = {p.parent for p in tmp_path.rglob("record.json")}
    assert len(runs) == 2 and old_run in runs
    assert old_run.name.rsplit("-", 1)[0] == (runs - {old_run}).pop().name.rsplit("-", 1)[0]
    named = train_smoke(f"run_dir={old_run}")
    assert named.returncode == 2 and "earlier version of the corpus" in named.stderr
