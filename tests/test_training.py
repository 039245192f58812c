"""The trainer: exact budgets, mixing, and resuming a killed run (the process, not a function)."""
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cli import entigraph
from entigraph.models import load_tokenizer
from entigraph.token_data import select_budget
from entigraph.train_data import build_training_blocks, replay_tokens, synthetic_tokens

pytestmark = pytest.mark.slow
SMALL = ["model.hidden_size=64", "model.num_heads=2", "data.block_size=64",
         "data.synthetic_tokens=40000", "trainer.epochs=2", "trainer.batch_size=8",
         "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.checkpoint_every=5",
         "optim.lr=1e-3", "eval.after_training=false", "tracker.mode=disabled"]


@pytest.fixture
def root(generated_root):
    return generated_root


def write_replay(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": f"Generic text number {i} about the weather "
                                                f"and the markets of the world. " * 20}) + "\n"
                            for i in range(50)))
    return path


def only_record(runs: Path) -> tuple[Path, dict]:
    (path,) = runs.rglob("record.json")
    return path.parent, json.loads(path.read_text())


# bf16 is autocast on CPUs too (emulated where the CPU lacks bf16 instructions, but it runs).
# The bf16 run also mixes in replay by the reference rule: the resumed process draws its epochs'
# replay blocks afresh and must read the blocks the uninterrupted run read.
@pytest.mark.parametrize("precision,mixing", [("fp32", "none"), ("bf16", "replace")])
def test_killed_training_resumes_and_ends_like_an_uninterrupted_run(root, tmp_path, precision,
                                                                    mixing):
    args = [*SMALL, f"trainer.precision={precision}"]
    if mixing == "replace":
        args += ["data.mixing_ratio=0.1", "data.mixing_mode=replace",
                 f"data.replay_path={write_replay(tmp_path / 'replay.jsonl')}"]
    straight = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/a", *args, cwd=root)
    assert straight.returncode == 0, straight.stderr[-2000:]
    _, reference = only_record(tmp_path / "a")
    assert reference["derived"]["precision"] == precision

    proc = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/b", *args,
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

    resumed = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/b", *args, cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir, record = only_record(tmp_path / "b")
    assert record["status"] == "completed" and record["derived"]["resumed_from_step"] >= 10
    # Tolerance: CPU training is deterministic here, in bf16 as in fp32 (the same kernels on the
    # same inputs); allow float noise of 1e-5 in the loss.
    assert record["metrics"]["train_loss"] == pytest.approx(reference["metrics"]["train_loss"],
                                                            abs=1e-5)
    assert [h["step"] for h in record["history"]] == list(range(1, record["derived"]["steps"] + 1))
    for ours, theirs in zip(record["history"], reference["history"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert ours["tokens_seen_synthetic"] == theirs["tokens_seen_synthetic"]
        assert ours["tokens_seen_replay"] == theirs["tokens_seen_replay"]
    assert (reference["history"][-1]["tokens_seen_replay"] > 0) == (mixing == "replace")
    assert not (run_dir / "checkpoint").exists()


@pytest.mark.parametrize("change,key", [("optim.weight_decay=0.5", "optim"),
                                        ("trainer.precision=fp32", "trainer.precision")])
def test_checkpoint_from_a_different_config_is_refused(root, tmp_path, change, key):
    # A named run folder: under the default name a changed config gets a folder of its own.
    named = f"run_dir={tmp_path}/run"
    proc = entigraph("train", f"paths.root={root}", named, *SMALL, cwd=root, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(tmp_path.rglob("checkpoint/trainer_state.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = entigraph("train", f"paths.root={root}", named, *SMALL, change, cwd=root)
    assert out.returncode == 2
    assert f"made with different {key}" in out.stderr and out.stderr.strip().count("\n") == 0


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_instructions():
    import torch

    from entigraph.training import resolve_precision

    cpuinfo = Path("/proc/cpuinfo")
    if torch.cuda.is_available() or not cpuinfo.exists():
        pytest.skip("checked against the flags Linux reports for a CPU-only machine")
    flags = set(cpuinfo.read_text().split())
    assert resolve_precision("auto") == ("bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_auto_attention_is_eager_only_for_short_blocks_in_bf16_on_a_cpu():
    import torch

    from entigraph.training import resolve_attention

    if torch.cuda.is_available():
        pytest.skip("the rule for CPUs")
    assert resolve_attention("auto", "bf16", 128, "sdpa") == "eager"
    assert resolve_attention("auto", "bf16", 512, "sdpa") == "eager"
    assert resolve_attention("auto", "bf16", 1024, "sdpa") == "sdpa"
    assert resolve_attention("auto", "fp32", 128, "sdpa") == "sdpa"
    assert resolve_attention("sdpa", "bf16", 128, "eager") == "sdpa"


def test_bf16_training_computes_in_bf16_and_ends_near_fp32(root, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/{precision}",
                        *SMALL, "trainer.epochs=1", "data.synthetic_tokens=10000",
                        f"trainer.precision={precision}", cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        losses[precision] = only_record(tmp_path / precision)[1]["metrics"]["train_loss"]
    # bf16 arithmetic changes the loss (the knob is not ignored), but only by rounding noise.
    assert 1e-5 < abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"]


@pytest.mark.parametrize("mode,replay_share", [("add", 0.25), ("replace", 0.25)])
def test_mixing_logs_tokens_of_each_source(root, tmp_path, mode, replay_share):
    replay = write_replay(tmp_path / "replay.jsonl")
    out = entigraph("train", f"paths.root={root}", f"paths.runs={tmp_path}/runs", *SMALL,
                    "trainer.epochs=1", f"data.mixing_ratio={replay_share}",
                    f"data.mixing_mode={mode}", f"data.replay_path={replay}", cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    _, record = only_record(tmp_path / "runs")
    derived, last = record["derived"], record["history"][-1]
    # The per-step counts are what was read; the record's totals, counted up front, agree.
    assert last["tokens_seen_replay"] == derived["tokens_seen_replay"] > 0
    assert last["tokens_seen_synthetic"] == derived["tokens_seen_synthetic"]
    assert derived["tokens_seen_replay"] == derived["replay_blocks_read"] * 64
    assert derived["replay_share"] == pytest.approx(replay_share, abs=0.1)
    assert derived["replay_share_expected"] == pytest.approx(replay_share, abs=0.01)
    blocks = derived["synthetic_blocks"]
    if mode == "add":  # every synthetic block is still trained on
        assert derived["synthetic_blocks_unseen"] == 0
        assert derived["synthetic_tokens_trained"] == 40000 // 64 * 64 == blocks * 64
    else:  # one epoch: the blocks replaced are the blocks unseen
        assert derived["replay_blocks_per_epoch_expected"] == pytest.approx(replay_share * blocks)
        assert derived["synthetic_blocks_unseen"] == derived["replay_blocks_read"]
        assert derived["synthetic_tokens_trained"] == (blocks - derived["replay_blocks_read"]) * 64


def packed(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """A token stream copied out and cut into full blocks: what the index must read the same as."""
    return np.asarray(tokens[: len(tokens) // block_size * block_size]).reshape(-1, block_size)


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_blocks_read_by_index_are_the_selected_stream_and_replay_cut_into_blocks(
        root, tmp_path, compose, mode):
    cfg = compose("train", [f"paths.root={root}", *SMALL, "data.mixing_ratio=0.25",
                            f"data.mixing_mode={mode}",
                            f"data.replay_path={write_replay(tmp_path / 'replay.jsonl')}"])
    tokenizer, cache, bs = load_tokenizer(cfg.model, cfg.data.corpus_dir), tmp_path / "tokens", 64
    data = build_training_blocks(cfg.data, tokenizer, cache, cfg.seed, epochs=1)
    syn = synthetic_tokens(cfg.data, tokenizer, cache)
    spans = select_budget(syn.offsets, 40000, cfg.seed)
    synthetic = packed(np.concatenate([syn.tokens[a:b] for a, b in spans]), bs)
    replay_arrays = replay_tokens(cfg.data, tokenizer, cache)
    replay = packed(replay_arrays.tokens, bs)
    ids, is_replay = data.epoch(0)
    blocks = data.batch(np.arange(len(data)), epoch=0)
    kept = ids[~is_replay]
    assert np.array_equal(blocks[~is_replay], synthetic[kept])
    assert np.array_equal(blocks[is_replay], replay[ids[is_replay]])
    assert is_replay.sum() == data.derived["replay_blocks_read"] > 0
    if mode == "add":  # every synthetic block, in order, then distinct replay blocks
        assert kept.tolist() == list(range(len(synthetic)))
        assert len(set(ids[is_replay])) == is_replay.sum()
    else:  # row i is synthetic block i unless the coin swapped it for a replay block
        assert kept.tolist() == np.flatnonzero(~is_replay).tolist()
        assert len(is_replay) == len(synthetic)
    # Both corpora are tokenised with BOS and EOS around every text (the tiny tokenizer's).
    for arrays in (syn, replay_arrays):
        assert (arrays.tokens[arrays.offsets[:-1]] == tokenizer.bos_token_id).all()
        assert (arrays.tokens[arrays.offsets[1:] - 1] == tokenizer.eos_token_id).all()
    # Nothing was copied: both streams read the token caches' memory maps.
    assert isinstance(data.synthetic.tokens, np.memmap) and isinstance(data.replay.tokens, np.memmap)
