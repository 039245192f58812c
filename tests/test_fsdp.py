"""FSDP for real, as 2 CPU processes over gloo (accelerate launch with tests/fsdp_cpu.yaml: full
sharding of the Llama decoder layers): training, sharded checkpoints, a resume after a kill,
evaluation during training and the saved model, against the same run on one process."""
import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from cli import entigraph

FSDP_CPU = Path(__file__).with_name("fsdp_cpu.yaml")
# 16 steps (2 epochs of 8), a checkpoint and a validation evaluation (12 questions) every 4.
RUN = ["experiment=smoke", "trainer.epochs=2", "trainer.micro_batch_size=4",
       "data.synthetic_tokens=4096", "trainer.log_every=1", "trainer.checkpoint_every=4",
       "eval.every_steps=4", "eval.validation_share=0.6", "trainer.precision=fp32"]


def only_record(runs: Path) -> tuple[Path, dict]:
    (path,) = runs.rglob("record.json")
    return path.parent, json.loads(path.read_text())


def kill_with_its_processes(proc) -> None:
    """SIGKILL the command; wait until its launcher and training processes are gone too."""
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(family, timeout=60)


def test_a_fresh_optimizer_gets_its_state_before_a_checkpoint_is_loaded_into_it():
    """accelerate loads a sharded FSDP1 optimizer checkpoint into the state the optimizer has:
    training makes AdamW's state first, with a step that changes no weight."""
    import torch

    from entigraph.accelerator import make_optimizer_state

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    make_optimizer_state(optimizer)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(set(optimizer.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
               for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert [g["lr"] for g in optimizer.param_groups] == [0.1]
    optimizer.state[model.weight]["exp_avg"].fill_(1.0)  # a state already there is kept
    make_optimizer_state(optimizer)
    assert optimizer.state[model.weight]["exp_avg"].eq(1.0).all()


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_checkpoints_sharded_resumes_and_evaluates(
        generated_root, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root = generated_root
    one = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/one", *RUN, cwd=root)
    assert one.returncode == 0, one.stderr[-2000:]
    one_dir, reference = only_record(tmp_path / "one")

    # The first attempt's config asks for gathered (FULL_STATE_DICT) checkpoints: they are
    # sharded all the same. Killed once a checkpoint is in place, before the run ends.
    full = tmp_path / "fsdp_full.yaml"
    full.write_text(FSDP_CPU.read_text().replace("SHARDED_STATE_DICT", "FULL_STATE_DICT"))
    launched = [f"paths.root={root}", f"paths.runs={tmp_path}/fsdp", *RUN,
                "trainer.launch.processes=2"]
    proc = entigraph("train", *launched, f"trainer.launch.accelerate_config={full}", cwd=root,
                     wait=False)
    deadline, state = time.monotonic() + 300, None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "fsdp").rglob("checkpoint/trainer_state.json"))
        if found:
            state = json.loads(found[0].read_text())
            break
        time.sleep(0.05)
    kill_with_its_processes(proc)
    assert state and state["step"] < reference["derived"]["steps"], "killed too late to test"
    (checkpoint,) = (tmp_path / "fsdp").rglob("checkpoint")
    files = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())
    # Each rank wrote its own shard of the model and of the optimizer state (torch distributed
    # checkpoint files); no gathered model or optimizer file.
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp"} <= set(files), files
    assert not [f for f in files if f.endswith((".bin", ".safetensors", ".pt"))], files

    resumed = entigraph("train", *launched, f"trainer.launch.accelerate_config={FSDP_CPU}",
                        cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir, record = only_record(tmp_path / "fsdp")
    assert record["status"] == "completed" and record["derived"]["devices"] == 2
    assert record["derived"]["resumed_from_step"] == state["step"] > 0
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted", "completed"]
    losses = [(h["step"], h["loss"]) for h in record["history"] if "loss" in h]
    expected = [(h["step"], h["loss"]) for h in reference["history"] if "loss" in h]
    assert [s for s, _ in losses] == [s for s, _ in expected] == list(range(1, 17))
    for (_, ours), (_, theirs) in zip(losses, expected):
        assert ours == pytest.approx(theirs, abs=1e-4)
    # Evaluated during training by both processes together (the sharded model's forward passes
    # gather its parameters), as the 1-process run; then from the saved model.
    curve = [(h["step"], h["val_accuracy"]) for h in reference["history"] if "val_accuracy" in h]
    assert [s for s, _ in curve] == [4, 8, 12, 16]
    assert [(h["step"], h["val_accuracy"]) for h in record["history"]
            if "val_accuracy" in h] == curve
    assert record["metrics"]["accuracy"] == reference["metrics"]["accuracy"]
    assert not (run_dir / "checkpoint").exists()  # removed once the run completed

    # The saved model is whole (gathered from the shards) and is the 1-process run's model.
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype="auto")
    theirs = load_file(one_dir / "model" / "model.safetensors")
    ours = model.state_dict()
    for name, weight in theirs.items():
        assert ours[name].shape == weight.shape
        assert (ours[name] - weight).abs().max() < 1e-4, name
