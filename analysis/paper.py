"""The paper's published numbers, shipped with the package (entigraph/data/paper/, README there):
the points behind its Figure 2 as a source (`input=paper`) and its reference accuracies as
named sets of lines (`references=paper`)."""
from __future__ import annotations

import csv
import io
from importlib.resources import files

from entigraph.analysis.collect import COLUMNS, Results
from entigraph.config import REFERENCE_SETS

PAPER = "paper"  # the source's name in `input`, and its rows' `input` column
POINTS, REFERENCES = "figure2_points.csv", "reference_accuracies.csv"
# The paper's methods as its figure names them (each a group, so a slice of its own), and as
# synthesis.method names them (slice_by=[method] puts them beside a user's runs).
GROUPS = {"entigraph_cpt": "EntiGraph CPT", "rephrase_cpt": "Rephrase CPT", "qa_sft": "QA SFT"}
METHODS = {"entigraph_cpt": "entigraph", "rephrase_cpt": "rephrase", "qa_sft": "qa_sft"}
# What every point measured (the columns a run folder fills from its config). No per-question
# counts are published: the fits are least squares.
MEASURED = {"corpus": "quality", "model": "meta-llama/Meta-Llama-3-8B", "protocol": "cot",
            "eval_split": "test"}
OPEN_BOOK = "open-book"
OPEN_BOOK_PROTOCOLS = ("rag",)  # retrieved chunks of the corpus in the prompt


def _read(name: str) -> list[dict]:
    text = (files("entigraph") / "data" / "paper" / name).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def paper_results() -> Results:
    """The 71 published points: EntiGraph CPT (36), Rephrase CPT (20), QA SFT (15)."""
    rows = []
    for line in _read(POINTS):
        tokens = int(line["tokens"])
        rows.append({**dict.fromkeys(COLUMNS), **MEASURED, "group": GROUPS[line["method"]],
                     "method": METHODS[line["method"]],
                     "run": f"{PAPER}:{line['method']}:{tokens}", "synthetic_tokens": tokens,
                     "accuracy": float(line["accuracy"]),
                     "source": "Yang et al. 2024 (arXiv 2409.07431), Figure 2", "input": PAPER})
    return Results(rows)


def reference_set(name: str) -> dict[str, float]:
    """label -> accuracy. paper: the closed-book lines its Figure 2 compares against (Llama 3
    8B base, Raw CPT, GPT-3.5, GPT-4); paper_with_rag: those and the open-book +RAG results,
    labelled as open-book (the article is in the context: comparable to open-book curves,
    protocol=rag, only)."""
    assert name in REFERENCE_SETS, name  # validated in entigraph/config.py
    lines = {}
    for line in _read(REFERENCES):
        open_book = line["note"].startswith(OPEN_BOOK)
        if open_book and name != "paper_with_rag":
            continue
        lines[line["label"] + (f" ({OPEN_BOOK})" if open_book else "")] = float(line["accuracy"])
    return lines


def reference_lines(references, rows: list[dict]) -> dict[str, float]:
    """`references` resolved: a set's name, a dict of label -> accuracy, or null (the paper's
    set when any row is the paper's, with its open-book lines when any row is open-book; else
    none)."""
    if references is None:
        if not any(r.get("input") == PAPER for r in rows):
            return {}
        open_book = any(r.get("protocol") in OPEN_BOOK_PROTOCOLS for r in rows)
        return reference_set("paper_with_rag" if open_book else PAPER)
    if isinstance(references, str):
        return reference_set(references)
    return {str(label): float(value) for label, value in references.items()}
