"""The training blocks of one run: the synthetic budget plus replay, and what they amount to.

Meaning of the sweep axes (also in the README):
- data.synthetic_tokens: synthetic tokens, a seeded nested subset of the corpus (with
  data.repeat, a corpus smaller than the budget is repeated up to it);
- data.mixing_ratio r: the share of training blocks drawn from the replay corpus.
  - data.mixing_mode=add: replay blocks are added (r / (1 - r) per synthetic block, the same
    distinct replay blocks every epoch), so every synthetic token is still seen each epoch and
    replay adds steps.
  - data.mixing_mode=replace (the reference code's rule): an epoch has one row per synthetic
    block, and every time a row is read, i.e. in each epoch, a coin with probability r replaces
    synthetic block i by a replay block drawn uniformly (with replacement) from all replay
    blocks. Each epoch thus replaces a different ~r of the synthetic blocks; over E epochs a
    share of about r^E is never seen (1% for r = 0.1 and 2 epochs). The coin and the replay
    block of position i in epoch e are a function of (seed, e, i) alone (`replace_draws`), so a
    resumed run reads exactly the blocks an uninterrupted one does, and the steps stay the same.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from entigraph.errors import ConfigError, CorpusError
from entigraph.models import tokenizer_fingerprint
from entigraph.corpus_folder import corpus_digest, iter_texts, read_manifest, require_complete
from entigraph.token_data import (TokenStream, cache_key, framing, replay_block_count,
                                  sample_replay_blocks, select_budget, tokenize_once)

# Tags the random stream of replace-mode draws apart from the epoch order's ([seed, epoch]).
REPLACE_STREAM = 2


def replace_draws(n_blocks: int, ratio: float, replay_blocks: int, seed: int,
                  epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference rule for one epoch: (replaced, picks), where replaced[i] is the coin
    (probability `ratio`) that reads a replay block instead of synthetic block i, and picks[i]
    the replay block it would read (uniform over 0..replay_blocks-1). Coins and picks come from
    two independent streams seeded by (seed, epoch), each drawn in position order, so position
    i's draws depend on (seed, epoch, i) alone: never on earlier epochs (nothing to replay on
    resume) nor on the budget's size (a smaller budget's draws are a prefix of a larger one's)."""
    coins, choices = np.random.SeedSequence([seed, epoch, REPLACE_STREAM]).spawn(2)
    replaced = np.random.default_rng(coins).random(n_blocks) < ratio
    picks = np.random.default_rng(choices).integers(replay_blocks, size=n_blocks)
    return replaced, picks


@dataclass
class TrainingBlocks:
    """A run's training blocks as an index into the memory-mapped token arrays.

    An epoch has len(self) rows; `epoch(e)` says which block each row reads in epoch e: with
    mixing_mode=add, row i < synthetic_blocks is synthetic block i and the rows after it the
    replay blocks `added`, every epoch alike; with replace (replace_ratio > 0), row i is
    synthetic block i unless that epoch's coin replaced it (`replace_draws`). Only these index
    arrays (a few bytes per block) are held; tokens are read per batch, none copied before."""
    synthetic: TokenStream
    replay: Optional[TokenStream]
    block_size: int
    synthetic_blocks: int
    added: np.ndarray  # add: the replay block ids after the synthetic rows (else empty)
    replace_ratio: float  # replace: the coin's probability (else 0)
    seed: int
    derived: dict = field(default_factory=dict)
    _cached: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.synthetic_blocks + len(self.added)

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, is_replay) of every row in `epoch`: row i reads block ids[i] of the replay stream
        where is_replay[i], else of the synthetic stream. A function of (seed, epoch) alone."""
        if self._cached is None or self._cached[0] != epoch:
            positions = np.arange(self.synthetic_blocks)
            if self.replace_ratio > 0:
                is_replay, picks = replace_draws(self.synthetic_blocks, self.replace_ratio,
                                                 self.replay.n_blocks(self.block_size),
                                                 self.seed, epoch)
                ids = np.where(is_replay, picks, positions)
            else:
                ids = np.concatenate([positions, self.added])
                is_replay = np.r_[np.zeros(self.synthetic_blocks, bool),
                                  np.ones(len(self.added), bool)]
            self._cached = (epoch, ids, is_replay)
        return self._cached[1], self._cached[2]

    def batch(self, rows, epoch: int) -> np.ndarray:
        """Rows `rows` of epoch `epoch` as a (len(rows), block_size) int64 array."""
        ids, is_replay = self.epoch(epoch)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.block_size), dtype=np.int64)
        replay = is_replay[rows]
        out[~replay] = self.synthetic.blocks(ids[rows[~replay]], self.block_size)
        if replay.any():
            out[replay] = self.replay.blocks(ids[rows[replay]], self.block_size)
        return out


def synthetic_tokens(data_cfg, tokenizer, cache_root: Path):
    corpus_dir = Path(data_cfg.corpus_dir)
    require_complete(corpus_dir)
    digest = corpus_digest(corpus_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)
    key = cache_key(digest, fingerprint, framing(tokenizer))
    # "corpus-": caches keyed by the texts' sha256 (before, "synthetic-": by the manifest's).
    return tokenize_once(lambda: iter_texts(corpus_dir), tokenizer,
                         Path(cache_root) / f"corpus-{key}",
                         {"corpus_sha256": digest, "tokenizer": fingerprint},
                         total=read_manifest(corpus_dir)["totals"]["texts"])


def _replay_line(line: str, path: Path, n: int) -> str:
    """The text of line `n` of a JSON-lines replay corpus."""
    try:
        return json.loads(line)["text"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorpusError(f"{path}:{n}: expected a JSON object with a \"text\" field ({err})")


def read_replay_texts(path: Path) -> Iterator[str]:
    """A replay corpus, text by text: JSON lines with a "text" field (RedPajama style) or
    plain text."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config: data.replay_path={path} does not exist")
    if path.suffix != ".jsonl":
        yield path.read_text()
        return
    with open(path) as f:
        yield from (_replay_line(line, path, n) for n, line in enumerate(f, 1) if line.strip())


