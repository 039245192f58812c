"""Token arrays: each corpus tokenised once, a budget selected by index, blocks read by index.

A token folder holds `tokens.bin` (all texts back to back, each framed as BOS, text, EOS, as the
reference tokenisation with Llama 3 does; EOS only where the tokenizer has no BOS), `offsets.npy`
(text boundaries: text i, with its BOS and EOS, is tokens[offsets[i]:offsets[i + 1]]) and
`manifest.json`, keyed by the source's content, the tokenizer and the framing, so no run
re-tokenises and no cache is read with the wrong tokenizer or framing.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from entigraph.cache_folders import make_folder_once
from entigraph.errors import ConfigError
from entigraph.records import write_json_atomic

BATCH = 512


@dataclass
class TokenArrays:
    tokens: np.ndarray  # memory-mapped, 1-D
    offsets: np.ndarray  # len(texts) + 1 boundaries into tokens

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


def framing(tokenizer) -> str:
    """How each text is framed in a token array: "bos+eos" where the tokenizer has a BOS token
    (Llama 3's <|begin_of_text|>), else "eos". Part of a token cache's identity."""
    return "bos+eos" if getattr(tokenizer, "bos_token_id", None) is not None else "eos"


def cache_key(source_digest: str, tokenizer_fingerprint: str, text_framing: str) -> str:
    return hashlib.sha256(f"{source_digest}:{tokenizer_fingerprint}:{text_framing}"
                          .encode()).hexdigest()[:16]


def tokenize_once(texts: Callable[[], Iterable[str]], tokenizer, out_dir: Path, meta: dict,
                  total: Optional[int] = None) -> TokenArrays:
    """Tokenise `texts()` (`total` of them, for the progress bar) into `out_dir` unless a
    complete cache is already there. `meta`, with the framing, is recorded in the manifest, and
    an existing cache must agree with it (same source, same tokenizer, same framing) or it is
    refused."""
    out_dir = Path(out_dir)
    meta = {**meta, "framing": framing(tokenizer)}
    make_folder_once(out_dir, "tokenising this corpus",
                     lambda tmp: _tokenize(texts(), tokenizer, tmp, meta, total))
    found = json.loads((out_dir / "manifest.json").read_text())
    differs = [key for key in meta if found.get(key) != meta[key]]
    if differs:
        raise ConfigError(f"the token cache {out_dir} was made from another "
                          f"{' and '.join(differs)}; delete that folder to tokenise again")
    return load_tokens(out_dir)


def _encoded(texts: Iterator[str], tokenizer) -> Iterator[list[list[int]]]:
    """The ids of `texts`, BATCH at a time, without special tokens (the framing is added by
    the caller). The fast tokenizer encodes a batch on all cores, on a thread of its own while
    the previous batch is written (it releases the GIL), and without the character offsets
    nobody reads (encode_batch_fast: 18% faster than `tokenizer(...)`, measured). A tokenizer
    without a fast backend is called as usual."""
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def ids(batch: list[str]) -> list[list[int]]:
        if backend is None:
            return tokenizer(batch, add_special_tokens=False)["input_ids"]
        return [encoding.ids for encoding in backend.encode_batch_fast(batch,
                                                                       add_special_tokens=False)]

    with ThreadPoolExecutor(1) as pool:
        ahead = None
        for batch in iter(lambda: list(itertools.islice(texts, BATCH)), []):
            encoding = pool.submit(ids, batch)
            if ahead is not None:
                yield ahead.result()
            ahead = encoding
        if ahead is not None:
            yield ahead.result()


def _tokenize(texts: Iterable[str], tokenizer, tmp: Path, meta: dict,
              total: Optional[int]) -> None:
    """Texts are read, tokenised and written into the folder `tmp` a batch at a time: memory
    holds one batch of texts and ids and one length per text, whatever the corpus's size."""
    head = () if meta["framing"] == "eos" else (tokenizer.bos_token_id,)
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32
    lengths, n_tokens = array("q"), 0  # one length per text
    bar = tqdm(total=total, desc="tokenising", unit="text")
    with open(tmp / "tokens.bin", "wb") as f, bar:
        for ids in _encoded(iter(texts), tokenizer):
            sizes = [len(head) + len(x) + 1 for x in ids]
            lengths.extend(sizes)
            np.fromiter(itertools.chain.from_iterable((*head, *x, eos) for x in ids),
                        dtype=dtype, count=sum(sizes)).tofile(f)
            n_tokens += sum(sizes)
            bar.update(len(ids))
            rate = n_tokens / max(bar.format_dict["elapsed"], 1e-9)
            bar.set_postfix(tokens=f"{n_tokens:,}", per_s=f"{rate:,.0f}", refresh=False)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    np.save(tmp / "offsets.npy", offsets)
    write_json_atomic(tmp / "manifest.json", {**meta, "dtype": np.dtype(dtype).name,
                                              "n_texts": len(lengths),
                                              "n_tokens": int(offsets[-1])})


def load_tokens(token_dir: Path) -> TokenArrays:
    token_dir = Path(token_dir)
    manifest = json.loads((token_dir / "manifest.json").read_text())
    tokens = np.memmap(token_dir / "tokens.bin", dtype=manifest["dtype"], mode="r")
    return TokenArrays(tokens, np.load(token_dir / "offsets.npy"))


def select_budget(offsets: np.ndarray, budget: int | None, seed: int,
                  repeat: bool = False) -> list[tuple[int, int]]:
    """Spans holding exactly `budget` tokens (all if None): the texts in one seeded permutation,
    the last one taken cut, so a smaller budget's spans are always a prefix of a larger one's
    (nested budgets).

    A budget beyond the corpus is refused unless `repeat`: then the first pass (that same
    permutation) is followed by further passes, each a fresh permutation drawn from the same
    generator, so budgets stay nested across repeated ones too.
    """
    available = int(offsets[-1])
    if budget is None:
        budget = available
    if budget > available and not (repeat and available):
        raise ConfigError(f"config: data.synthetic_tokens={budget} exceeds the {available} "
                          f"synthetic tokens in the corpus; set data.synthetic_tokens <= "
                          f"{available}" + ("" if repeat else ", or data.repeat=true to repeat "
                                            "the corpus up to it"))
    rng = np.random.default_rng(seed)
    spans, total = [], 0
    while total < budget:
        for i in rng.permutation(len(offsets) - 1):
            start, end = int(offsets[i]), int(offsets[i + 1])
            take = min(end - start, budget - total)
            spans.append((start, start + take))
            total += take
            if total == budget:
                break
    return spans


@dataclass
class TokenStream:
    """Spans of a (memory-mapped) token array read back to back as one stream. Nothing is
    copied: it holds two numbers per span, and `blocks` reads only the blocks asked for."""
    tokens: np.ndarray
    starts: np.ndarray  # where each span begins in `tokens`
    cum: np.ndarray  # where each span begins in the stream; cum[-1] is the stream's length

    @classmethod
    def of(cls, tokens: np.ndarray, spans) -> "TokenStream":
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        return cls(tokens, spans[:, 0], np.concatenate([[0], np.cumsum(spans[:, 1] - spans[:, 0])]))

    def __len__(self) -> int:
        return int(self.cum[-1])

    def n_blocks(self, block_size: int) -> int:
        """Full blocks in the stream: packing has no padding, the tail under a block is dropped."""
        return len(self) // block_size

    def blocks(self, ids, block_size: int) -> np.ndarray:
        """Blocks `ids` (block i = stream positions [i * block_size, (i + 1) * block_size)) as a
        (len(ids), block_size) int64 array; a block may cross span boundaries."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and not 0 <= ids.min() <= ids.max() < self.n_blocks(block_size):
            raise IndexError(f"block ids outside 0..{self.n_blocks(block_size) - 1}")
        positions = ids[:, None] * block_size + np.arange(block_size)
        span = np.searchsorted(self.cum, positions, side="right") - 1
        return np.asarray(self.tokens[self.starts[span] + positions - self.cum[span]],
                          dtype=np.int64)


def replay_block_count(synthetic_blocks: int, mixing_ratio: float) -> int:
    """Replay blocks so that they make up `mixing_ratio` of all training blocks (they add steps)."""
    return round(synthetic_blocks * mixing_ratio / (1.0 - mixing_ratio))


def sample_replay_blocks(replay: TokenStream, block_size: int, count: int, seed: int) -> np.ndarray:
    """Ids of `count` distinct replay blocks (repeating only when the replay corpus is too small)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    available = replay.n_blocks(block_size)
    if available == 0:
        raise ConfigError(f"config: data.replay_path holds fewer than data.block_size={block_size} "
                          f"tokens; give a larger replay corpus")
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(available) for _ in range(-(-count // available))])[:count]
