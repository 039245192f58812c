"""Sweeps as a user runs them: `entigraph train --multirun` grids, `entigraph search` Optuna
workers on a journal file and on a real PostgreSQL server, and a W&B sweep file's command."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli import entigraph

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SMOKE = ["experiment=smoke", "trainer.checkpoint_every=0"]
# Eight steps with a validation evaluation every two, on 12 questions (three articles).
SEARCH = [*SMOKE, "data.synthetic_tokens=4096", "eval.every_steps=2",
          "eval.validation_share=0.6", "sweep.optuna.sampler=random"]


def records(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.rglob("record.json")}


def one_line_error(out) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.slow
def test_grid_runs_every_job_past_a_failing_one_and_a_rerun_skips_completed(generated_root,
                                                                           tmp_path):
    args = ("train", "--multirun", *SMOKE, f"paths.root={generated_root}",
            f"paths.runs={tmp_path}/runs", "launcher=joblib", "sweep.name=g",
            "data.synthetic_tokens=99999999,1024,2048", "optim.lr=1e-3,3e-4")
    first = entigraph(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]  # after running every other job
    assert "2 of 6 jobs failed" in first.stderr.strip().splitlines()[-1]
    sweep = tmp_path / "runs" / "sweeps" / "g"
    runs = records(sweep)
    assert sorted(name.rsplit("-", 1)[0] for name in runs) == sorted(
        f"tok{t}_mix0.0_lr{lr}_seed0" for t in (99999999, 1024, 2048) for lr in (0.001, 0.0003))
    for name, run in runs.items():
        if name.startswith("tok99999999"):  # the failing jobs ran first; the sweep went on
            assert run["status"] == "failed" and "exceeds the" in run["error"]
        else:
            assert run["status"] == "completed" and 0 <= run["metrics"]["accuracy"] <= 1
    jobs = json.loads((sweep / "jobs.json").read_text())["jobs"]
    assert sorted(job["status"] for job in jobs) == ["completed"] * 4 + ["failed"] * 2
    assert "6 jobs, 4 completed, 2 failed (0 skipped" in first.stdout

    started = time.monotonic()
    second = entigraph(*args[:-4], "launcher=local", *args[-3:], cwd=tmp_path)
    assert second.returncode == 1, second.stderr[-3000:]  # the failing jobs fail again
    assert "6 jobs, 4 completed, 2 failed (4 skipped" in second.stdout  # failed ones retried
    assert second.stdout.count("already completed; skipping") == 4
    assert time.monotonic() - started < 60
    assert {n: r["started_at"] for n, r in records(sweep).items() if r["status"] == "completed"} \
        == {n: r["started_at"] for n, r in runs.items() if r["status"] == "completed"}

    # A changed config trains in a folder of its own (the config hash in its name): the
    # completed runs stay as they were.
    third = entigraph("train", "--multirun", *SMOKE, f"paths.root={generated_root}",
                      f"paths.runs={tmp_path}/runs", "sweep.name=g", "data.synthetic_tokens=1024",
                      "optim.lr=1e-3", "optim.warmup_ratio=0.2", cwd=tmp_path)
    assert third.returncode == 0 and "1 jobs, 1 completed (0 skipped" in third.stdout
    now = records(sweep)
    assert len(now) == len(runs) + 1
    assert {n: r["started_at"] for n, r in now.items() if n in runs and
            r["status"] == "completed"} == {n: r["started_at"] for n, r in runs.items()
                                            if r["status"] == "completed"}


def test_grid_preset_composes_and_launchers_switch_by_one_key(tmp_path):
    out = entigraph("train", "grid=tiny_ladder", "launcher=slurm", "--cfg", "hydra", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    hydra_cfg = yaml.safe_load(out.stdout)["hydra"]
    assert hydra_cfg["launcher"]["_target_"].endswith("SlurmLauncher")
    # One job a node: its GPUs are the processes the run is launched on.
    assert hydra_cfg["launcher"]["gpus_per_node"] == "${trainer.launch.processes}"
    assert hydra_cfg["launcher"]["tasks_per_node"] == 1
    slurm_job = yaml.safe_load(entigraph("train", "launcher=slurm", "--cfg", "job",
                                         cwd=tmp_path).stdout)
    assert slurm_job["trainer"]["launch"]["processes"] == 8
    job = yaml.safe_load(entigraph("train", "grid=paper_budgets", "--cfg", "job",
                                   cwd=tmp_path).stdout)
    assert job["sweep"]["name"] == "paper_budgets"
    budgets = job["sweep"]["grid"]["data.synthetic_tokens"]
    assert len(budgets) == 36 and budgets[0] == 182000 and budgets[-1] == 450450000  # the paper's


def test_bad_sweeps_fail_in_one_line_before_any_job(tmp_path):
    root = [f"paths.root={tmp_path}"]
    unknown = entigraph("train", "--multirun", *root, "optim.lrr=1e-3,1e-4", cwd=tmp_path)
    assert "optim.lrr" in one_line_error(unknown)
    bad_value = entigraph("train", "--multirun", *root, "optim.lr=1e-3,-1", cwd=tmp_path)
    assert "optim.lr=-1.0 is not allowed" in one_line_error(bad_value)
    empty = entigraph("train", "--multirun", *root, "+sweep.grid={optim.lr:[]}", cwd=tmp_path)
    assert "sweep.grid.optim.lr is empty" in one_line_error(empty)
    empty_space = entigraph("search", *root, "~space", cwd=tmp_path)
    assert "sweep.space is empty" in one_line_error(empty_space)
    space = entigraph("search", *root, "+sweep.space={optim.lrr: 'interval(0.1, 0.2)'}", cwd=tmp_path)
    assert "sweep.space key 'optim.lrr' is not a config key" in one_line_error(space)
    storage = entigraph("search", *root, "sweep.optuna.storage=postgresql://u:hunter2@127.0.0.1:9/db",
                        cwd=tmp_path)
    line = one_line_error(storage)
    assert "cannot be reached" in line and "hunter2" not in line and "u:***@" in line
    assert not list(tmp_path.rglob("record.json")) and not list(tmp_path.rglob("*.journal"))


def study(storage, name: str):
    import optuna

    from entigraph.sweeps.storage import HeartbeatJournalStorage

    if "://" not in str(storage):
        storage = HeartbeatJournalStorage(str(storage), 1, 2, None)
    return optuna.load_study(study_name=name, storage=storage)


def worker(root: Path, runs: Path, *overrides: str):
    return subprocess.Popen(
        [sys.executable, "-m", "entigraph", "search", *SEARCH, f"paths.root={root}",
         f"paths.runs={runs}", *overrides], cwd=runs.parent, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def finish(*procs) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=900)
        print(output[-3000:])  # shown by pytest when a later assertion fails
        assert proc.returncode == 0, output[-3000:]


def check_trials(trials, cap: int) -> None:
    """Finished trials within the cap, each a run folder whose record agrees with the study."""
    from optuna.trial import TrialState

    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert cap <= len(finished) <= cap + 1  # two workers may start the last trial together
    for trial in finished:
        assert set(trial.params) == {"optim.lr", "seed"}
        run = json.loads((Path(trial.user_attrs["run_dir"]) / "record.json").read_text())
        if trial.state == TrialState.COMPLETE:
            assert run["status"] == "completed" and run["metrics"]["accuracy"] == trial.value
        else:
            assert run["status"] == "pruned" and run["error"].startswith("TrialPruned")
            assert not run["metrics"]  # stopped before its final evaluation


def describe(trials) -> str:
    """What an assertion about trials shows: each one's state, attributes and run record."""
    lines = []
    for t in trials:
        record = Path(t.user_attrs.get("run_dir", "-")) / "record.json"
        run = json.loads(record.read_text()) if record.exists() else {}
        lines.append(f"trial {t.number} {t.state.name} params={t.params} "
                     f"system={t.system_attrs} user={t.user_attrs} "
                     f"start={t.datetime_start} end={t.datetime_complete} "
                     f"run={run.get('status')}: {run.get('error')}")
    return "\n".join(lines)