def check_replay(data_cfg) -> None:
    """A run's replay corpus, checked before any work: needed when replay is mixed in, and
    holding some text (reading stops at the first text found)."""
    if data_cfg.mixing_ratio == 0:
        return
    if not data_cfg.replay_path:
        raise ConfigError(f"config: data.mixing_ratio={data_cfg.mixing_ratio} needs a replay "
                          f"corpus; set data.replay_path or data.mixing_ratio=0")
    path = Path(data_cfg.replay_path)
    if not path.is_file():
        raise ConfigError(f"config: data.replay_path={path} does not exist; give a JSON-lines "
                          f"file with a \"text\" field (RedPajama style) or a text file")
    with open(path) as f:
        has_text = any(line.strip() and (path.suffix != ".jsonl"
                                         or str(_replay_line(line, path, n)).strip())
                       for n, line in enumerate(f, 1))
    if not has_text:
        raise ConfigError(f"config: data.replay_path={path} holds no text; give a replay corpus "
                          f"(e.g. a RedPajama sample) or set data.mixing_ratio=0")


def file_identity(path: Path) -> str:
    """A file by where it is, its size and when it was last written: a cached tokenisation is
    found without reading (or hashing) a replay corpus of many GB, and an edited file is not."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def replay_tokens(data_cfg, tokenizer, cache_root: Path):
    path = Path(data_cfg.replay_path)
    identity = file_identity(path)
    fingerprint = tokenizer_fingerprint(tokenizer)
    key = cache_key(identity, fingerprint, framing(tokenizer))
    return tokenize_once(lambda: read_replay_texts(path), tokenizer,
                         Path(cache_root) / f"replay-{key}",
                         {"file": identity, "tokenizer": fingerprint})


def _replay_stream(data_cfg, tokenizer, cache_root: Path) -> TokenStream:
    tokens = replay_tokens(data_cfg, tokenizer, cache_root).tokens
    stream = TokenStream.of(tokens, [(0, len(tokens))])
    if stream.n_blocks(data_cfg.block_size) == 0:
        raise ConfigError(f"config: data.replay_path holds fewer than data.block_size="
                          f"{data_cfg.block_size} tokens; give a larger replay corpus")
    return stream


def build_training_blocks(data_cfg, tokenizer, cache_root: Path, seed: int, epochs: int) -> TrainingBlocks:
    check_replay(data_cfg)
    syn = synthetic_tokens(data_cfg, tokenizer, cache_root)
    bs, ratio = data_cfg.block_size, data_cfg.mixing_ratio
    stream = TokenStream.of(syn.tokens, select_budget(syn.offsets, data_cfg.synthetic_tokens, seed,
                                                      data_cfg.repeat))
    n_syn = stream.n_blocks(bs)
    if n_syn == 0:
        raise ConfigError(f"config: data.synthetic_tokens={data_cfg.synthetic_tokens} is less "
                          f"than one block (data.block_size={bs})")
    replace = data_cfg.mixing_mode == "replace" and ratio > 0
    n_added = 0 if replace else replay_block_count(n_syn, ratio)
    replay = _replay_stream(data_cfg, tokenizer, cache_root) if replace or n_added else None
    added = sample_replay_blocks(replay, bs, n_added, seed) if n_added else np.zeros(0, np.int64)
    data = TrainingBlocks(stream, replay, bs, n_syn, added, ratio if replace else 0.0, seed)
    unique = min(len(stream), syn.n_tokens)
    data.derived = {
        "corpus_sha256": corpus_digest(data_cfg.corpus_dir),
        "corpus_tokens_available": syn.n_tokens,
        "synthetic_tokens_selected": len(stream),
        # A budget beyond the corpus holds all of it (the first pass takes every text whole).
        "synthetic_tokens_unique": unique,
        "synthetic_repeats": len(stream) / unique,
        "synthetic_blocks": n_syn,  # the budget in full blocks: the tail under one is dropped
        # The rule's expectation: add, exact; replace, r per synthetic block and epoch.
        "replay_blocks_per_epoch_expected": ratio * n_syn if replace else n_added,
        "replay_share_expected": ratio if replace else n_added / len(data),
        **count_reads(data, epochs),
    }
    return data


def count_reads(data: TrainingBlocks, epochs: int) -> dict:
    """What a run of `epochs` epochs will read, counted up front from every epoch's draws (a few
    ms at the paper's scale): totals over the run, equal to the counts its last step logs."""
    unseen, replay_read = np.ones(data.synthetic_blocks, bool), 0
    for epoch in range(epochs):
        _, is_replay = data.epoch(epoch)
        unseen &= is_replay[:data.synthetic_blocks]
        replay_read += int(is_replay.sum())
    rows_read, n_unseen, bs = len(data) * epochs, int(unseen.sum()), data.block_size
    return {
        # Synthetic blocks of the budget never read in the run; tokens of those read at least once.
        "synthetic_blocks_unseen": n_unseen,
        "synthetic_tokens_trained": (data.synthetic_blocks - n_unseen) * bs,
        "replay_blocks_read": replay_read,
        "tokens_seen_synthetic": (rows_read - replay_read) * bs,
        "tokens_seen_replay": replay_read * bs,
        "replay_share": replay_read / rows_read,
    }
