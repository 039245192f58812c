"""retrieve(): the chunks of a corpus nearest each query, for the rag protocol's prompts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from entigraph.corpus import Document
from entigraph.errors import EntigraphError
from entigraph.retrieval.chunks import Chunk, chunk_documents
from entigraph.retrieval.index import ChunkIndex
from entigraph.retrieval.rerankers import rerank


@dataclass
class Retrieved:
    # Per query, in the queries' order: the top_k chunks, best first, with their score (the
    # reranker's when one is set, else the retriever's; higher is better).
    chunks: list[list[tuple[Chunk, float]]]
    # chunks (the index's size), index ("built" or "cached"), index_dir, embedded_texts (chunks
    # and queries sent to the embedding model by this call), embedding_requests (HTTP requests
    # or model batches), rerank_requests, reranked_queries (queries scored by this call).
    stats: dict = field(default_factory=dict)


def retrieve(documents: Sequence[Document], queries: Sequence[str], rag_cfg: Any,
             tokenizer: Optional[Any] = None) -> Retrieved:
    """The eval.rag.top_k chunks of `documents` for each query: eval.rag.candidates from the
    retriever's index (built once into eval.rag.cache_dir), reordered by the reranker if one is
    set. `tokenizer`, the evaluated model's fast tokenizer, is needed for chunk_unit=tokens."""
    chunks = chunk_documents(documents, rag_cfg, tokenizer)
    if not chunks:
        raise EntigraphError("eval.rag: the corpus's documents have no text to retrieve from")
    queries = list(queries)
    tokens = rag_cfg.chunk_unit == "tokens"
    settings = {"unit": rag_cfg.chunk_unit, "size": int(rag_cfg.chunk_size),
                "overlap": int(rag_cfg.chunk_overlap),
                "tokenizer": getattr(tokenizer, "name_or_path", None) if tokens else None}
    with ChunkIndex(chunks, rag_cfg.retriever, Path(rag_cfg.cache_dir), settings) as index:
        found = (index.search(queries, min(int(rag_cfg.candidates), len(chunks)))
                 if queries else [])
    ranked, rerank_stats = rerank(queries, found, chunks, rag_cfg.reranker,
                                  Path(rag_cfg.cache_dir), index.folder.name)
    top_k = int(rag_cfg.top_k)
    return Retrieved([[(chunks[n], score) for n, score in ranking[:top_k]] for ranking in ranked],
                     {**index.stats(), **rerank_stats})
