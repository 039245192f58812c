import numpy as np
import pytest

from entigraph import token_data
from entigraph.errors import ConfigError
from entigraph.token_data import (TokenStream, cache_key, framing, load_tokens, replay_block_count,
                                  sample_replay_blocks, select_budget, tokenize_once)

OFFSETS = np.array([0, 5, 12, 20, 23, 40, 41, 60])


def span_tokens(spans):
    return sum(b - a for a, b in spans)


def gather(tokens, spans):
    """The selected stream copied out: what the index must read the same as."""
    return np.concatenate([tokens[a:b] for a, b in spans])


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


def test_budget_larger_than_corpus_names_what_is_there_and_the_fixes():
    with pytest.raises(ConfigError, match="exceeds the 60 synthetic tokens") as err:
        select_budget(OFFSETS, 61, 0)
    message = str(err.value)
    assert "data.synthetic_tokens <= 60" in message and "data.repeat=true" in message
    assert "\n" not in message


@pytest.mark.parametrize("budget", [60, 61, 119, 120, 250])
def test_a_repeated_budget_holds_exactly_the_requested_tokens(budget):
    assert span_tokens(select_budget(OFFSETS, budget, seed=3, repeat=True)) == budget


def test_repeated_budgets_stay_nested_and_begin_with_todays_pass():
    streams = [gather(np.arange(60), select_budget(OFFSETS, budget, 7, repeat=True))
               for budget in (18, 60, 75, 200)]
    for small, large in zip(streams, streams[1:]):
        assert np.array_equal(large[:len(small)], small)
    # The first pass is the unrepeated selection; a repeat changes nothing within the corpus.
    assert select_budget(OFFSETS, 45, 7, repeat=True) == select_budget(OFFSETS, 45, 7)
    assert np.array_equal(streams[1], gather(np.arange(60), select_budget(OFFSETS, None, 7)))


