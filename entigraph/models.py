"""The model and tokenizer a run trains: a pretrained one from a folder or hub id, or a tiny one
built locally (its tokenizer trained once on the synthetic corpus and cached beside it)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from entigraph.synthesis import read_items
from entigraph.tiny_model import TOKENIZER_REVISION, build_tiny_model, train_tokenizer


def load_tokenizer(model_cfg, corpus_dir: Path):
    from transformers import AutoTokenizer

    if model_cfg.pretrained:
        return AutoTokenizer.from_pretrained(model_cfg.pretrained)
    path = Path(corpus_dir) / (f"tokenizer-{model_cfg.name}-v{model_cfg.vocab_size}-"
                               f"{TOKENIZER_REVISION}")
    if not path.exists():
        texts = [item["text"] for item in read_items(corpus_dir)]
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        train_tokenizer(texts, model_cfg.vocab_size).save_pretrained(tmp)
        tmp.rename(path)  # atomic: a half-saved tokenizer is never picked up
    return AutoTokenizer.from_pretrained(path)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies the tokenizer's vocabulary and rules, so token caches never mix tokenizers."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_model(model_cfg, tokenizer, context_length: int, seed: int):
    if model_cfg.pretrained:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_cfg.pretrained)
    return build_tiny_model(model_cfg, tokenizer, context_length, seed)
