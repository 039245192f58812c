import json
import random
from pathlib import Path

import pytest

from entigraph.corpus import Document
from entigraph.errors import ConfigError, CorpusError
from entigraph.generation import estimate, generate_corpus
from entigraph.offline_generator import analyze_relations, extract_entities
from entigraph.prompts import ENTIGRAPH_V1, ENTIGRAPH_V2, PROMPT_SETS
from entigraph.corpus_folder import corpus_digest, read_corpus
from entigraph.synthesis import (entity_tuples, nth_combination, parse_extraction, relation_calls,
                                 round_robin)

TEXT = ("The lighthouse of Port Averly stood on the northern cliffs. Mara Quell kept its lamp "
        "for thirty years. In 1887 the steamer Calloway ran aground near the Sable Reef, and "
        "Mara Quell rowed out with Tobin Quell to save the crew. When the Calloway was salvaged, "
        "its bell was hung in the chapel of Port Averly. Tobin Quell kept the medal.")
DOC = Document("d1", "The Keeper", "Ann Writer", 1920, TEXT)
DOC2 = Document("d2", "The Orchard", "Bo Reed", 1950,
                "Ella Moss planted the orchard at Wren Hill. Jonah Moss sold its apples in Kettering. "
                "Ella Moss and Jonah Moss argued about the Wren Hill well. The Kettering market "
                "closed in winter, so Jonah Moss stored apples in the Wren Hill barn.")


def test_entity_tuples_pairs_in_order_then_capped_seeded_triples():
    ents = ["a", "b", "c", "d", "e"]
    tuples = list(entity_tuples(ents, 4, random.Random(1)))
    assert tuples[:10] == [("a", "b"), ("a", "c"), ("a", "d"), ("a", "e"), ("b", "c"),
                           ("b", "d"), ("b", "e"), ("c", "d"), ("c", "e"), ("d", "e")]
    triples = tuples[10:]
    assert len(triples) == 4 and all(len(t) == 3 for t in triples)
    assert triples == list(entity_tuples(ents, 4, random.Random(1)))[10:]
    assert list(entity_tuples(ents, 100, random.Random(1)))[10:] != \
        list(entity_tuples(ents, 100, random.Random(2)))[10:]


def test_triples_are_a_shuffle_of_all_of_them_without_listing_them():
    import itertools

    ents = [f"e{i}" for i in range(30)]
    listed = list(itertools.combinations(ents, 3))
    random.Random(5).shuffle(listed)  # the rule: a seeded shuffle of every triple, then a cap
    assert list(entity_tuples(ents, 500, random.Random(5)))[435:] == listed[:500]
    assert [nth_combination(ents, 3, i) for i in (0, 1, 4059)] == [
        ("e0", "e1", "e2"), ("e0", "e1", "e3"), ("e27", "e28", "e29")]


def test_no_triple_cap_takes_every_triple_and_a_cap_is_a_prefix_of_it():
    ents = list("abcdefg")
    every = list(entity_tuples(ents, None, random.Random(3)))
    assert len(every) == 21 + 35 == relation_calls(7, None)
    assert sorted(every[21:]) == sorted(__import__("itertools").combinations(ents, 3))
    assert list(entity_tuples(ents, 10, random.Random(3))) == every[:21 + 10]  # raising a cap adds
    assert relation_calls(7, 10) == 31 and relation_calls(7, 100) == 56 and relation_calls(2, None) == 1


def test_v2_prompts_follow_the_official_semantics():
    doc = Document("d", "The Salt Road", "Avery, Nell", 1958, "Tomas Brek led the caravan.")
    system, user = (m["content"] for m in ENTIGRAPH_V2.relation_messages(doc, ("A", "B", "C")))
    assert user.startswith('Article: "The Salt Road", Nell Avery, 1958.\n\nTomas Brek')
    assert "Avery, Nell" not in user
    assert user.endswith("### Discussion of The Salt Road in relation to C\n"
                         "### Discussion of Interaction between A, B and C in context of "
                         "The Salt Road")
    assert "Rephrase the content of the article three times" in system
    pair_system = ENTIGRAPH_V2.relation_messages(doc, ("A", "B"))[0]["content"]
    assert "twice" in pair_system and pair_system != system
    assert set(ENTIGRAPH_V2.rephrase_styles) == {"toddler", "wikipedia", "scholar"}
    assert all("title and the year" in s for s in ENTIGRAPH_V2.rephrase_styles.values())
    assert "exhaustive" in ENTIGRAPH_V2.extraction_system


def test_v1_prompts_are_unchanged():
    """A prompt set's words never change under its name (stored calls are keyed by it): these
    are the bytes entigraph-v1 sent before entigraph-v2 existed."""
    import hashlib

    doc = Document("d1", "The Keeper", "Writer, Ann", 1920, "Mara Quell kept the lamp. {braces} stay.")
    ps = PROMPT_SETS["entigraph-v1"]
    sent = json.dumps([ps.extraction_messages(doc), ps.relation_messages(doc, ("Mara Quell", "Tobin Quell")),
                       ps.relation_messages(doc, ("A", "B", "C")),
                       [ps.rephrase_messages(doc, s) for s in ps.rephrase_styles]])
    assert hashlib.sha256(sent.encode()).hexdigest() == \
        "65451b1b21e21a039cce47106cb761179566f7bbf9b4e7b19caa4b5cbbf179dc"


