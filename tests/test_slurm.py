"""`launcher=slurm` on a real SLURM cluster: a throwaway single-node one (tests/slurm_cluster.py)
on this machine's CPUs. A grid's jobs are submitted by hydra-submitit-launcher as one job array,
each job launching its run on 2 processes; a job requeued by SLURM mid-training resumes from its
checkpoint with one history."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import PARTITION, SlurmCluster, missing

pytestmark = pytest.mark.slow
# One job a node as on a GPU cluster, sized for this one: no GPUs, the CPUs it asks for.
ON_CPUS = ["launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=2",
           f"hydra.launcher.partition={PARTITION}", "hydra.launcher.timeout_min=30"]


@pytest.fixture(scope="module")
def slurm():
    reason = missing()
    if reason:
        pytest.skip(reason)
    with SlurmCluster() as cluster:
        yield cluster


@pytest.fixture
def on_cluster(slurm, monkeypatch):
    """`entigraph` (and the sbatch it runs) talk to the throwaway cluster."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    return slurm


def records(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.rglob("record.json")}


def multirun(root, runs, *args, wait=True):
    command = [sys.executable, "-m", "entigraph", "train", "--multirun", f"paths.root={root}",
               f"paths.runs={runs}", *ON_CPUS, *args]
    if not wait:
        return subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)


def test_a_grid_runs_as_slurm_jobs_each_on_two_processes(generated_root, tmp_path, on_cluster):
    out = multirun(generated_root, tmp_path / "runs", "experiment=smoke",
                   "trainer.checkpoint_every=0", "trainer.micro_batch_size=4", "sweep.name=g",
                   "data.synthetic_tokens=1024,2048", "trainer.launch.processes=2",
                   f"hydra.launcher.cpus_per_task={min(2, on_cluster.cpus)}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 jobs, 2 completed (0 skipped" in out.stdout
    sweep = tmp_path / "runs" / "sweeps" / "g"
    runs = records(sweep)
    assert sorted(name.split("_")[0] for name in runs) == ["tok1024", "tok2048"]
    jobs = []
    for run in runs.values():
        assert run["status"] == "completed" and 0 <= run["metrics"]["accuracy"] <= 1
        assert run["derived"]["devices"] == 2
        (attempt,) = run["attempts"]
        (job,) = on_cluster.ends(attempt["slurm_job_id"])  # trained inside that SLURM job ...
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0"
        # ... with what it asked for
        assert job["ProcCnt"] == str(min(2, on_cluster.cpus)) and "mem=2G" in job["Tres"]
        jobs.append(job)
    # One array (hydra-submitit-launcher), its jobs' logs in the sweep's .submitit folder.
    assert len({job["ArrayJobId"] for job in jobs}) == 1
    assert sorted(job["ArrayTaskId"] for job in jobs) == ["0", "1"]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert logs.count("training on 2 processes") == 2


@pytest.mark.parametrize("how", ["scontrol requeue", "preemption signal"])
def test_a_job_requeued_mid_training_resumes_from_its_checkpoint(generated_root, tmp_path,
                                                                 on_cluster, how):
    """`scontrol requeue` (an operator, or SLURM preempting with PreemptMode=REQUEUE) kills the
    job and queues it again; the preemption signal (USR2, what SLURM sends before a time limit
    with --signal and submitit's own test helper sends) makes submitit requeue the job itself,
    the path of conf/launcher/slurm.yaml's max_num_timeout."""
    sweep = tmp_path / "runs" / "sweeps" / "r"
    grid = multirun(generated_root, tmp_path / "runs", "sweep.name=r", "model.hidden_size=64",
                    "model.num_heads=2", "data.block_size=64", "data.synthetic_tokens=100000",
                    "trainer.epochs=2", "trainer.batch_size=8", "trainer.micro_batch_size=4",
                    "trainer.log_every=1", "trainer.checkpoint_every=5", "optim.lr=1e-3",
                    "eval.after_training=false", "trainer.launch.processes=1",
                    "hydra.launcher.cpus_per_task=1", wait=False)
    try:
        deadline = time.monotonic() + 300
        state = None
        while time.monotonic() < deadline and grid.poll() is None:
            state = next(sweep.glob("*/*/checkpoint/trainer_state.json"), None)
            if state and json.loads(state.read_text())["step"] >= 5:
                break
            time.sleep(0.1)
        assert state and grid.poll() is None, "the job ended before its first checkpoint"
        (run_dir,) = [p.parent for p in sweep.glob("*/*/checkpoint")]
        job_id = json.loads((run_dir / "record.json").read_text())["attempts"][-1]["slurm_job_id"]
        if how == "scontrol requeue":
            on_cluster.run("scontrol", "requeue", job_id)
        else:
            on_cluster.run("scancel", "--signal=USR2", job_id)
        while time.monotonic() < deadline and "PENDING" not in on_cluster.run(
                "squeue", "-h", "-j", job_id, "-o", "%T").stdout:
            time.sleep(0.2)
        # Slurm holds a requeued job for two minutes (its BeginTime); let it start now.
        on_cluster.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")
        output, _ = grid.communicate(timeout=600)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert grid.returncode == 0, output[-3000:]
    assert "1 jobs, 1 completed (0 skipped" in output
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "completed"
    steps = record["derived"]["steps"]
    # Resumed mid-training, not trained again from the start (nor finished before the kill).
    assert 5 <= record["derived"]["resumed_from_step"] < steps
    assert [h["step"] for h in record["history"]] == list(range(1, steps + 1))
    # Killed, or stopped by the SystemExit that submitit raises as it requeues the job on the
    # preemption signal: either way the attempt was interrupted, not failed.
    assert record["attempts"][0]["outcome"] == "interrupted"
    assert [a["outcome"] for a in record["attempts"][1:]] == ["completed"]
    assert record["error"] is None
    assert {a["slurm_job_id"] for a in record["attempts"]} == {job_id}
    assert "Restarts=1" in on_cluster.run("scontrol", "show", "job", job_id).stdout
    assert [end["JobState"] for end in on_cluster.ends(job_id, count=2)] \
        == ["PENDING", "COMPLETED"]  # requeued, then completed
    assert not (run_dir / "checkpoint").exists()  # removed once the run completed
