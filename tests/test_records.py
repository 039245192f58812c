import json

import pytest
from omegaconf import OmegaConf

from entigraph.records import RECORD, read_record, run_record, write_atomic


def test_completed_run_writes_config_and_record(tmp_path):
    run = tmp_path / "run"
    with run_record(run, "train", {"optim": {"lr": 0.1}}) as record:
        assert read_record(run)["status"] == "running"
        record.set_derived(steps=3)
        record.log(1, loss=2.5)
        record.set_metrics(accuracy=0.5)
    data = read_record(run)
    assert data["status"] == "completed" and data["error"] is None
    assert data["metrics"] == {"accuracy": 0.5} and data["derived"] == {"steps": 3}
    assert data["history"] == [{"step": 1, "loss": 2.5}]
    assert data["ended_at"] and data["duration_s"] >= 0
    assert "lr: 0.1" in (run / "config.yaml").read_text()
    environment = data["environment"]
    assert {"torch", "transformers", "accelerate", "lm-eval"} <= set(environment["versions"])
    assert len(environment["git"]["commit"]) == 40  # the tests run from a checkout
    assert environment["gpus"]["count"] == 0 and environment["world_size"] == 1


def test_failed_run_is_finalised_with_its_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_record(run, "train", {}) as record:
            record.set_metrics(partial=1)
            raise RuntimeError("out of memory")
    data = read_record(run)
    assert data["status"] == "failed"
    assert data["error"] == "RuntimeError: out of memory"
    assert "out of memory" in data["traceback"]
    assert data["metrics"] == {"partial": 1} and data["ended_at"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, lambda: SystemExit(-1)])
def test_a_run_stopped_by_ctrl_c_or_a_requeue_is_interrupted_not_failed(tmp_path, stop):
    """Ctrl-C, or submitit's SystemExit as it requeues a preempted SLURM job: the next attempt
    resumes the run, which did not fail."""
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        with run_record(tmp_path, "train", {}):
            raise stop()
    record = read_record(tmp_path)
    assert record["status"] == "interrupted" and record["attempts"][-1]["outcome"] == "interrupted"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_atomic(tmp_path / "a.json", "1")
    write_atomic(tmp_path / "a.json", "2")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "2"


def test_wandb_offline_mirror_gets_config_but_never_the_api_key(tmp_path, monkeypatch):
    secret = "sk-test-" + "x" * 32
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = OmegaConf.create({"mode": "auto", "project": "entigraph-test", "entity": None,
                                "group": "g1", "tags": ["t1"]})
    config = {"run_name": "r1", "generator": {"api_key_env": "OPENAI_API_KEY"},
              "optim": {"lr": 0.000123}, "synthesis": {"method": "rephrase"},
              "preset": "paper_rephrase"}
    with run_record(tmp_path / "run", "train", config, tracker) as record:
        record.log(1, loss=1.5)
        record.set_metrics(accuracy=0.25)
        record.table("questions", [{"question_id": "q-7", "correct": True}])
    import wandb
    wandb.teardown()  # wandb-core writes the offline log in the background; this waits for it
    logs = list((tmp_path / "run").rglob("*.wandb"))
    assert logs, "offline W&B run wrote no log"
    blob = logs[0].read_bytes()
    assert b"0.000123" in blob and b"OPENAI_API_KEY" in blob  # the config, with the key's name only
    assert all(tag in blob for tag in (b"t1", b"method:rephrase", b"preset:paper_rephrase"))
    (table,) = (tmp_path / "run").rglob("questions_*.table.json")
    assert json.loads(table.read_text())["data"] == [["q-7", True]]
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert json.loads((tmp_path / "run" / RECORD).read_text())["status"] == "completed"


def test_only_the_main_process_writes_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # a second process of `accelerate launch`
    with run_record(tmp_path / "run", "train", {"x": 1}) as record:
        record.set_metrics(accuracy=0.5)
    assert not (tmp_path / "run").exists()


def test_every_attempt_is_kept_and_a_kill_before_the_resume_point_loses_no_history(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_record(run, "train", {}) as record:
            record.log(1, loss=3.0)
            record.log(2, loss=2.0)
            raise RuntimeError("preempted")
    # A second attempt killed (SIGKILL: no finish) while tokenising, before it knew where to
    # resume: the record still holds the first attempt's curve.
    from entigraph.records import RunRecord

    RunRecord(run, "train")
    assert [h["step"] for h in read_record(run)["history"]] == [1, 2]
    with run_record(run, "train", {}) as record:
        record.resume_history(1)  # its checkpoint was at step 1
        record.log(2, loss=1.9)
    data = read_record(run)
    assert [(h["step"], h["loss"]) for h in data["history"]] == [(1, 3.0), (2, 1.9)]
    assert [a["outcome"] for a in data["attempts"]] == ["failed", "interrupted", "completed"]
    first, killed, last = data["attempts"]
    assert data["started_at"] == first["started_at"] and killed["ended_at"] and killed["host"]
    assert data["duration_s"] == pytest.approx(sum(a["duration_s"] for a in data["attempts"]))


def test_the_attempts_of_a_run_are_one_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = OmegaConf.create({"mode": "auto", "project": "entigraph-test", "entity": None,
                                "group": None, "tags": []})
    ids = []
    for attempt in range(2):
        with run_record(tmp_path / "run", "train", {"run_name": "r"}, tracker) as record:
            record.log(attempt + 1, loss=1.0)
        ids.append(read_record(tmp_path / "run")["wandb_run_id"])
    import wandb
    wandb.teardown()
    assert ids[0] and ids[0] == ids[1]
    runs = sorted(p.name for p in (tmp_path / "run").rglob("offline-run-*"))
    # offline-run-<time>-<id>, "-1" appended when both attempts start in the same second
    assert len(runs) == 2 and all(f"-{ids[0]}" in name for name in runs), runs