def test_offline_extraction_finds_recurring_names_in_order():
    out = extract_entities(DOC, 4, DOC.citation)
    assert set(out) == {"summary", "entities"}
    assert out["entities"] == ["Port Averly", "Mara Quell", "Calloway", "Tobin Quell"]
    assert "The Keeper" in out["summary"]


def test_offline_relation_text_has_the_prompt_sections():
    text = analyze_relations(DOC, ("Mara Quell", "Tobin Quell"), ENTIGRAPH_V2)
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == ["### Discussion of The Keeper in relation to Mara Quell",
                        "### Discussion of The Keeper in relation to Tobin Quell",
                        "### Discussion of Interaction between Mara Quell and Tobin Quell "
                        "in context of The Keeper"]
    assert "rowed out with Tobin Quell" in text
    triple = {"v1": analyze_relations(DOC, ("Port Averly", "Mara Quell", "Calloway"), ENTIGRAPH_V1),
              "v2": analyze_relations(DOC, ("Port Averly", "Mara Quell", "Calloway"), ENTIGRAPH_V2)}
    assert "Interaction between Port Averly and Mara Quell and Calloway in" in triple["v1"]
    assert "Interaction between Port Averly, Mara Quell and Calloway in" in triple["v2"]


@pytest.mark.parametrize("text,reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"summary": "", "entities": ["A"]}', "no summary"),
    ('{"summary": "s", "entities": "A, B"}', "not a list of strings"),
    ('{"summary": "s", "entities": [" ", ""]}', "no entities extracted"),
])
def test_parse_extraction_rejects_bad_output_with_a_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_extraction(text, 5)


def test_parse_extraction_dedupes_strips_and_caps_in_order():
    text = json.dumps({"summary": " s ", "entities": ["B", " A", "B", "C", "D"]})
    assert parse_extraction(text, 3) == ("s", ["B", "A", "C"])


def test_round_robin_interleaves_documents():
    assert list(round_robin([1, 2, 3], ["a"], [10, 20])) == [1, "a", 10, 2, 20, 3]


def corpus_config(compose, tmp_path, *overrides):
    return compose("generate", [f"paths.root={tmp_path}", "synthesis.max_entities=4",
                                "synthesis.max_triples=2", *overrides])


def test_generate_writes_corpus_manifest_and_call_store(compose, tmp_path):
    cfg = corpus_config(compose, tmp_path)
    manifest = generate_corpus([DOC, DOC2], cfg)
    out = Path(cfg.synthesis.output_dir)
    items = read_corpus(out)
    kinds = [i["kind"] for i in items if i["doc_uid"] == "d1"]
    assert kinds == ["summary"] + ["pair"] * 6 + ["triple"] * 2
    assert len({i["id"] for i in items}) == len(items)
    assert manifest["status"] == "complete" and manifest["prompt_set"] == "entigraph-v2"
    assert manifest["totals"]["calls"] == 2 * (1 + 8) and manifest["totals"]["texts"] == len(items)
    assert manifest["documents"]["d1"]["synthetic_tokens"] > 0
    assert manifest["totals"]["synthetic_tokens"] == sum(
        d["synthetic_tokens"] for d in manifest["documents"].values())
    calls_before = (out / "calls.jsonl").read_text()
    assert generate_corpus([DOC, DOC2], cfg) == manifest  # a rerun makes no call
    assert (out / "calls.jsonl").read_text() == calls_before


def test_a_rerun_with_nothing_new_leaves_the_corpus_as_it_was(compose, tmp_path, capsys):
    """At the paper's size rewriting the corpus and counting its tokens takes minutes: a rerun
    with nothing new leaves both files alone. A rewrite over the same texts (another price)
    keeps the corpus's identity; other texts change it."""
    cfg = corpus_config(compose, tmp_path)
    out = Path(cfg.synthesis.output_dir)
    manifest = generate_corpus([DOC, DOC2], cfg)
    written = [(out / name).stat() for name in ("corpus.jsonl", "manifest.json")]
    identity = corpus_digest(out)
    assert generate_corpus([DOC, DOC2], cfg) == manifest
    assert "nothing new since its manifest" in capsys.readouterr().out
    assert [(out / name).stat() for name in ("corpus.jsonl", "manifest.json")] == written

    repriced = generate_corpus([DOC, DOC2], corpus_config(compose, tmp_path,
                                                          "generator.price_input_per_mtok=3"))
    assert repriced["prices_per_mtok"]["input"] == 3 and repriced["inputs_sha256"] != \
        manifest["inputs_sha256"]
    assert (out / "corpus.jsonl").stat().st_ino != written[0].st_ino  # written again
    assert corpus_digest(out) == identity == repriced["corpus_sha256"]
    generate_corpus([DOC, DOC2], corpus_config(compose, tmp_path, "synthesis.max_triples=3"))
    assert corpus_digest(out) != identity


