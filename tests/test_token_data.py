import numpy as np
import pytest

from entigraph.errors import ConfigError
from entigraph.token_data import (gather, pack_blocks, replay_block_count, sample_replay_blocks,
                                  select_budget, tokenize_once, load_tokens)

OFFSETS = np.array([0, 5, 12, 20, 23, 40, 41, 60])


def span_tokens(spans):
    return sum(b - a for a, b in spans)


@pytest.mark.parametrize("budget", [1, 7, 30, 60])
def test_budget_selects_exactly_the_requested_tokens(budget):
    assert span_tokens(select_budget(OFFSETS, budget, seed=3)) == budget


def test_budgets_are_nested_prefixes():
    small, large = select_budget(OFFSETS, 18, 7), select_budget(OFFSETS, 45, 7)
    stream_small = gather(np.arange(60), small)
    stream_large = gather(np.arange(60), large)
    assert np.array_equal(stream_large[:18], stream_small)


def test_budget_is_seeded():
    assert select_budget(OFFSETS, 30, 1) == select_budget(OFFSETS, 30, 1)
    assert select_budget(OFFSETS, 30, 1) != select_budget(OFFSETS, 30, 2)


def test_budget_larger_than_corpus_names_what_is_there():
    with pytest.raises(ConfigError, match="exceeds the 60 synthetic tokens"):
        select_budget(OFFSETS, 61, 0)


def test_packing_has_no_padding_and_drops_only_the_tail():
    blocks = pack_blocks(np.arange(10), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (0.1, 11), (0.5, 100)])
def test_replay_blocks_make_up_the_mixing_ratio(ratio, expected):
    assert replay_block_count(100, ratio) == expected


def test_replay_blocks_are_distinct_until_the_corpus_runs_out():
    blocks = sample_replay_blocks(np.arange(40), 4, 10, seed=0)
    assert len({tuple(b) for b in blocks}) == 10
    assert len(sample_replay_blocks(np.arange(40), 4, 25, seed=0)) == 25


class CharTokenizer:
    """A real, if trivial, tokenizer: one id per character."""
    eos_token_id = 0

    def __len__(self):
        return 256

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_tokenize_once_caches_and_never_retokenises(tmp_path):
    calls = []

    def texts():
        calls.append(1)
        return ["ab", "cde"]

    first = tokenize_once(texts, CharTokenizer(), tmp_path / "tok", {"source": "x"})
    second = tokenize_once(texts, CharTokenizer(), tmp_path / "tok", {"source": "x"})
    assert calls == [1]
    assert first.tokens.tolist() == [97, 98, 0, 99, 100, 101, 0] == second.tokens.tolist()
    assert load_tokens(tmp_path / "tok").offsets.tolist() == [0, 3, 7]
    assert not (tmp_path / "tok.tmp").exists()


def test_a_cache_made_by_another_tokenizer_is_refused(tmp_path):
    tokenize_once(lambda: ["ab"], CharTokenizer(), tmp_path / "tok", {"tokenizer": "t1"})
    with pytest.raises(ConfigError, match="made from another tokenizer"):
        tokenize_once(lambda: ["ab"], CharTokenizer(), tmp_path / "tok", {"tokenizer": "t2"})
