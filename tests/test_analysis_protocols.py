"""Closed- and open-book accuracy on one figure (analyze protocol=[cot,rag]): a row per run and
protocol, each protocol a slice with its own question bootstrap, the paired rag - cot
difference, runs without a protocol's result, and the paper's open-book reference lines."""
import csv
import json
from pathlib import Path

import pytest

from entigraph.analysis.compare import PAIRED
from entigraph.analysis.curves import slices
from entigraph.analysis.paper import reference_lines
from entigraph.analysis.report import describe, write_report
from entigraph.config import validate
from entigraph.errors import ConfigError
from test_analysis_sources import QUESTIONS, make_run, rows
from test_compare_methods import BUDGETS, method_run

PROTOCOLS = "protocol=[cot,rag]"
RAG, COT = "mix0.0_lr0.0001, protocol=rag", "mix0.0_lr0.0001, protocol=cot"  # by group


def add_rag(run: Path, accuracy: float) -> Path:
    """`entigraph eval run=<run> eval.protocols=[rag]` as it leaves the run: rag_* metrics and
    rag question lines (right answers nested in cot's lines when rag's accuracy is higher)."""
    record = json.loads((run / "record.json").read_text())
    record["metrics"].update(rag_accuracy=accuracy, rag_n_questions=len(QUESTIONS),
                             rag_n_scored=len(QUESTIONS), rag_parse_rate=1.0, rag_recall=0.8)
    (run / "record.json").write_text(json.dumps(record))
    right = round(accuracy * len(QUESTIONS))
    lines = [{"protocol": "rag", "question_id": q, "prediction": "A", "gold": "A",
              "correct": i < right, "hard": False, "parsed": True, "chunk_ids": [3, 1],
              "scores": [2.5, 1.0], "recall": 1.0} for i, q in enumerate(QUESTIONS)]
    with open(run / "questions.jsonl", "a") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return run


def closed_and_open(root: Path, method=None, base=0.3) -> None:
    """cot at base + 0.05 k, rag 0.2 above it, at the four budgets."""
    for k, tokens in enumerate(BUDGETS):
        accuracy = base + 0.05 * k
        run = (method_run(root, method, tokens, accuracy, protocols=("cot",)) if method
               else make_run(root, tokens, accuracy, protocols=("cot",)))
        add_rag(run, accuracy + 0.2)


def test_closed_and_open_book_are_two_slices_compared_paired(analyze_cfg, tmp_path, capsys):
    closed_and_open(tmp_path / "runs")
    lacking = make_run(tmp_path / "runs", 10 ** 7, 0.5, protocols=("cot",))  # cot only
    outputs, document = write_report(analyze_cfg(tmp_path / "runs", "out", PROTOCOLS,
                                                 "fit.families=[loglinear]", iterations=50))
    skipped = [line for line in capsys.readouterr().out.splitlines() if "left out" in line]
    assert skipped == [f"input={tmp_path / 'runs'}: 1 run(s) without a rag result left out of "
                       f"the protocol=rag slices ({lacking}); add it with `entigraph eval "
                       f"run=<run folder> eval.protocols=[rag]`"]

    slices_ = document["slices"]
    assert list(slices_) == [RAG, COT]  # later protocol first
    assert [s["runs"] for s in slices_.values()] == [4, 5]
    for name, shift in ((COT, 0.0), (RAG, 0.2)):
        s = slices_[name]
        assert s["bootstrap"]["questions"] == "questions resampled (paired across runs)"
        assert s["families"]["loglinear"]["intervals"]["questions"]["beta"]
        for k, b in enumerate(s["by_budget"][:4]):
            assert b["accuracy"] == pytest.approx(0.3 + 0.05 * k + shift)
            assert b["interval"][0] <= b["accuracy"] <= b["interval"][1]

    diffs = document["comparison"]["differences"]  # the RAG gain at every shared budget
    assert [(d["a"], d["b"], d["tokens"]) for d in diffs] == [
        (RAG, COT, t) for t in BUDGETS]
    for d in diffs:
        assert d["difference"] == pytest.approx(0.2) and d["interval_from"] == PAIRED
        assert 0 < d["interval"][0] <= 0.2 <= d["interval"][1]

    with open(outputs["table"]) as f:
        table = list(csv.DictReader(f))
    assert sorted((r["protocol"], r["parse_rate"]) for r in table if r["protocol"] == "rag") \
        == [("rag", "1.0")] * 4
    assert {r["run"] for r in table if r["protocol"] == "cot"} == {
        f"{p.parent}:cot" for p in (tmp_path / "runs").rglob("record.json")}
    text = outputs["fits_md"].read_text()
    assert f"| {RAG} | loglinear |" in text and f"| {COT} | loglinear |" in text
    assert f"| 1,000 | {RAG} | {COT} | +20.00 |" in text
    assert f"at 1,000,000 tokens: {RAG} − {COT} = +20.00 points" in describe(document)
    assert outputs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The cached tables, with the same protocols, give the same slices and intervals.
    _, again = write_report(analyze_cfg(outputs["table"], "again", PROTOCOLS,
                                        "fit.families=[loglinear]", iterations=50))
    assert again["slices"] == document["slices"]
    assert again["comparison"] == document["comparison"]


