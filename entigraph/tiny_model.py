"""A tiny Llama-style model and a BPE tokenizer trained on the corpus at hand, built locally.

No hub is reachable on CPU test machines, so the demo and the tests make their own model.
"""
from __future__ import annotations

from typing import Iterable

EOS = "<|endoftext|>"
# A BOS of its own, as Llama 3's <|begin_of_text|>: training text is framed BOS, text, EOS.
BOS = "<|begin_of_text|>"
# Names the tokenizer's special tokens in its cache folder, so a corpus folder never serves a
# tokenizer trained under older rules (r1: BOS was the EOS token).
TOKENIZER_REVISION = "r2"
# Positions are rotary (nothing learned per position), so the context can exceed the training
# block for free: room for the five-shot chain-of-thought prompt and its answer.
MIN_CONTEXT = 4096


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (as a transformers fast tokenizer) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS,
                                   pad_token=EOS, unk_token=EOS)


def tiny_config(model_cfg, context_length: int, tokenizer=None):
    """The LlamaConfig of the tiny model with the sizes in `model_cfg` (a validated ModelConfig:
    head dimension >= 32); vocabulary and special tokens from `tokenizer`, or without one (to
    count parameters before it exists) model.vocab_size."""
    from transformers import LlamaConfig

    # Generators (vLLM) stop on the model's EOS id: it must be the tokenizer's.
    vocabulary = {"vocab_size": model_cfg.vocab_size} if tokenizer is None else {
        "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return LlamaConfig(
        **vocabulary,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=max(context_length, MIN_CONTEXT),
        tie_word_embeddings=True,
    )


def build_tiny_model(model_cfg, tokenizer, context_length: int, seed: int):
    """A randomly initialised tiny LlamaForCausalLM (tiny_config) for `tokenizer`."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_config(model_cfg, context_length, tokenizer)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