@pytest.mark.slow
def test_two_workers_share_a_journal_study_prune_and_retry_a_dead_workers_trial(generated_root,
                                                                               tmp_path):
    from optuna.trial import TrialState

    import optuna

    from entigraph.sweeps.storage import HeartbeatJournalStorage

    runs = tmp_path / "runs"
    shared = ["sweep.name=j", "sweep.optuna.n_trials=6", "sweep.optuna.startup_trials=1",
              "sweep.optuna.heartbeat_s=1", "sweep.optuna.grace_s=10"]
    # Trials queued so pruning must happen (values of the offline generator's corpus of the
    # built-in documents): seed 1 at lr 8.8e-4 or 2.4e-3 scores 1/12 at step 2 where the first
    # three score 2/12; after those complete, the median pruner stops the seed-1 ones.
    journal = runs / "sweeps" / "j" / "study.journal"
    journal.parent.mkdir(parents=True)
    queued = optuna.create_study(study_name="j", direction="maximize",
                                 storage=HeartbeatJournalStorage(str(journal), 1, 10, None))
    for lr, seed in [(2.288e-4, 0), (1.079e-4, 0), (2.438e-3, 0),
                     (8.786e-4, 1), (2.438e-3, 1), (8.786e-4, 1)]:
        queued.enqueue_trial({"optim.lr": lr, "seed": seed})
    doomed = worker(generated_root, runs, *shared, "sweep.worker=9")
    deadline = time.monotonic() + 300
    while not list(runs.glob("sweeps/j/trials/*/record.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    doomed.kill()  # a worker dying mid-trial: its trial must not stay running
    doomed.communicate()
    time.sleep(11)  # past the grace period (10 s: a loaded machine can delay a heartbeat)
    finish(worker(generated_root, runs, *shared, "sweep.worker=0", "sweep.optuna.seed=0"),
           worker(generated_root, runs, *shared, "sweep.worker=1", "sweep.optuna.seed=0"))

    trials = study(journal, "j").get_trials()
    check_trials(trials, cap=6)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, describe(failed)
    (dead,) = failed
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.params == dead.params and retry.state != TrialState.FAIL
    assert retry.user_attrs["run_dir"] == dead.user_attrs["run_dir"]  # resumed in its folder
    assert [t for t in trials if t.state == TrialState.PRUNED], "the median pruner never pruned"
    summary = json.loads((runs / "sweeps" / "j" / "summary.json").read_text())
    best = json.loads((runs / "sweeps" / "j" / "best_trials.json").read_text())
    assert summary["best_value"] == max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert best[0]["value"] == summary["best_value"] and best[0]["run_dir"]


@pytest.mark.slow
def test_hyperband_prunes_on_the_validation_curve(generated_root, tmp_path):
    from optuna.trial import TrialState

    import optuna

    from entigraph.sweeps.storage import HeartbeatJournalStorage

    runs = tmp_path / "runs"
    journal = runs / "sweeps" / "h" / "study.journal"
    journal.parent.mkdir(parents=True)
    queued = optuna.create_study(study_name="h", direction="maximize",
                                 storage=HeartbeatJournalStorage(str(journal), 1, 10, None))
    # Trials 1 and 3 share a Hyperband bracket. At step 2 trial 1 (seed 0, lr 1.1e-4) scores
    # 2/12 and trial 3 (seed 1, lr 8.8e-4) 1/12: the first rung (2 steps, keep 1/2) stops it.
    for lr, seed in [(2.288e-4, 0), (1.079e-4, 0), (8.786e-4, 2), (8.786e-4, 1), (8.786e-4, 2)]:
        queued.enqueue_trial({"optim.lr": lr, "seed": seed})
    finish(worker(generated_root, runs, "sweep.name=h", "sweep.optuna.n_trials=5",
                  "sweep.optuna.pruner=hyperband", "sweep.optuna.min_resource=2",
                  "sweep.optuna.reduction_factor=2"))
    trials = study(journal, "h").get_trials()
    check_trials(trials, cap=5)
    assert [t for t in trials if t.state == TrialState.PRUNED], describe(trials)


@pytest.mark.slow
def test_a_search_with_failed_trials_finishes_then_exits_1(generated_root, tmp_path):
    """Trials that fail (a budget beyond the corpus) between trials that complete: the worker
    runs until the cap of completed trials, then says on stderr how many failed, exit code 1."""
    from optuna.trial import TrialState

    import optuna

    from entigraph.sweeps.storage import HeartbeatJournalStorage

    runs = tmp_path / "runs"
    journal = runs / "sweeps" / "f" / "study.journal"
    journal.parent.mkdir(parents=True)
    queued = optuna.create_study(study_name="f", direction="maximize",
                                 storage=HeartbeatJournalStorage(str(journal), 1, 10, None))
    for tokens in (99999999, 1024, 99999999, 2048):
        queued.enqueue_trial({"optim.lr": 1e-3, "seed": 0, "data.synthetic_tokens": tokens})
    out = entigraph("search", *SEARCH, f"paths.root={generated_root}", f"paths.runs={runs}",
                    "sweep.name=f", "sweep.optuna.n_trials=2", "sweep.optuna.pruner=none",
                    "eval.every_steps=0",
                    "+sweep.space={data.synthetic_tokens: 'choice(1024, 2048, 99999999)'}",
                    cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "entigraph search: error: 2 of this worker's 4 trials failed"), out.stderr[-3000:]
    trials = study(journal, "f").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE] * 2, \
        describe(trials)
    for trial in trials:  # every trial ran: the failed ones' errors are in their records
        run = json.loads((Path(trial.user_attrs["run_dir"]) / "record.json").read_text())
        assert run["status"] == ("failed" if trial.state == TrialState.FAIL else "completed")
    summary = json.loads((runs / "sweeps" / "f" / "summary.json").read_text())
    assert summary["trials"] == {"complete": 2, "fail": 2}


@pytest.mark.slow
def test_a_worker_whose_trial_another_worker_failed_goes_on(generated_root, tmp_path):
    """A live worker whose heartbeat came late finds its trial failed as stale by another
    worker: it says so and goes on to the next trial instead of crashing."""
    from optuna.trial import TrialState

    runs = tmp_path / "runs"
    late = worker(generated_root, runs, "sweep.name=s", "sweep.optuna.n_trials=1",
                  "sweep.optuna.heartbeat_s=1", "sweep.optuna.grace_s=1000")
    journal = runs / "sweeps" / "s" / "study.journal"
    deadline = time.monotonic() + 300
    while not list(runs.glob("sweeps/s/trials/*/record.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    shared = study(journal, "s")
    (running,) = shared.get_trials(states=(TrialState.RUNNING,))
    # What fail_stale_trials in another worker does to a trial whose heartbeat is late.
    shared._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
    output, _ = late.communicate(timeout=900)
    assert late.returncode == 0, output[-3000:]
    assert f"trial {running.number} was failed by another worker" in output
    states = sorted(t.state.name for t in study(journal, "s").get_trials())
    assert states in (["COMPLETE", "FAIL"], ["FAIL", "PRUNED"])  # it ran the next trial


def start_postgres(folder: Path) -> str:
    """A private PostgreSQL cluster on 127.0.0.1 (Debian's binaries, run as `postgres`)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (`apt-get install postgresql` as root; "
                    ".ci/run does this when it runs as root)")
    if os.geteuid() != 0:
        pytest.skip("starting a private PostgreSQL cluster needs root (to run as `postgres`)")
    bin_dir, port = bins[-1].parent, 25432 + os.getpid() % 1000
    folder.mkdir(mode=0o755)
    subprocess.run(["chown", "postgres", str(folder)], check=True)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, bin_dir / "initdb", "-D", folder / "data", "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", folder / "data", "-w", "-l",
                    folder / "log", "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}",
                    "start"], check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(generated_root, tmp_path):
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp")) / "cluster"
    folder.parent.chmod(0o755)  # the postgres user must reach its cluster's folder
    url = start_postgres(folder)
    try:
        runs = tmp_path / "runs"
        shared = ["sweep.name=pg", "sweep.optuna.n_trials=4", "sweep.optuna.pruner=none",
                  f"sweep.optuna.storage={url}"]
        finish(worker(generated_root, runs, *shared, "sweep.worker=0"),
               worker(generated_root, runs, *shared, "sweep.worker=1"))
        trials = study(url, "pg").get_trials()
        check_trials(trials, cap=4)
        assert json.loads((runs / "sweeps" / "pg" / "summary.json").read_text())["storage"] == url
    finally:
        bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1].parent
        subprocess.run(["runuser", "-u", "postgres", "--", bin_dir / "pg_ctl", "-D",
                        folder / "data", "-m", "immediate", "stop"], capture_output=True)


def agent_command(sweep_file: Path, params: dict) -> list[str]:
    """The command `wandb agent` runs for a run with `params`, built by wandb's own helpers
    (wandb_agent.Agent._command_run: ${env}/${args_no_hyphens} macros)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    spec = yaml.safe_load(sweep_file.read_text())
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros["env"] = ["/usr/bin/env"]
    command = []
    for chunk in create_sweep_command(spec["command"]):
        is_macro = chunk.startswith("${") and chunk.endswith("}")
        command += macros.get(chunk[2:-1], []) if is_macro else [chunk]
    return command


def test_a_wandb_agent_run_is_grouped_and_tagged_by_its_sweep_as_a_grid_run_is(
        compose, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from entigraph.records import run_record
    from entigraph.sweeps.grid import in_agent_sweep, in_sweep_group

    def group_and_tags(cfg):
        return cfg.tracker.group, list(cfg.tracker.tags)

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert group_and_tags(in_agent_sweep(compose("train"))) == (None, [])  # not in an agent
    grid = in_sweep_group(compose("train", ["sweep.name=sw1"]))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")  # what `wandb agent` sets in each run
    assert group_and_tags(in_agent_sweep(compose("train"))) == group_and_tags(grid) \
        == ("sw1", ["sweep:sw1"])
    chosen = in_agent_sweep(compose("train", ["tracker.group=mine", "tracker.tags=[a]"]))
    assert group_and_tags(chosen) == ("mine", ["a", "sweep:sw1"])
    # The W&B run itself (offline) gets them.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = in_agent_sweep(compose("train", ["tracker.mode=auto"]))
    with run_record(tmp_path / "run", "train", OmegaConf.to_container(cfg), cfg.tracker) as record:
        assert record.tracker.run.group == "sw1"
        assert "sweep:sw1" in record.tracker.run.tags


@pytest.mark.slow
def test_wandb_sweep_files_launch_the_hydra_job_in_a_folder_per_run_id(generated_root, tmp_path):
    for sweep_file in SWEEPS.glob("wandb_*.yaml"):
        spec = yaml.safe_load(sweep_file.read_text())
        command = agent_command(sweep_file, {k: 1 for k in spec["parameters"]})
        assert command[:3] == ["/usr/bin/env", "entigraph", "train"]
        assert any(c.startswith("run_dir=") and "WANDB_RUN_ID" in c for c in command)
    command = agent_command(SWEEPS / "wandb_tiny.yaml",
                            {"data.synthetic_tokens": 1024, "optim.lr": 0.001})
    env = {**os.environ, "WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run7", "WANDB_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([*command, f"paths.root={generated_root}", f"paths.runs={tmp_path}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((tmp_path / "wandb" / "sw1" / "run7" / "record.json").read_text())
    assert run["status"] == "completed" and run["derived"]["synthetic_tokens_selected"] == 1024
    tracker = yaml.safe_load((tmp_path / "wandb" / "sw1" / "run7" / "config.yaml").read_text())[
        "tracker"]
    assert tracker["group"] == "sw1" and tracker["tags"] == ["sweep:sw1"]  # as W&B gets them
