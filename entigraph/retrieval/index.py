"""The searchable index of a corpus's chunks, built once into eval.rag.cache_dir.

Layout under the cache folder:
  indexes/<backend>-<model>-<key>/      one per (the chunks' content, the retriever's model)
      chunks.jsonl                      id, doc_id, text of every chunk, in index order
      index.faiss                       embedding backends: the unit vectors (IndexFlatIP)
      bm25/                             bm25: bm25s's saved index
      manifest.json                     settings, counts, creation time
  query_embeddings/<backend>-<model>-<key>.jsonl   query text digest -> vector, per model
The chunks' digest covers the corpus, the chunking settings and the tokenizer (whatever
changes a chunk changes it); a folder appears complete or not at all (cache_folders).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from entigraph.cache_folders import make_folder_once
from entigraph.errors import EntigraphError
from entigraph.records import utc_now, write_json_atomic, write_lines_atomic
from entigraph.retrieval.bm25 import save_bm25, search_bm25
from entigraph.retrieval.chunks import Chunk
from entigraph.retrieval.embedders import Embedder, make_embedder
from entigraph.retrieval.store import (KeyedStore, cache_name, digest, model_identity,
                                       text_vector, vector_text)

INDEXES = "indexes"
BM25, FAISS = "bm25", "index.faiss"
QUERY_EMBEDDINGS = "query_embeddings"


def chunks_digest(chunks: Sequence[Chunk]) -> str:
    return digest(*(part for chunk in chunks for part in (chunk.id, chunk.doc_id, chunk.text)))


class ChunkIndex:
    """`chunks` searchable with eval.rag.retriever; `settings` (the chunking) go in the
    manifest. A context manager: entering builds the index unless it is cached, leaving frees
    the embedder, which loads only if something must be embedded."""

    def __init__(self, chunks: Sequence[Chunk], retriever_cfg: Any, cache_dir: Path,
                 settings: dict):
        self.chunks = list(chunks)
        self.identity = model_identity(retriever_cfg)
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self.embedder: Optional[Embedder] = (None if retriever_cfg.backend == "bm25"
                                             else make_embedder(retriever_cfg))
        self.digest = chunks_digest(self.chunks)
        self.folder = self.cache_dir / INDEXES / cache_name(self.identity, self.digest)
        self.status = "unopened"

    def __enter__(self) -> "ChunkIndex":
        try:
            built = make_folder_once(self.folder, "building this index", self._build)
        except BaseException:
            self.close()
            raise
        self.status = "built" if built else "cached"
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _build(self, tmp: Path) -> None:
        write_lines_atomic(tmp / "chunks.jsonl", (json.dumps(
            {"id": c.id, "doc_id": c.doc_id, "text": c.text}) + "\n" for c in self.chunks))
        texts, vectors = [c.text for c in self.chunks], {}
        if self.embedder is None:
            save_bm25(texts, tmp / BM25)
        else:
            import faiss

            embedded = self.embedder.embed(texts, "embedding chunks")
            index = faiss.IndexFlatIP(embedded.shape[1])
            index.add(embedded)
            faiss.write_index(index, str(tmp / FAISS))
            vectors = {"dimensions": int(embedded.shape[1])}
        write_json_atomic(tmp / "manifest.json", {
            "retriever": self.identity, "chunking": self.settings,
            "chunks": len(self.chunks), "documents": len({c.doc_id for c in self.chunks}),
            "chunks_digest": self.digest, **vectors, "created_at": utc_now()})

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Per query, k (chunk number, score) pairs, best first (cosine, or BM25's score)."""
        if self.embedder is None:
            scores, numbers = search_bm25(self.folder / BM25, queries, k)
        else:
            scores, numbers = self._faiss().search(self._query_vectors(queries), k)
        return [list(zip(row.tolist(), values.tolist())) for row, values in zip(numbers, scores)]

    def _faiss(self):
        import faiss

        index = faiss.read_index(str(self.folder / FAISS))
        if index.ntotal != len(self.chunks):
            raise EntigraphError(f"eval.rag: the index {self.folder} holds {index.ntotal} "
                                 f"vectors for {len(self.chunks)} chunks; delete that folder")
        return index

    def _query_vectors(self, queries: list[str]) -> np.ndarray:
        """The queries' vectors: from the cache, those missing embedded (and cached) now."""
        store = KeyedStore(self.cache_dir / QUERY_EMBEDDINGS / f"{cache_name(self.identity)}.jsonl",
                           "embedding these questions")
        keys = [digest(q) for q in queries]
        text_of = dict(zip(keys, queries))

        def embed(missing: list[str]) -> list[str]:
            vectors = self.embedder.embed([text_of[key] for key in missing], "embedding questions")
            return [vector_text(v) for v in vectors]

        found, _ = store.values(keys, embed)
        return np.stack([text_vector(v) for v in found])

    def stats(self) -> dict:
        embedder = self.embedder
        return {"chunks": len(self.chunks), "index": self.status, "index_dir": str(self.folder),
                "embedded_texts": embedder.texts if embedder else 0,
                "embedding_requests": embedder.requests if embedder else 0}

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