def test_each_pass_takes_every_text_once_in_a_fresh_order():
    spans = select_budget(OFFSETS, 180, 7, repeat=True)  # three whole passes
    texts = [int(np.searchsorted(OFFSETS, start, side="right")) - 1 for start, _ in spans]
    passes = [texts[i:i + 7] for i in range(0, 21, 7)]
    assert len(texts) == 21 and all(sorted(p) == list(range(7)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    assert all(end - start == OFFSETS[i + 1] - OFFSETS[i] for (start, end), i in zip(spans, texts))


def test_the_record_gives_the_unique_tokens_and_the_repeats(tmp_path):
    import json
    from types import SimpleNamespace

    from entigraph.tiny_model import train_tokenizer
    from entigraph.train_data import build_training_blocks

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [f"text {i} of a small corpus" for i in range(6)]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (corpus / "manifest.json").write_text(json.dumps({"totals": {"texts": len(texts)}}))
    tokenizer = train_tokenizer(texts, 300)

    def derived(budget, repeat=True):
        data_cfg = SimpleNamespace(corpus_dir=str(corpus), synthetic_tokens=budget, repeat=repeat,
                                   block_size=4, mixing_ratio=0.0, mixing_mode="add")
        return build_training_blocks(data_cfg, tokenizer, tmp_path / "cache", 0, 1).derived

    whole = derived(None, repeat=False)
    available = whole["corpus_tokens_available"]
    assert whole["synthetic_tokens_unique"] == available and whole["synthetic_repeats"] == 1.0
    part = derived(available - 5)
    assert part["synthetic_tokens_unique"] == available - 5 and part["synthetic_repeats"] == 1.0
    repeated = derived(available * 5 // 2)
    assert repeated["synthetic_tokens_selected"] == available * 5 // 2
    assert repeated["synthetic_tokens_unique"] == available
    assert repeated["synthetic_repeats"] == pytest.approx(2.5, abs=1 / available)
    with pytest.raises(ConfigError, match="data.repeat=true"):
        derived(available + 1, repeat=False)


def test_packing_has_no_padding_and_drops_only_the_tail():
    stream = TokenStream.of(np.arange(10), [(0, 10)])
    assert stream.n_blocks(4) == 2
    assert stream.blocks([0, 1], 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(IndexError):
        stream.blocks([2], 4)  # the tail is not a block


@pytest.mark.parametrize("block_size", [1, 3, 8, 17])
def test_blocks_read_by_index_equal_the_gathered_stream_cut_into_blocks(tmp_path, block_size):
    path = tmp_path / "tokens.bin"
    np.arange(1000, 1060, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    spans = select_budget(OFFSETS, 55, seed=5)
    stream = TokenStream.of(tokens, spans)
    packed = gather(tokens, spans)[: 55 // block_size * block_size].reshape(-1, block_size)
    ids = np.random.default_rng(0).permutation(stream.n_blocks(block_size))
    blocks = stream.blocks(ids, block_size)
    assert blocks.dtype == np.int64 and np.array_equal(blocks, packed[ids])


def test_a_selected_budget_holds_no_tokens(tmp_path):
    tokenize_once(lambda: ["abcdefgh" * 100] * 50, CharTokenizer(), tmp_path / "tok", {})
    arrays = load_tokens(tmp_path / "tok")
    stream = TokenStream.of(arrays.tokens, select_budget(arrays.offsets, 30000, seed=0))
    assert stream.tokens is arrays.tokens and isinstance(stream.tokens, np.memmap)
    # Two numbers per selected text, whatever the budget's size in tokens.
    assert stream.starts.nbytes + stream.cum.nbytes <= 16 * (len(arrays.offsets) + 1)


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (0.1, 11), (0.5, 100)])
def test_replay_blocks_make_up_the_mixing_ratio(ratio, expected):
    assert replay_block_count(100, ratio) == expected


def test_replay_blocks_are_distinct_until_the_corpus_runs_out():
    replay = TokenStream.of(np.arange(40), [(0, 40)])
    assert sorted(sample_replay_blocks(replay, 4, 10, seed=0)) == list(range(10))
    more = sample_replay_blocks(replay, 4, 25, seed=0)
    assert len(more) == 25 and sorted(np.bincount(more)) == [2] * 5 + [3] * 5
    assert len(sample_replay_blocks(replay, 4, 0, seed=0)) == 0


def test_a_replay_corpus_under_one_block_is_refused():
    with pytest.raises(ConfigError, match="fewer than data.block_size=64"):
        sample_replay_blocks(TokenStream.of(np.arange(40), [(0, 40)]), 64, 1, seed=0)


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


class BosCharTokenizer(CharTokenizer):
    """One id per character, with a BOS of its own (as Llama 3's <|begin_of_text|>)."""
    bos_token_id = 1


def test_each_text_is_framed_by_bos_and_eos_where_the_tokenizer_has_a_bos(tmp_path, monkeypatch):
    monkeypatch.setattr(token_data, "BATCH", 2)  # written batch by batch: several batches here
    texts = ["ab", "cde", "", "f" * 7, "gh"]
    arrays = tokenize_once(lambda: texts, BosCharTokenizer(), tmp_path / "tok", {})
    assert arrays.tokens[:9].tolist() == [1, 97, 98, 0, 1, 99, 100, 101, 0]
    assert arrays.offsets.tolist() == [0, 4, 9, 11, 20, 24]  # each text's length + 2
    for i, text in enumerate(texts):
        framed = arrays.tokens[arrays.offsets[i]:arrays.offsets[i + 1]].tolist()
        assert framed == [1, *map(ord, text), 0]
    assert len(arrays.tokens) == arrays.n_tokens
    assert framing(BosCharTokenizer()) == "bos+eos" and framing(CharTokenizer()) == "eos"


def test_the_framing_is_part_of_the_cache_identity(tmp_path):
    assert cache_key("src", "tok", "eos") != cache_key("src", "tok", "bos+eos")
    tokenize_once(lambda: ["ab"], CharTokenizer(), tmp_path / "tok", {"tokenizer": "t"})
    # An EOS-only cache is never read as a BOS+EOS one, even from the same folder.
    with pytest.raises(ConfigError, match="made from another framing"):
        tokenize_once(lambda: ["ab"], BosCharTokenizer(), tmp_path / "tok", {"tokenizer": "t"})


def test_the_tiny_tokenizer_frames_texts_as_llama_3_does(tmp_path):
    from entigraph.tiny_model import BOS, EOS, train_tokenizer

    texts = ["The cat sat on the mat.", "A dog ran in the park.", "Birds sing."] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    assert tokenizer.bos_token == BOS and tokenizer.eos_token == EOS
    assert tokenizer.bos_token_id != tokenizer.eos_token_id
    arrays = tokenize_once(lambda: texts, tokenizer, tmp_path / "tok", {})
    starts, ends = arrays.offsets[:-1], arrays.offsets[1:] - 1
    assert arrays.tokens[0] == tokenizer.bos_token_id
    assert (arrays.tokens[starts] == tokenizer.bos_token_id).all()
    assert (arrays.tokens[ends] == tokenizer.eos_token_id).all()
    assert tokenizer.decode(arrays.tokens[starts[1] + 1:ends[1]].tolist()) == texts[1]


TOKENISE_SLOWLY = """
import sys, time
from pathlib import Path
from entigraph.tiny_model import train_tokenizer
from entigraph.token_data import tokenize_once
texts = [f"text number {i} of the corpus" for i in range(60)]
tokenizer = train_tokenizer(texts, 300)
def slowly():
    print("tokenising", flush=True)
    for text in texts:
        time.sleep(0.05)
        yield text
arrays = tokenize_once(slowly, tokenizer, Path(sys.argv[1]), {"source": "x"}, total=60)
print("tokens", arrays.n_tokens, flush=True)
"""


def test_two_processes_that_need_one_cache_tokenise_it_once(tmp_path):
    import subprocess
    import sys

    def start():
        return subprocess.Popen([sys.executable, "-c", TOKENISE_SLOWLY, str(tmp_path / "cache")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    first = start()
    assert first.stdout.readline().strip() == "tokenising"  # it holds the lock for ~3 s now
    second = start()
    outputs = [first.stdout.readline() + first.communicate(timeout=120)[0],
               second.communicate(timeout=120)[0]]
    assert "\ntokenising" not in "\n" + outputs[1] and "waiting for it" in outputs[1]
    tokens = {line for out in outputs for line in out.splitlines() if line.startswith("tokens")}
    assert len(tokens) == 1 and first.returncode == second.returncode == 0
    assert not list(tmp_path.glob("*.tmp"))


def test_a_fast_tokenizer_fills_the_token_file_as_tokenizer_calls_would(tmp_path):
    from entigraph.tiny_model import train_tokenizer

    texts = [f"text {i}: {'lorem ipsum ' * (i % 7)}dolor" for i in range(1100)]  # 3 batches
    tokenizer = train_tokenizer(texts, 300)
    arrays = tokenize_once(lambda: iter(texts), tokenizer, tmp_path / "cache", {"source": "t"})
    expected = [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
                for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert arrays.tokens.tolist() == [t for ids in expected for t in ids]
    assert np.diff(arrays.offsets).tolist() == [len(ids) for ids in expected]
