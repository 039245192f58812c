"""The training blocks of one run: the synthetic budget plus replay, and what they amount to.

Meaning of the sweep axes (also in the README):
- data.synthetic_tokens: unique synthetic tokens, a seeded nested subset of the corpus;
- data.mixing_ratio r: the share of training blocks drawn from the replay corpus. With
  data.mixing_mode=add, replay blocks are added (r / (1 - r) per synthetic block), so every
  synthetic token is still seen each epoch and replay adds steps; with `replace` (the reference
  code), each synthetic block is replaced by a replay block with probability r.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from entigraph.errors import ConfigError, CorpusError
from entigraph.models import tokenizer_fingerprint
from entigraph.synthesis import MANIFEST, read_corpus, require_complete
from entigraph.token_data import (TokenStream, cache_key, replay_block_count, sample_replay_blocks,
                                  select_budget, tokenize_once)


@dataclass
class TrainingBlocks:
    """A run's training blocks as an index into the memory-mapped token arrays: block i is block
    ids[i] of the replay stream where is_replay[i], else of the synthetic stream. Tokens are read
    per batch; none is copied before."""
    synthetic: TokenStream
    replay: Optional[TokenStream]
    block_size: int
    ids: np.ndarray  # (n,) int64
    is_replay: np.ndarray  # (n,) bool
    derived: dict

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows) -> np.ndarray:
        """Training blocks `rows` as a (len(rows), block_size) int64 array."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.block_size), dtype=np.int64)
        replay = self.is_replay[rows]
        out[~replay] = self.synthetic.blocks(self.ids[rows[~replay]], self.block_size)
        if replay.any():
            out[replay] = self.replay.blocks(self.ids[rows[replay]], self.block_size)
        return out


def synthetic_tokens(data_cfg, tokenizer, cache_root: Path):
    corpus_dir = Path(data_cfg.corpus_dir)
    require_complete(corpus_dir)
    digest = hashlib.sha256((corpus_dir / MANIFEST).read_bytes()).hexdigest()
    fingerprint = tokenizer_fingerprint(tokenizer)
    return tokenize_once(lambda: [item["text"] for item in read_corpus(corpus_dir)], tokenizer,
                         Path(cache_root) / f"synthetic-{cache_key(digest, fingerprint)}",
                         {"corpus_manifest_sha256": digest, "tokenizer": fingerprint})


def read_replay_texts(path: Path) -> list[str]:
    """A replay corpus: JSON lines with a "text" field (RedPajama style) or plain text."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config: data.replay_path={path} does not exist")
    if path.suffix != ".jsonl":
        return [path.read_text()]
    texts = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CorpusError(f"{path}:{n}: expected a JSON object with a \"text\" field ({err})")
    return texts


def replay_tokens(data_cfg, tokenizer, cache_root: Path):
    path = Path(data_cfg.replay_path)
    texts = read_replay_texts(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fingerprint = tokenizer_fingerprint(tokenizer)
    return tokenize_once(lambda: texts, tokenizer,
                         Path(cache_root) / f"replay-{cache_key(digest, fingerprint)}",
                         {"sha256": digest, "tokenizer": fingerprint})


def build_training_blocks(data_cfg, tokenizer, cache_root: Path, seed: int, epochs: int) -> TrainingBlocks:
    if data_cfg.mixing_ratio > 0 and not data_cfg.replay_path:
        raise ConfigError(f"config: data.mixing_ratio={data_cfg.mixing_ratio} needs a replay "
                          f"corpus; set data.replay_path or data.mixing_ratio=0")
    syn = synthetic_tokens(data_cfg, tokenizer, cache_root)
    bs = data_cfg.block_size
    stream = TokenStream.of(syn.tokens, select_budget(syn.offsets, data_cfg.synthetic_tokens, seed))
    syn_ids = np.arange(stream.n_blocks(bs))
    if len(syn_ids) == 0:
        raise ConfigError(f"config: data.synthetic_tokens={data_cfg.synthetic_tokens} is less "
                          f"than one block (data.block_size={bs})")
    if data_cfg.mixing_mode == "replace":  # the reference: each block swapped with probability r
        swapped = np.random.default_rng([seed, 1]).random(len(syn_ids)) < data_cfg.mixing_ratio
        syn_ids, n_replay = syn_ids[~swapped], int(swapped.sum())
    else:
        n_replay = replay_block_count(len(syn_ids), data_cfg.mixing_ratio)
    replay, replay_ids = None, syn_ids[:0]
    if n_replay:
        tokens = replay_tokens(data_cfg, tokenizer, cache_root).tokens
        replay = TokenStream.of(tokens, [(0, len(tokens))])
        replay_ids = sample_replay_blocks(replay, bs, n_replay, seed)
    derived = {
        "corpus_tokens_available": syn.n_tokens,
        "synthetic_tokens_selected": len(stream),
        "synthetic_tokens_trained": len(syn_ids) * bs,  # the tail under one block is dropped
        "synthetic_blocks": len(syn_ids),
        "replay_blocks": n_replay,
        "tokens_seen_synthetic": len(syn_ids) * bs * epochs,
        "tokens_seen_replay": n_replay * bs * epochs,
        "replay_share": n_replay / (n_replay + len(syn_ids)),
    }
    return TrainingBlocks(stream, replay, bs, np.concatenate([syn_ids, replay_ids]),
                          np.r_[np.zeros(len(syn_ids), bool), np.ones(n_replay, bool)], derived)
