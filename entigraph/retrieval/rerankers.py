"""The retriever's candidates scored again with eval.rag.reranker's model: a Cohere-style
/rerank endpoint, vLLM's score API in-process, or a sentence-transformers cross-encoder.

Scores are cached in rerank/<backend>-<model>-<key>.jsonl under the cache folder (one file
per reranker and index), keyed by the query's text and the set of the candidates' ids, each
score by its chunk id: a sweep over top_k, order or temperature with the same questions calls
the reranker once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from entigraph.errors import EntigraphError
from entigraph.retrieval import local_models
from entigraph.retrieval.chunks import Chunk
from entigraph.retrieval.service import PROGRESS_MIN, post_each
from entigraph.retrieval.store import KeyedStore, cache_name, digest, model_identity
from entigraph.vllm_backend import stop_engine

KEY = "eval.rag.reranker"
RERANK = "rerank"
Ranking = list[tuple[int, float]]  # (chunk number, score), best first


class Reranker:
    """What every backend shares; `score` is the backend's."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.requests = 0  # HTTP requests (openai), model batches or engine calls (local)
        self._model: Optional[Any] = None

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        """Each query's score for each of its candidate texts (higher: more relevant)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the model holds (vLLM's engine process)."""


def _per_query(flat: Sequence[float], candidates: list[list[str]]) -> list[list[float]]:
    """Scores of all (query, text) pairs, in order, cut back into one list per query."""
    out, at = [], 0
    for texts in candidates:
        out.append([float(s) for s in flat[at:at + len(texts)]])
        at += len(texts)
    return out


def _pairs(queries: list[str], candidates: list[list[str]]) -> list[tuple[str, str]]:
    return [(query, text) for query, texts in zip(queries, candidates) for text in texts]


class CrossEncoderReranker(Reranker):
    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        self._model = self._model or local_models.cross_encoder(self.cfg.model)
        pairs, batch = _pairs(queries, candidates), int(self.cfg.batch_size)
        self.requests += math.ceil(len(pairs) / batch)
        flat = self._model.predict(pairs, batch_size=batch,
                                   show_progress_bar=len(pairs) >= PROGRESS_MIN)
        return _per_query(flat, candidates)


class VllmReranker(Reranker):
    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        self._model = self._model or local_models.vllm_pooling_engine(self.cfg)
        pairs = _pairs(queries, candidates)
        self.requests += 1  # one call: the engine batches by itself
        outputs = self._model.score([q for q, _ in pairs], [t for _, t in pairs],
                                    use_tqdm=len(pairs) >= PROGRESS_MIN)
        return _per_query([output.outputs.score for output in outputs], candidates)

    def close(self) -> None:
        if self._model is not None:
            stop_engine(self._model)
            self._model = None


class OpenAIReranker(Reranker):
    """POST {base_url}/rerank (Cohere v2, vLLM's server, Jina), a request per query."""

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        bodies = [{"model": self.cfg.model, "query": query, "documents": texts,
                   "top_n": len(texts)} for query, texts in zip(queries, candidates)]
        # Cohere and Jina list no models at GET /models: a wrong base_url fails with 404.
        scores = post_each(self.cfg, KEY, "/rerank", bodies, _relevance, desc="reranking",
                           units=lambda body: 1, models_listed=False)
        self.requests += len(bodies)
        return scores


def _relevance(body: dict, reply: dict) -> tuple[list[float], int]:
    """The reply's scores in the order of the documents sent (by their `index`)."""
    scores: list[Optional[float]] = [None] * len(body["documents"])
    for result in reply.get("results") or []:
        scores[result["index"]] = float(result["relevance_score"])
    if None in scores:
        raise EntigraphError(f"{KEY}: the server scored {len(reply.get('results') or [])} of "
                             f"{len(scores)} documents; check {KEY}.base_url (a /rerank API)")
    return scores, (reply.get("usage") or {}).get("total_tokens", 0)


BACKENDS = {"cross_encoder": CrossEncoderReranker, "vllm": VllmReranker,
            "openai": OpenAIReranker}


def rerank(queries: list[str], found: list[Ranking], chunks: Sequence[Chunk],
           reranker_cfg: Any, cache_dir: Path, index_name: str) -> tuple[list[Ranking], dict]:
    """Each query's candidates (`found`) ordered by the reranker's scores, best first (ties
    keep the retriever's order); and the calls it took. backend none: `found` as it is."""
    if reranker_cfg.backend == "none":
        return found, {"rerank_requests": 0, "reranked_queries": 0}
    identity = model_identity(reranker_cfg)
    store = KeyedStore(Path(cache_dir) / RERANK / f"{cache_name(identity, index_name)}.jsonl",
                       "reranking these questions")
    # Keyed by the candidates as a set: near-tied ones may come back in another order when
    # other questions share the index search (FAISS sums differ in the last bits).
    keys = [digest(q, *sorted(chunks[n].id for n, _ in ranking))
            for q, ranking in zip(queries, found)]
    asked = dict(zip(keys, zip(queries, found)))
    reranker = BACKENDS[reranker_cfg.backend](reranker_cfg)

    def score(missing: list[str]) -> list[dict[str, float]]:
        """Each missing key's scores by chunk id."""
        try:
            ids = [[chunks[n].id for n, _ in asked[key][1]] for key in missing]
            values = reranker.score([asked[key][0] for key in missing],
                                    [[chunks[n].text for n, _ in asked[key][1]] for key in missing])
            return [dict(zip(*pair)) for pair in zip(ids, values)]
        finally:
            reranker.close()

    scores, computed = store.values(keys, score)
    ranked = [sorted(((n, by_id[chunks[n].id]) for n, _ in ranking), key=lambda pair: -pair[1])
              for ranking, by_id in zip(found, scores)]
    return ranked, {"rerank_requests": reranker.requests, "reranked_queries": computed}
