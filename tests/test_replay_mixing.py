"""Replay mixing by the reference rule (data.mixing_mode=replace), on the index alone: a coin per
synthetic block each time it is read, seeded by (seed, epoch, position)."""
import numpy as np
import pytest

from entigraph.token_data import TokenStream
from entigraph.train_data import TrainingBlocks, count_reads, replace_draws
from entigraph.training import epoch_order

BS = 4
REPLAY_BLOCKS = 50


def streams(n_synthetic: int):
    """A synthetic stream whose block i holds i's tokens (i * BS ...), and a replay stream whose
    tokens are negative, so a read block tells its source and id."""
    synthetic = TokenStream.of(np.arange(n_synthetic * BS), [(0, n_synthetic * BS)])
    replay = TokenStream.of(-1 - np.arange(REPLAY_BLOCKS * BS), [(0, REPLAY_BLOCKS * BS)])
    return synthetic, replay


def replace_blocks(n: int, ratio: float = 0.1, seed: int = 0) -> TrainingBlocks:
    synthetic, replay = streams(n)
    return TrainingBlocks(synthetic, replay, BS, n, np.zeros(0, np.int64), ratio, seed)


def test_two_epochs_at_a_tenth_leave_about_one_percent_of_the_blocks_unseen():
    n, epochs = 200_000, 2
    data = replace_blocks(n)
    replaced = [data.epoch(e)[1].copy() for e in range(epochs)]
    for r in replaced:  # each epoch replaces about a tenth (sd 0.07%)
        assert 0.097 < r.mean() < 0.103
    # ... a different tenth each epoch: the two overlap by chance only (0.1 x 0.1)
    both = (replaced[0] & replaced[1]).mean()
    assert 0.009 < both < 0.011
    reads = count_reads(data, epochs)
    # 1%, not the 10% a swap set fixed for the whole run would leave unseen (sd 0.02%).
    assert reads["synthetic_blocks_unseen"] == int((replaced[0] & replaced[1]).sum())
    assert 0.009 < reads["synthetic_blocks_unseen"] / n < 0.011
    assert reads["synthetic_tokens_trained"] == (n - reads["synthetic_blocks_unseen"]) * BS
    assert reads["replay_blocks_read"] == sum(int(r.sum()) for r in replaced)
    assert reads["tokens_seen_replay"] + reads["tokens_seen_synthetic"] == n * epochs * BS
    assert reads["replay_share"] == pytest.approx(0.1, abs=0.003)


def test_a_replaced_block_reads_a_replay_block_drawn_uniformly():
    data = replace_blocks(40_000)
    ids, is_replay = data.epoch(0)
    blocks = data.batch(np.arange(len(data)), epoch=0)
    # Rows read what the index says: synthetic block i where kept, replay block ids[i] where not.
    kept = np.flatnonzero(~is_replay)
    assert np.array_equal(blocks[kept, 0], kept * BS)
    assert np.array_equal(blocks[is_replay, 0], -1 - ids[is_replay] * BS)
    counts = np.bincount(ids[is_replay], minlength=REPLAY_BLOCKS)
    assert len(counts) == REPLAY_BLOCKS
    expected = is_replay.sum() / REPLAY_BLOCKS  # about 80 each (sd 9)
    assert counts.min() > expected * 0.5 and counts.max() < expected * 1.5


def test_the_blocks_of_every_step_are_the_same_when_recomputed_from_scratch():
    """What a resumed run relies on: (epoch, step) -> blocks needs nothing but (seed, epoch)."""
    n, batch, seed = 5_000, 16, 3
    straight = replace_blocks(n, seed=seed)
    read = {(e, s): straight.batch(epoch_order(n, seed, e)[s * batch:(s + 1) * batch], e)
            for e in range(2) for s in range(0, n // batch, 37)}
    for (e, s), blocks in sorted(read.items(), reverse=True):  # later epochs first, fresh objects
        resumed = replace_blocks(n, seed=seed)
        rows = epoch_order(n, seed, e)[s * batch:(s + 1) * batch]
        assert np.array_equal(resumed.batch(rows, e), blocks)
    # Epoch 1 drawn without epoch 0 ever drawn: the same draws.
    fresh = replace_blocks(n, seed=seed)
    for got, want in zip(fresh.epoch(1), straight.epoch(1)):
        assert np.array_equal(got, want)
    assert not np.array_equal(replace_blocks(n, seed=seed + 1).epoch(1)[1], straight.epoch(1)[1])


def test_draws_depend_on_the_position_not_on_the_budget():
    small, large = replace_draws(1_000, 0.1, 77, 5, 1), replace_draws(9_000, 0.1, 77, 5, 1)
    for got, want in zip(small, large):
        assert np.array_equal(got, want[:1_000])
    # Epochs and seeds draw differently; the coins are not the epoch order's stream.
    assert not np.array_equal(replace_draws(1_000, 0.1, 77, 5, 0)[0], small[0])
    assert not np.array_equal(replace_draws(1_000, 0.1, 77, 6, 1)[0], small[0])


def test_added_replay_is_the_same_every_epoch_and_every_synthetic_block_is_seen():
    synthetic, replay = streams(100)
    data = TrainingBlocks(synthetic, replay, BS, 100, np.arange(11), 0.0, seed=0)
    assert len(data) == 111
    for e in range(3):
        ids, is_replay = data.epoch(e)
        assert ids.tolist() == list(range(100)) + list(range(11))
        assert is_replay.sum() == 11 and not is_replay[:100].any()
    reads = count_reads(data, 2)
    assert reads["synthetic_blocks_unseen"] == 0 and reads["replay_blocks_read"] == 22