def test_methods_by_protocols(analyze_cfg, tmp_path):
    for method, base in (("entigraph", 0.3), ("rephrase", 0.25)):
        closed_and_open(tmp_path / "runs", method, base)
    _, document = write_report(analyze_cfg(tmp_path / "runs", "out", PROTOCOLS,
                                           "slice_by=[method]", "fit.families=[loglinear]"))
    assert list(document["slices"]) == [
        "method=entigraph, protocol=rag", "method=rephrase, protocol=rag",
        "method=entigraph, protocol=cot", "method=rephrase, protocol=cot"]
    gains = {(d["a"], d["b"]) for d in document["comparison"]["differences"]
             if d["difference"] == pytest.approx(0.2)}
    assert gains == {(f"method={m}, protocol=rag", f"method={m}, protocol=cot")
                     for m in ("entigraph", "rephrase")}


def test_a_protocol_no_run_has_is_one_line_naming_it(analyze_cfg, compose, tmp_path):
    for tokens in BUDGETS:
        make_run(tmp_path / "runs", tokens, 0.4, protocols=("cot",))
    for protocol in (PROTOCOLS, "protocol=[rag]", "protocol=rag"):
        with pytest.raises(ConfigError) as err:
            write_report(analyze_cfg(tmp_path / "runs", "out", protocol))
        assert str(err.value) == (f"input={tmp_path / 'runs'}: protocol=rag found nothing (no "
                                  f"completed training run evaluated by rag); add it with "
                                  f"`entigraph eval run=<run folder> eval.protocols=[rag]`")
    for bad in ("protocol=[cot,cot]", "protocol=[]", "protocol=[cot,web]"):
        with pytest.raises(ConfigError, match=r"^config: protocol=.* is not allowed; set protocol"):
            validate(compose("analyze", [bad]))


def test_one_protocol_is_as_before(analyze_cfg, tmp_path):
    closed_and_open(tmp_path / "runs")
    _, one = write_report(analyze_cfg(tmp_path / "runs", "one", "protocol=cot"))
    outputs, listed = write_report(analyze_cfg(tmp_path / "runs", "listed", "protocol=[cot]"))
    assert list(one["slices"]) == ["mix0.0_lr0.0001"] and one["comparison"] == {}
    assert listed["slices"] == one["slices"]
    with open(outputs["table"]) as f:  # the run folders themselves, no protocol suffix
        assert all(Path(r["run"]).exists() for r in csv.DictReader(f))


def test_protocols_within_named_slicings():
    table = [{**r, "protocol": p} for p in ("cot", "rag") for r in rows(
        [(0.1, 1e-4, 1000, 0.3), (0.1, 3e-4, 1000, 0.4), (0.1, 1e-4, 2000, 0.5)])]
    protocols = ("cot", "rag")
    assert list(slices(table, "group", protocols)) == [
        "mix0.1_lr0.0001, protocol=rag", "mix0.1_lr0.0003, protocol=rag",
        "mix0.1_lr0.0001, protocol=cot", "mix0.1_lr0.0003, protocol=cot"]
    assert list(slices(table, "envelope", protocols)) == [
        "mix0.1_bestlr, protocol=rag", "mix0.1_bestlr, protocol=cot"]
    assert list(slices(table, "none", protocols)) == ["protocol=rag", "protocol=cot"]
    assert list(slices(table, ["protocol"], protocols)) == ["protocol=rag", "protocol=cot"]


def test_the_paper_reference_lines_include_open_book_beside_an_open_book_curve():
    paper, runs = {"input": "paper", "protocol": "cot"}, {"input": "runs", "protocol": "cot"}
    closed = reference_lines(None, [paper, runs])
    assert not any("open-book" in label for label in closed)
    both = reference_lines(None, [paper, runs, {**runs, "protocol": "rag"}])
    assert both == {**closed, "Llama 3 8B base + RAG (open-book)": 0.6035,
                    "EntiGraph CPT + RAG (open-book)": 0.626}
    assert reference_lines(None, [{**runs, "protocol": "rag"}]) == {}  # no paper input: none
