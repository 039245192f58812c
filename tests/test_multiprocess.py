"""Training on several processes, as on a GPU node, run here as 2 CPU processes over gloo
(torchrun), and the parameters' dtype whatever the model was saved in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli import entigraph
from entigraph.training import rank_passes

# 9 blocks of 64 tokens, batches of 8: the last batch of each epoch holds one block, so under 2
# processes one rank has no block of its own in that step.
NINE_BLOCKS = ["model.hidden_size=64", "model.num_heads=2", "data.block_size=64",
               "data.synthetic_tokens=576", "trainer.epochs=2", "trainer.batch_size=8",
               "trainer.micro_batch_size=2", "trainer.log_every=1", "trainer.checkpoint_every=0",
               "trainer.precision=fp32", "optim.lr=1e-3", "eval.after_training=false",
               "tracker.mode=disabled"]


@pytest.mark.parametrize("batch,world,micro", [(8, 2, 2), (1, 2, 2), (7, 8, 1), (5, 2, 4),
                                               (16, 3, 2), (3, 1, 2)])
def test_every_rank_makes_the_same_passes_and_the_batch_is_read_once(batch, world, micro):
    rows = np.arange(100, 100 + batch)
    shares = [rank_passes(rows, rank, world, micro) for rank in range(world)]
    assert len({len(passes) for passes in shares}) == 1  # the same number of passes
    assert all(len(r) == len(real) and len(r) <= micro for passes in shares for r, real in passes)
    real_rows = [int(x) for passes in shares for r, real in passes for x in r[real]]
    assert sorted(real_rows) == list(rows)  # every block once; padding is marked not real
    padding = [int(x) for passes in shares for r, real in passes for x in r[~real]]
    assert set(padding) <= {100}


def history(run_dir: Path) -> list[dict]:
    (record,) = Path(run_dir).rglob("record.json")
    return json.loads(record.read_text())


@pytest.mark.slow
def test_two_processes_train_as_one_with_a_partial_last_batch(generated_root, tmp_path):
    """torchrun --nproc_per_node 2 on CPU: one gloo group (not two lone runs), the step where
    one rank has no block completes, and the losses are the 1-process run's."""
    one = entigraph("train", f"paths.root={generated_root}", f"paths.runs={tmp_path}/one",
                    *NINE_BLOCKS, cwd=generated_root)
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
         "-m", "entigraph", "train", f"paths.root={generated_root}",
         f"paths.runs={tmp_path}/two", *NINE_BLOCKS],
        cwd=generated_root, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = history(tmp_path / "one"), history(tmp_path / "two")
    assert single["derived"]["devices"] == 1 and double["derived"]["devices"] == 2
    assert double["status"] == "completed"
    assert double["derived"]["steps"] == single["derived"]["steps"] == 4  # 2 epochs x 2 steps
    assert [h["step"] for h in double["history"]] == [1, 2, 3, 4]
    for ours, theirs in zip(double["history"], single["history"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-4)
        assert ours["tokens_seen_synthetic"] == theirs["tokens_seen_synthetic"]
    assert double["metrics"]["train_loss"] == pytest.approx(single["metrics"]["train_loss"],
                                                            abs=1e-4)


@pytest.mark.slow
def test_a_model_saved_in_bf16_trains_in_fp32_and_a_small_lr_moves_it(generated_root, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from entigraph.models import load_tokenizer
    from entigraph.tiny_model import build_tiny_model

    corpus = next((generated_root / "corpora").rglob("manifest.json")).parent

    class Tiny:  # the model group's tiny defaults
        name, pretrained, vocab_size, hidden_size, num_layers, num_heads, intermediate_size = (
            "tiny", None, 1024, 64, 2, 2, 128)

    tokenizer = load_tokenizer(Tiny, corpus)
    saved = tmp_path / "bf16-model"
    build_tiny_model(Tiny, tokenizer, 64, 0).to(torch.bfloat16).save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    before = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).state_dict()
    run = entigraph("train", f"paths.root={generated_root}", f"paths.runs={tmp_path}/runs",
                    f"model.pretrained={saved}", "model.name=saved-bf16", "data.block_size=64",
                    "data.synthetic_tokens=1024", "trainer.epochs=1", "trainer.batch_size=8",
                    "trainer.micro_batch_size=8", "trainer.checkpoint_every=0", "optim.lr=5e-6",
                    "optim.warmup_ratio=0", "optim.schedule=constant", "eval.after_training=false",
                    "tracker.mode=disabled", cwd=generated_root)
    assert run.returncode == 0, run.stderr[-2000:]
    record = history(tmp_path / "runs")
    assert record["derived"]["parameter_dtype"] == "torch.float32"
    (model_dir,) = (tmp_path / "runs").rglob("model")
    after = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    assert next(after.parameters()).dtype == torch.float32
    # At lr 5e-6 an update is far below bf16's resolution near these weights (~4e-3 at 1.0):
    # in pure bf16 most would round away; in fp32 every updated weight moves.
    moved = [name for name, p in after.state_dict().items()
             if not torch.equal(p, before[name]) and p.ndim == 2]
    assert len(moved) >= len([p for p in before.values() if p.ndim == 2]) - 1


def test_bad_training_inputs_fail_in_one_line_before_a_run_folder(generated_root, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = {"model.pretrained": [f"model.pretrained={tmp_path}/no-such-model"],
             "data.replay_path": [f"data.replay_path={empty}", "data.mixing_ratio=0.1"]}
    for key, overrides in cases.items():
        out = entigraph("train", f"paths.root={generated_root}", f"paths.runs={tmp_path}/runs",
                        *overrides, cwd=generated_root)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], out.stderr
        assert not (tmp_path / "runs").exists()