def test_a_prompt_set_whose_wording_changed_is_refused_on_its_stored_calls(compose, tmp_path,
                                                                         monkeypatch):
    """Calls are keyed by the prompt set's name: the same name with other words (or another
    extraction schema) would be served the replies to the old prompts."""
    import dataclasses

    cfg = corpus_config(compose, tmp_path)
    generate_corpus([DOC], cfg)
    out = Path(cfg.synthesis.output_dir)
    assert json.loads((out / "prompts.json").read_text()) == {
        "entigraph-v2": ENTIGRAPH_V2.fingerprint()}
    calls = (out / "calls.jsonl").read_bytes()
    reworded = dataclasses.replace(ENTIGRAPH_V2, extraction_system="List the entities.")
    monkeypatch.setitem(PROMPT_SETS, "entigraph-v2", reworded)
    with pytest.raises(ConfigError, match="synthesis.prompt_set=entigraph-v2 has changed wording"):
        generate_corpus([DOC], cfg)
    assert (out / "calls.jsonl").read_bytes() == calls
    monkeypatch.setitem(PROMPT_SETS, "entigraph-v2", ENTIGRAPH_V2)
    monkeypatch.setattr("entigraph.prompts.EXTRACTION_SCHEMA", {"type": "object"})
    assert ENTIGRAPH_V2.fingerprint() != json.loads((out / "prompts.json").read_text())[
        "entigraph-v2"]


def test_budget_stops_generation_and_covers_every_document(compose, tmp_path):
    cfg = corpus_config(compose, tmp_path, "synthesis.budget_tokens=450", "generator.max_in_flight=1")
    manifest = generate_corpus([DOC, DOC2], cfg)
    assert manifest["status"] == "budget_reached"
    assert manifest["totals"]["calls"] < 18
    assert all(d["texts"] >= 2 for d in manifest["documents"].values())  # summary and a relation
    raised = corpus_config(compose, tmp_path, "generator.max_in_flight=1")
    assert generate_corpus([DOC, DOC2], raised)["status"] == "complete"  # resumes, no repeats
    keys = [json.loads(line)["key"] for line in
            (Path(cfg.synthesis.output_dir) / "calls.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 18


def test_rephrase_and_raw_corpora(compose, tmp_path):
    rephrase = generate_corpus([DOC], corpus_config(compose, tmp_path, "synthesis.method=rephrase",
                                                    "synthesis.rephrase_rounds=2"))
    assert rephrase["totals"]["texts"] == 6  # three styles, two rounds
    raw_cfg = corpus_config(compose, tmp_path, "synthesis.method=raw")
    raw = generate_corpus([DOC], raw_cfg)
    assert raw["totals"]["calls"] == 0
    assert [i["text"] for i in read_corpus(raw_cfg.synthesis.output_dir)] == [
        f'"The Keeper", Ann Writer, 1920.\n{TEXT}']  # the header line, as the official code


def test_document_longer_than_the_context_is_refused_before_any_call(compose, tmp_path):
    cfg = corpus_config(compose, tmp_path, "generator.context_tokens=10")
    with pytest.raises(CorpusError, match="generator.context_tokens=10"):
        generate_corpus([DOC], cfg)
    assert not Path(cfg.synthesis.output_dir).exists()


def test_dry_run_estimate_prices_the_plan(compose, tmp_path):
    cfg = corpus_config(compose, tmp_path, "generator.price_input_per_mtok=10",
                        "generator.price_output_per_mtok=30")
    plan = estimate([DOC, DOC2], cfg)
    assert plan["by_kind"]["extraction"]["calls"] == 2
    assert plan["by_kind"]["relation"]["calls"] == 2 * (6 + 2)
    total = plan["total"]
    assert total["dollars"] == pytest.approx(
        (total["input_tokens"] * 10 + total["output_tokens"] * 30) / 1e6)


def test_dry_run_counts_expected_entities_then_the_stored_ones(compose, tmp_path):
    cfg = corpus_config(compose, tmp_path, "synthesis.max_entities=null",
                        "synthesis.max_triples=null", "synthesis.expected_entities=3")
    plan = estimate([DOC, DOC2], cfg)
    assert plan["by_kind"]["relation"]["calls"] == 2 * (3 + 1)  # C(3,2) + C(3,3) each
    assert plan["documents_by_entity_count"] == {"stored": 0, "expected": 2}
    generate_corpus([DOC], cfg)  # the offline generator extracts every recurring name of DOC
    n = len({e for item in read_corpus(cfg.synthesis.output_dir) for e in item["entities"]})
    assert n > 3
    plan = estimate([DOC, DOC2], cfg)
    assert plan["documents_by_entity_count"] == {"stored": 1, "expected": 1}
    assert plan["by_kind"]["relation"]["calls"] == relation_calls(n, None) + 4
