"""The rag protocol (open-book QA): its five-shot prompt and retrieval query, its settings, and
end to end through `entigraph eval` on a tiny model with BM25 and all-MiniLM-L6-v2."""
import json
from pathlib import Path

import pytest

from cli import entigraph
from entigraph import cot_prompt, rag_prompt
from entigraph.config import validate
from entigraph.errors import ConfigError

CHOICES = ["a harbour", "a mill", "a school", "a bridge"]


def target_block(prompt: str) -> str:
    return prompt.split("## Example 6\n", 1)[1]


def test_the_question_comes_after_its_contexts_in_the_order_given():
    prompt = rag_prompt.render("The Lost Key", "Ann Lee", "1950", "What was built first?", CHOICES,
                               ["Title: The Lost Key\n\nfar", "Title: The Lost Key\n\nnear"])
    block = target_block(prompt)
    assert block.startswith("### Instructions\nUse the 2 contexts below to answer the question.\n"
                            "[Context 1]\nTitle: The Lost Key\n\nfar\n\n[Context 2]\n")
    assert block.index("near") < block.index("### Question\nIn the context of \"The Lost Key\", "
                                             "written by Ann Lee in 1950, what was built first?")
    assert block.endswith("D. a bridge\n### Thought Process and Answer\nThought process:")
    assert "Use the 1 context below" in rag_prompt.render("T", "", "", "Why?", CHOICES, ["x"])


def test_the_worked_examples_answer_like_the_closed_book_ones():
    prompt = rag_prompt.render("T", "A", "", "Why?", CHOICES, ["x"])
    shots = prompt.split("\n\n## Example ")[:5]
    assert len(shots) == 5 and prompt.startswith("## Example 1\n### Instructions\n")
    for shot, example, contexts in zip(shots, cot_prompt.FEWSHOT, rag_prompt.EXAMPLE_CONTEXTS):
        assert f"Use the {len(contexts)} context" in shot
        assert all(f"[Context {i + 1}]\nTitle: {title}\nAuthor: {author}\n\n{text}" in shot
                   for i, (title, author, text) in enumerate(contexts))
        assert cot_prompt.parse_answer(shot.split("Thought process:")[1]) \
            == cot_prompt.LETTERS[example["answer"]]
        answer = shot.split("### Thought Process and Answer\n")[1]  # what a model would write
        assert not any(stop in answer for stop in cot_prompt.STOP_SEQUENCES)


def test_a_question_is_retrieved_by_its_framing_and_choices():
    query = rag_prompt.query("The Lost Key", "Ann Lee", "1950", "What was built first?", CHOICES)
    assert query == ('In the context of "The Lost Key", written by Ann Lee in 1950, what was '
                     'built first? There is only one correct choice.\n'
                     'A. a harbour\nB. a mill\nC. a school\nD. a bridge')


@pytest.mark.parametrize("override,message", [
    ("eval.rag.chunk_overlap=256", "eval.rag.chunk_overlap=256 must be smaller than "
                                   "eval.rag.chunk_size=128"),
    ("eval.rag.top_k=20", "eval.rag.top_k=20 is more than eval.rag.candidates=12"),
    ("eval.rag.retriever.model=null", "eval.rag.retriever.model is not set for backend "
                                      "sentence_transformers"),
    ("eval.rag.reranker.backend=openai", "eval.rag.reranker.model is not set for backend openai"),
    ("eval.rag.order=middle", "eval.rag.order='middle' is not allowed"),
])
def test_a_bad_rag_setting_is_named(compose, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate(compose("eval", ["eval=rag", override]))


def test_the_presets_compose_to_the_papers_setting_and_a_cpu_one(compose):
    paper = validate(compose("eval", ["eval=paper_rag"])).eval
    rag = paper.rag
    assert (paper.protocols, paper.split) == (["rag", "cot"], "test")
    assert (rag.chunk_unit, rag.chunk_size, rag.chunk_overlap, rag.candidates, rag.top_k,
            rag.order) == ("characters", 1024, 0, 128, 8, "best_last")
    assert (rag.retriever.backend, rag.retriever.model, rag.retriever.api_key_env) \
        == ("openai", "text-embedding-3-large", "OPENAI_API_KEY")
    assert (rag.reranker.model, rag.reranker.api_key_env) == ("rerank-english-v3.0", "CO_API_KEY")
    assert (rag.sampling.num_samples, rag.sampling.selection, rag.sampling.unparsed) \
        == (64, "random_valid", "drop")
    cpu = validate(compose("eval", ["eval=rag"])).eval.rag
    assert cpu.retriever.backend == "sentence_transformers"
    assert (Path(cpu.retriever.model) / "modules.json").is_file()  # the packaged all-MiniLM-L6-v2
    grid = compose("eval", ["eval=paper_rag", "grid=paper_rag"])
    assert dict(grid.sweep.grid) == {"eval.rag.chunk_size": [256, 512, 1024],
                                     "eval.rag.order": ["best_last", "best_first"],
                                     "eval.rag.top_k": [1, 2, 4, 8, 16],
                                     "eval.rag.sampling.temperature": [0.1, 0.3, 0.5, 0.7]}
    assert grid.eval.split == "validation"
    assert grid.run_dir.endswith("paper_rag/chunk1024-best_last-top8-t0.1")


def test_a_question_table_mixing_protocols_has_every_column(tmp_path, monkeypatch):
    """rag rows carry their chunks, mc rows do not: the W&B table takes both, in any order."""
    import wandb

    from entigraph.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="entigraph-test", dir=str(tmp_path))
    rows = [{"protocol": "rag", "question_id": "q", "correct": True, "chunk_ids": ["a#0", "b#1"],
             "scores": [0.5, 0.9], "recall": True},
            {"protocol": "mc", "question_id": "q", "correct": False}]
    Tracker(run).table("questions", rows)
    run.finish()
    (table,) = Path(run.dir).rglob("questions_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["protocol", "question_id", "correct", "chunk_ids", "scores",
                                 "recall"]
    assert logged["data"][1] == ["mc", "q", False, None, None, None]


