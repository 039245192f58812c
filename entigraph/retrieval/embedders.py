"""Texts to unit vectors with eval.rag.retriever's model: a sentence-transformers folder, an
OpenAI-compatible /embeddings endpoint, or vLLM in-process. A model loads on first use (a
rerun whose vectors are all cached loads nothing) and each embedder counts what it sends."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from entigraph.errors import EntigraphError
from entigraph.retrieval import local_models
from entigraph.retrieval.service import PROGRESS_MIN, post_each
from entigraph.vllm_backend import stop_engine

KEY = "eval.rag.retriever"


def unit_rows(vectors: Any) -> np.ndarray:
    """float32 rows of length 1: inner products are then cosines (FAISS IndexFlatIP)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class Embedder:
    """What every backend shares: normalising, counting, closing. `_embed` is the backend's."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.texts = 0  # texts sent to the model
        self.requests = 0  # HTTP requests (openai), model batches or engine calls (local)
        self._model: Optional[Any] = None  # a local model, loaded by the first `embed`

    def embed(self, texts: list[str], desc: str) -> np.ndarray:
        """Unit vectors of `texts`, a row each; `desc` labels the progress bar."""
        vectors = unit_rows(self._embed(texts, desc))
        self.texts += len(texts)
        return vectors

    def _embed(self, texts: list[str], desc: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the model holds (vLLM's engine process)."""


class SentenceTransformerEmbedder(Embedder):
    def _embed(self, texts: list[str], desc: str) -> np.ndarray:
        self._model = self._model or local_models.sentence_transformer(self.cfg.model)
        batch = int(self.cfg.batch_size)
        self.requests += math.ceil(len(texts) / batch)
        return self._model.encode(texts, batch_size=batch, normalize_embeddings=True,
                                  convert_to_numpy=True,
                                  show_progress_bar=len(texts) >= PROGRESS_MIN)


class VllmEmbedder(Embedder):
    def _embed(self, texts: list[str], desc: str) -> list[list[float]]:
        self._model = self._model or local_models.vllm_pooling_engine(self.cfg)
        self.requests += 1  # the engine batches by itself
        outputs = self._model.embed(texts, use_tqdm=len(texts) >= PROGRESS_MIN)
        return [output.outputs.embedding for output in outputs]

    def close(self) -> None:
        if self._model is not None:
            stop_engine(self._model)
            self._model = None


class OpenAIEmbedder(Embedder):
    """POST {base_url}/embeddings, batch_size texts a request, max_in_flight at once."""

    def _embed(self, texts: list[str], desc: str) -> np.ndarray:
        size = int(self.cfg.batch_size)
        bodies = [self._body(texts[i:i + size]) for i in range(0, len(texts), size)]
        batches = post_each(self.cfg, KEY, "/embeddings", bodies, _embeddings, desc=desc,
                            units=lambda body: len(body["input"]))
        self.requests += len(bodies)
        return np.concatenate(batches)

    def _body(self, texts: list[str]) -> dict:
        body = {"model": self.cfg.model, "input": texts, "encoding_format": "float"}
        if self.cfg.dimensions:
            body["dimensions"] = int(self.cfg.dimensions)
        return body


def _embeddings(body: dict, reply: dict) -> tuple[np.ndarray, int]:
    """A reply's vectors in the order of the texts sent (by their `index`), as float32 rows at
    once (Python floats would take ~8x the memory: 1.1 GB for the paper's 8.5k chunks at 3,072
    dimensions), and its tokens."""
    data = sorted(reply.get("data") or [], key=lambda item: item["index"])
    if len(data) != len(body["input"]):
        raise EntigraphError(f"{KEY}: the server answered {len(data)} embeddings for "
                             f"{len(body['input'])} texts; check {KEY}.base_url")
    return (np.asarray([item["embedding"] for item in data], dtype=np.float32),
            (reply.get("usage") or {}).get("total_tokens", 0))


BACKENDS = {"sentence_transformers": SentenceTransformerEmbedder, "openai": OpenAIEmbedder,
            "vllm": VllmEmbedder}


def make_embedder(retriever_cfg: Any) -> Embedder:
    return BACKENDS[retriever_cfg.backend](retriever_cfg)
