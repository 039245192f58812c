"""trainer.dry_run: a run's or a grid's steps, tokens, checkpoints and GPU-hours from the config
alone, before anything exists."""
import json

import pytest

from cli import entigraph


def llama_8b_config(folder):
    """A Llama 3 8B model folder with its config only (no weights: a dry run reads none)."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                tie_word_embeddings=False).save_pretrained(folder)
    return folder


def test_a_grid_of_8b_runs_is_costed_before_any_corpus_or_weights_exist(tmp_path):
    model = llama_8b_config(tmp_path / "llama3-8b")
    out = entigraph("train", "--multirun", "trainer.dry_run=true", f"model.pretrained={model}",
                    "data.synthetic_tokens=2048000,4096000", "data.mixing_ratio=0.2",
                    "data.block_size=2048", "trainer.batch_size=16", "trainer.micro_batch_size=1",
                    "trainer.epochs=2", "trainer.launch.processes=8", "trainer.checkpoint_every=0",
                    "trainer.checkpoint_minutes=1", "trainer.estimate.tokens_per_s=400",
                    f"paths.root={tmp_path}/out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "GPU-hours" in line]
    # 1,000 synthetic blocks + 250 replay (a share of 0.2) = 1,250 rows; 79 steps an epoch.
    # 5.12M tokens at 8 x 400 tokens/s: 1,600 s, 3.6 GPU-hours; a checkpoint a minute + the last.
    assert lines[0].endswith("158 steps, 5,120,000 tokens (1,000 synthetic blocks), "
                             "8,030,261,248 parameters on 8 devices at 400 tokens/s each "
                             "(trainer.estimate.tokens_per_s): 0.44 h, 3.6 GPU-hours, "
                             "~27 checkpoints")
    assert lines[-1] == "dry run: 2 runs, 472 steps, 15,360,000 tokens, 10.7 GPU-hours in all"
    assert not list(tmp_path.rglob("record.json")) and not list(tmp_path.rglob("tokens"))


def test_a_dry_run_grid_is_costed_here_whatever_the_launcher(tmp_path):
    """launcher=slurm would submit the jobs through submitit (no srun or sbatch here: it fails)
    and launcher=joblib would start workers (n_jobs=0: joblib refuses): a dry run uses neither."""
    grid = ["trainer.dry_run=true", "data.synthetic_tokens=2048,4096",
            "trainer.micro_batch_size=1", f"paths.root={tmp_path}/out"]
    for launcher, devices in (["launcher=slurm"], 8), (["launcher=joblib",
                                                        "hydra.launcher.n_jobs=0"], 1):
        out = entigraph("train", "--multirun", *grid, *launcher, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.splitlines()
        assert f"dry run: costing the 2 jobs here; {launcher[0]} submits and starts nothing" \
            in lines
        plans = [line for line in lines if line.endswith("checkpoints")]
        # The launcher's settings still hold: slurm trains a job on its node's 8 GPUs.
        assert len(plans) == 2 and all(f" on {devices} devices " in p for p in plans), plans
        assert lines[-1] == "dry run: 2 runs, 4 steps, 12,288 tokens, 0.0 GPU-hours in all"
    assert not list(tmp_path.rglob(".submitit")) and not list(tmp_path.rglob("record.json"))


@pytest.mark.slow
def test_a_dry_run_counts_the_steps_a_run_takes(generated_root, tmp_path):
    args = ["experiment=smoke", "data.synthetic_tokens=4096", "trainer.batch_size=4",
            "trainer.micro_batch_size=4", "trainer.epochs=2", f"paths.root={generated_root}",
            f"paths.runs={tmp_path}", "eval.after_training=false", "tracker.mode=disabled"]
    dry = entigraph("train", *args, "trainer.dry_run=true", cwd=generated_root)
    assert dry.returncode == 0 and not list(tmp_path.iterdir())
    run = entigraph("train", *args, cwd=generated_root)
    assert run.returncode == 0, run.stderr[-2000:]
    (record,) = tmp_path.rglob("record.json")
    derived = json.loads(record.read_text())["derived"]
    assert f"{derived['steps']} steps, {derived['tokens_seen_synthetic']:,} tokens " \
           f"({derived['synthetic_blocks']} synthetic blocks)" in dry.stdout