# --- end to end ------------------------------------------------------------------------------

def questions_of(run: Path, protocol: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "questions.jsonl").read_text().splitlines()]
    return [q for q in lines if q["protocol"] == protocol]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model continually pretrained on the built-in corpus (experiment=smoke)."""
    root = tmp_path_factory.mktemp("rag")
    for command in (["generate"], ["train", "experiment=smoke"]):
        out = entigraph(*command, f"paths.root={root}", "tracker=disabled", cwd=root)
        assert out.returncode == 0, out.stderr[-3000:]
    (record,) = (root / "runs").rglob("record.json")
    return record.parent


SHORT = ["eval.rag.sampling.num_samples=1", "eval.rag.sampling.max_new_tokens=8",
         "tracker=disabled"]


@pytest.mark.slow
def test_open_book_with_bm25_and_minilm_finds_each_questions_document(trained_run, tmp_path):
    """Each built-in question names its document: both retrievers find it for all 20. A rerun
    reads the cached index and query embeddings (nothing embedded). The analysis then draws
    closed- and open-book accuracy together."""
    cache = f"eval.rag.cache_dir={tmp_path / 'cache'}"
    bm25 = entigraph("eval", f"run={trained_run}", "eval.protocols=[rag]", cache, *SHORT,
                     cwd=tmp_path)
    assert bm25.returncode == 0, bm25.stderr[-3000:]
    assert "retrieval recall 1.00) on 20 questions" in bm25.stdout
    lines = questions_of(trained_run, "rag")
    assert len(lines) == 20 and all(q["recall"] for q in lines)
    for q in lines:  # best last: the scores rise towards the question
        assert len(q["chunk_ids"]) == 4 and q["scores"] == sorted(q["scores"])
        assert q["chunk_ids"][-1].split("#")[0] == q["question_id"].rsplit("-", 1)[0]
    metrics = json.loads((trained_run / "record.json").read_text())["metrics"]
    assert metrics["rag_recall"] == 1.0 and metrics["rag_n_questions"] == 20

    for attempt, index in enumerate(["built", "cached"]):
        minilm = entigraph("eval", f"run={trained_run}", "eval=rag", cache, *SHORT, cwd=tmp_path)
        assert minilm.returncode == 0, minilm.stderr[-3000:]
        assert f"(sentence_transformers, reranker none); index {index}" in minilm.stdout
        assert ("; 0 texts embedded" in minilm.stdout) == (attempt == 1)
        assert "retrieval recall 1.00) on 20 questions" in minilm.stdout
    assert len(questions_of(trained_run, "rag")) == 20  # replaced, not added

    out = entigraph("analyze", f"input={trained_run.parent}", f"output_dir={tmp_path / 'out'}",
                    "protocol=[mc,rag]", "fit.bootstrap_iterations=5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "accuracy_vs_tokens.png").is_file()
    assert "protocol=rag" in (tmp_path / "out" / "fits.md").read_text()


@pytest.mark.slow
def test_the_open_book_settings_sweep_as_a_multirun_and_as_a_search(trained_run, tmp_path):
    model, cache = trained_run / "model", f"eval.rag.cache_dir={tmp_path / 'cache'}"
    grid = entigraph("eval", "--multirun", "eval=rag", "grid=rag", f"checkpoint={model}", cache,
                     f"paths.runs={tmp_path / 'runs'}", "eval.rag.retriever.backend=bm25", *SHORT,
                     cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr[-3000:]
    folders = sorted(p.parent.name for p in (tmp_path / "runs").rglob("record.json"))
    assert folders == ["chunk128-best_last-top1-t0.1", "chunk128-best_last-top3-t0.1",
                       "chunk64-best_last-top1-t0.1", "chunk64-best_last-top3-t0.1"]
    for record in (tmp_path / "runs").rglob("record.json"):
        metrics = json.loads(record.read_text())["metrics"]
        assert metrics["rag_recall"] is not None and metrics["n_questions"] == 4  # validation

    search = entigraph("search", "space=rag", "eval=rag", f"checkpoint={model}", cache,
                       f"sweep.dir={tmp_path / 'search'}", "sweep.optuna.n_trials=2",
                       "sweep.optuna.seed=0", "eval.rag.retriever.backend=bm25", *SHORT,
                       cwd=tmp_path)
    assert search.returncode == 0, search.stderr[-3000:]
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["trials"] == {"complete": 2}
    assert set(summary["best"]["params"]) == {"eval.rag.chunk_size", "eval.rag.top_k"}
    assert (Path(summary["best"]["run_dir"]) / "questions.jsonl").is_file()
