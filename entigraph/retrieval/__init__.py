"""Retrieval for the rag protocol (open-book QA, the paper's Section 5): the corpus cut into
chunks (chunks.py), an index of them searched by BM25 or by embeddings in FAISS (bm25.py,
embedders.py, index.py), an optional reranker (rerankers.py), and on-disk caches so that
reruns embed and rerank nothing twice (store.py). `retrieve` is the entry point."""
import logging

from entigraph.retrieval.chunks import Chunk, chunk_documents
from entigraph.retrieval.pipeline import Retrieved, retrieve

__all__ = ["Chunk", "Retrieved", "chunk_documents", "retrieve"]

# Their INFO lines (which CPU build of faiss loaded, which model folder) would fill the log of
# every evaluation; warnings still show.
for _name in ("faiss", "sentence_transformers"):
    logging.getLogger(_name).setLevel(logging.WARNING)
