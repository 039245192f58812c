"""The trainer: exact budgets, mixing, and resuming a killed run (the process, not a function)."""
import json
import signal
import time
from pathlib import Path

import pytest

from cli import entigraph

pytestmark = pytest.mark.slow
SMALL = ["model.hidden_size=64", "model.num_heads=2", "data.block_size=64",
         "data.synthetic_tokens=40000", "trainer.epochs=2", "trainer.batch_size=8",
         "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.checkpoint_every=5",
         "optim.lr=1e-3", "eval.after_training=false", "tracker.mode=disabled"]


@pytest.fixture
def root(generated_root):
    return generated_root


def only_record(runs: Path) -> tuple[Path, dict]:
    (path,) = runs.rglob("record.json")
    return path.parent, json.loads(path.read_text())


def test_killed_training_resumes_and_ends_like_an_uninterrupted_run(root, tmp_path):
    straight = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/a", *SMALL, cwd=root)
    assert straight.returncode == 0, straight.stderr[-2000:]
    _, reference = only_record(tmp_path / "a")

    proc = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/b", *SMALL,
                     cwd=root, wait=False)
    deadline = time.monotonic() + 300
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "b").rglob("checkpoint/trainer_state.json"))
        if found and json.loads(found[0].read_text())["step"] >= 10:
            state = json.loads(found[0].read_text())
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state and state["step"] < reference["derived"]["steps"], "killed too late to test"

    resumed = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/b", *SMALL, cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir, record = only_record(tmp_path / "b")
    assert record["status"] == "completed" and record["derived"]["resumed_from_step"] >= 10
    # Tolerance: CPU training is deterministic here; allow float noise of 1e-5 in the loss.
    assert record["metrics"]["train_loss"] == pytest.approx(reference["metrics"]["train_loss"],
                                                            abs=1e-5)
    assert [h["step"] for h in record["history"]] == list(range(1, record["derived"]["steps"] + 1))
    for ours, theirs in zip(record["history"], reference["history"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert ours["tokens_seen_synthetic"] == theirs["tokens_seen_synthetic"]
    assert not (run_dir / "checkpoint").exists()


def test_checkpoint_from_a_different_config_is_refused(root, tmp_path):
    proc = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}", *SMALL, cwd=root,
                     wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(tmp_path.rglob("checkpoint/trainer_state.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}", *SMALL,
                    "optim.weight_decay=0.5", cwd=root)
    assert out.returncode == 2
    assert "made with different optim" in out.stderr and out.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("mode,replay_share", [("add", 0.25), ("replace", 0.25)])
def test_mixing_logs_tokens_of_each_source(root, tmp_path, mode, replay_share):
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"text": f"Generic text number {i} about the weather "
                                                  f"and the markets of the world. " * 20}) + "\n"
                              for i in range(50)))
    out = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/runs", *SMALL,
                    "trainer.epochs=1", f"data.mixing_ratio={replay_share}",
                    f"data.mixing_mode={mode}", f"data.replay_path={replay}", cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    _, record = only_record(tmp_path / "runs")
    derived, last = record["derived"], record["history"][-1]
    assert last["tokens_seen_replay"] == derived["tokens_seen_replay"] > 0
    assert last["tokens_seen_synthetic"] == derived["tokens_seen_synthetic"]
    assert derived["replay_share"] == pytest.approx(replay_share, abs=0.1)
    if mode == "add":  # every synthetic block is still trained on
        assert derived["synthetic_tokens_trained"] == 40000 // 64 * 64
