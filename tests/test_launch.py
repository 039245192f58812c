"""trainer.launch: a run started as N processes by `entigraph train`, a grid job, an Optuna trial
and a W&B agent run alike, here as 2 CPU processes over gloo (accelerate launch)."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cli import entigraph
from entigraph.launch import accelerate_arguments, launches
from test_sweeps import SEARCH, agent_command, study, SWEEPS

# Eight steps with a validation evaluation every two (12 questions), on one or two processes.
CURVE = ["experiment=smoke", "trainer.checkpoint_every=0", "trainer.micro_batch_size=4",
         "data.synthetic_tokens=4096", "eval.every_steps=2", "eval.validation_share=0.6",
         "tracker.mode=disabled"]
TWO = "trainer.launch.processes=2"
CHECKPOINTED = [*(o for o in SEARCH if not o.startswith("trainer.checkpoint_every")),
                "trainer.checkpoint_every=1"]


def record_in(folder: Path) -> dict:
    (path,) = Path(folder).rglob("record.json")
    return json.loads(path.read_text())


def test_launch_arguments_and_when_a_process_launches(monkeypatch):
    cfg = OmegaConf.create({"trainer": {"launch": {"processes": 2, "accelerate_config": None}}})
    assert accelerate_arguments(cfg.trainer.launch)[:3] == ["--multi_gpu", "--num_processes", "2"]
    cfg.trainer.launch.accelerate_config = "launch/fsdp_8gpu.yaml"
    args = accelerate_arguments(cfg.trainer.launch)
    assert args[:2] == ["--config_file", "launch/fsdp_8gpu.yaml"] and "--multi_gpu" not in args
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launches(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process of a launched group never launches again
    assert not launches(cfg)
    cfg.trainer.launch.processes = 1
    monkeypatch.delenv("WORLD_SIZE")
    assert not launches(cfg)


def test_bad_launch_settings_fail_in_one_line(generated_root, tmp_path):
    cases = {"trainer.launch.processes": ["trainer.launch.processes=3"],  # 16 % (4 x 3)
             "trainer.launch.accelerate_config": ["trainer.launch.processes=2",
                                                  "trainer.launch.accelerate_config=nope.yaml"]}
    for key, overrides in cases.items():
        out = entigraph("train", f"paths.root={generated_root}", f"paths.runs={tmp_path}",
                        *overrides, cwd=generated_root)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], out.stderr
    assert not list(tmp_path.iterdir())


def test_checkpoints_are_due_by_steps_or_by_the_main_process_clock():
    import time

    from accelerate import Accelerator

    from entigraph.training import _checkpoint_due

    accelerator = Accelerator(cpu=True)
    steps = OmegaConf.create({"checkpoint_every": 10, "checkpoint_minutes": None})
    clock = OmegaConf.create({"checkpoint_every": 0, "checkpoint_minutes": 1.0})
    never = OmegaConf.create({"checkpoint_every": 0, "checkpoint_minutes": None})
    now, hour_ago = time.monotonic(), time.monotonic() - 3600
    assert [s for s in range(1, 26) if _checkpoint_due(accelerator, steps, s, 25, now)] == \
        [10, 20, 25]  # and the last step
    assert not _checkpoint_due(accelerator, clock, 3, 25, now)
    assert _checkpoint_due(accelerator, clock, 3, 25, hour_ago)
    assert _checkpoint_due(accelerator, clock, 25, 25, now)
    assert not any(_checkpoint_due(accelerator, never, s, 25, hour_ago) for s in (1, 25))


def test_the_pruning_callback_reaches_its_trial_from_another_process(tmp_path):
    import optuna

    from entigraph.sweeps.optuna_search import PruneOnEval, open_study

    cfg = OmegaConf.create({"sweep": {"name": "s", "worker": 0, "optuna": {
        "storage": str(tmp_path / "s.journal"), "sampler": "random", "seed": 0,
        "pruner": "none", "heartbeat_s": 30, "grace_s": None, "max_retry": 0,
        "startup_trials": 0, "warmup_steps": 0, "min_resource": 1, "reduction_factor": 3}}})
    trial = open_study(cfg).ask()
    report = pickle.loads(pickle.dumps(PruneOnEval(cfg, trial)))  # as a launched process has it
    assert report._trial is None
    report(2, 0.25)
    report(4, 0.5)
    (frozen,) = study(tmp_path / "s.journal", "s").get_trials()
    assert frozen.intermediate_values == {2: 0.25, 4: 0.5}
    assert isinstance(report.trial(), optuna.Trial)


@pytest.mark.slow
def test_a_run_and_a_grid_job_on_two_processes_train_and_evaluate_as_on_one(generated_root,
                                                                            tmp_path):
    one = entigraph("train", f"paths.root={generated_root}", f"paths.runs={tmp_path}/one",
                    *CURVE, cwd=generated_root)
    assert one.returncode == 0, one.stderr[-2000:]
    two = entigraph("train", "--multirun", f"paths.root={generated_root}",
                    f"paths.runs={tmp_path}/two", "sweep.name=g", *CURVE, TWO, cwd=generated_root)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "training on 2 processes" in two.stdout
    single, double = record_in(tmp_path / "one"), record_in(tmp_path / "two")
    assert double["status"] == "completed" and double["derived"]["devices"] == 2
    assert double["run_dir"].startswith(str(tmp_path / "two" / "sweeps" / "g"))
    curve = [(h["step"], h["val_accuracy"]) for h in single["history"] if "val_accuracy" in h]
    assert len(curve) == 4  # evaluations during training happened on two processes too
    assert [(h["step"], h["val_accuracy"]) for h in double["history"]
            if "val_accuracy" in h] == curve
    losses = [(h["step"], h["loss"]) for h in double["history"] if "loss" in h]
    for (step, loss), theirs in zip(losses, [h for h in single["history"] if "loss" in h]):
        assert step == theirs["step"] and loss == pytest.approx(theirs["loss"], abs=1e-4)
    assert double["metrics"]["accuracy"] == single["metrics"]["accuracy"]
    assert two.stdout.count("run folder:") == 1  # one process speaks


@pytest.mark.slow
def test_an_optuna_trial_on_two_processes_is_pruned_by_its_study(generated_root, tmp_path):
    """Queued so the second trial must be pruned at step 2 (1/12 against the first's 2/12): the
    launched processes report to the study and stop together when its pruner says so."""
    import optuna
    from optuna.trial import TrialState

    from entigraph.sweeps.storage import HeartbeatJournalStorage

    runs = tmp_path / "runs"
    journal = runs / "sweeps" / "p" / "study.journal"
    journal.parent.mkdir(parents=True)
    queued = optuna.create_study(study_name="p", direction="maximize",
                                 storage=HeartbeatJournalStorage(str(journal), 30, 60, None))
    # Picked for the offline generator's corpus of the built-in documents (a new generator
    # version changes the curves): the first is at 2/12 at step 2, the second at 1/12.
    for lr, seed in [(8.786e-4, 2), (8.786e-4, 1)]:
        queued.enqueue_trial({"optim.lr": lr, "seed": seed})
    out = subprocess.run(
        [sys.executable, "-m", "entigraph", "search", *CHECKPOINTED, f"paths.root={generated_root}",
         f"paths.runs={runs}", "sweep.name=p", "sweep.optuna.n_trials=2",
         "sweep.optuna.startup_trials=1", "trainer.micro_batch_size=4", TWO],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = study(journal, "p").get_trials()
    # A failed trial's error is in Optuna's log (stderr): shown, should one ever fail.
    assert len(trials) == 2, ([(t.number, t.state, t.params) for t in trials], out.stdout[-3000:],
                              out.stderr[-4000:])
    first, second = trials
    assert first.state == TrialState.COMPLETE and second.state == TrialState.PRUNED
    assert sorted(first.intermediate_values) == [2, 4, 6, 8]
    assert list(second.intermediate_values) == [2]
    run = json.loads((Path(second.user_attrs["run_dir"]) / "record.json").read_text())
    assert run["status"] == "pruned" and run["derived"]["devices"] == 2
    # Saved every step, removed once pruned (never resumed) or completed (model saved).
    assert not list(runs.rglob("checkpoint*"))
    assert json.loads((Path(first.user_attrs["run_dir"]) / "record.json").read_text())[
        "metrics"]["accuracy"] == first.value


@pytest.mark.slow
def test_a_wandb_agent_run_on_two_processes(generated_root, tmp_path):
    command = agent_command(SWEEPS / "wandb_tiny.yaml",
                            {"data.synthetic_tokens": 1024, "optim.lr": 0.001})
    env = {**os.environ, "WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run2", "WANDB_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([*command, f"paths.root={generated_root}", f"paths.runs={tmp_path}",
                          TWO, "trainer.micro_batch_size=4"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((tmp_path / "wandb" / "sw1" / "run2" / "record.json").read_text())
    assert run["status"] == "completed" and run["derived"]["devices"] == 2
