import random

from omegaconf import OmegaConf

from entigraph.corpus import Document
from entigraph.offline_generator import analyze_relations, extract_entities
from entigraph.synthesis import entity_tuples, read_corpus, read_manifest, synthesize

TEXT = ("The lighthouse of Port Averly stood on the northern cliffs. Mara Quell kept its lamp "
        "for thirty years. In 1887 the steamer Calloway ran aground near the Sable Reef, and "
        "Mara Quell rowed out with Tobin Quell to save the crew. When the Calloway was salvaged, "
        "its bell was hung in the chapel of Port Averly. Tobin Quell kept the medal.")
DOC = Document("d1", "The Keeper", "Ann Writer", 1920, TEXT)


def test_entity_tuples_pairs_in_order_then_capped_seeded_triples():
    ents = ["a", "b", "c", "d", "e"]
    tuples = entity_tuples(ents, 4, random.Random(1))
    assert tuples[:10] == [("a", "b"), ("a", "c"), ("a", "d"), ("a", "e"), ("b", "c"),
                           ("b", "d"), ("b", "e"), ("c", "d"), ("c", "e"), ("d", "e")]
    triples = tuples[10:]
    assert len(triples) == 4 and all(len(t) == 3 for t in triples)
    assert triples == entity_tuples(ents, 4, random.Random(1))[10:]
    assert entity_tuples(ents, 100, random.Random(1))[10:] != entity_tuples(ents, 100, random.Random(2))[10:]


def test_offline_extraction_finds_recurring_names_in_order():
    out = extract_entities(DOC, 4)
    assert set(out) == {"summary", "entities"}
    assert out["entities"] == ["Port Averly", "Mara Quell", "Calloway", "Tobin Quell"]
    assert "The Keeper" in out["summary"]


def test_offline_relation_text_has_the_prompt_sections():
    text = analyze_relations(DOC, ("Mara Quell", "Tobin Quell"))
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == ["### Discussion of The Keeper in relation to Mara Quell",
                        "### Discussion of The Keeper in relation to Tobin Quell",
                        "### Discussion of Interaction between Mara Quell and Tobin Quell "
                        "in context of The Keeper"]
    assert "rowed out with Tobin Quell" in text


def test_synthesize_writes_corpus_and_manifest_once(tmp_path):
    cfg = OmegaConf.create({"method": "entigraph", "max_entities": 4, "max_triples": 2, "seed": 0})
    gen = OmegaConf.create({"backend": "offline", "model": "m", "temperature": 1.0, "max_tokens": None})
    manifest = synthesize([DOC], cfg, gen, tmp_path)
    items = read_corpus(tmp_path)
    assert [i["kind"] for i in items] == ["summary"] + ["pair"] * 6 + ["triple"] * 2
    assert len({i["id"] for i in items}) == len(items)
    assert manifest["totals"]["texts"] == 9 and read_manifest(tmp_path) == manifest
    before = (tmp_path / "corpus.jsonl").stat().st_mtime_ns
    synthesize([DOC], cfg, gen, tmp_path)  # complete: not regenerated
    assert (tmp_path / "corpus.jsonl").stat().st_mtime_ns == before
