"""The demo's miniature world (corpus=world) and the offline generator's restating: facts stated
once, questions in other words, texts written from the documents alone."""
import re

from entigraph.offline_generator import analyze_relations, extract_entities, rephrase, resolved, restate
from entigraph.prompts import PROMPT_SETS
from entigraph.world import build_world

PROMPTS = PROMPT_SETS["entigraph-v2"]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_the_world_is_seeded_and_sized_as_asked():
    docs = build_world(0, 30)
    assert docs == build_world(0, 30) and docs != build_world(1, 30)
    assert len(docs) == 30 and sum(len(d.questions) for d in docs) == 120
    for doc in docs:
        for q in doc.questions:
            assert len(set(q.options)) == 4 and 0 <= q.gold < 4


def test_each_fact_is_stated_once_and_asked_in_other_words():
    docs = build_world(0, 30)
    corpus = " ".join(d.text for d in docs)
    for doc in docs:
        person = doc.title.removeprefix("The Story of ")
        # Named once in its own story (then by pronoun), and as a friend in others'.
        assert doc.text.count(person) == 1
        assert corpus.count(person) == 1 + corpus.count(f"friend of {person}.")
        for q in doc.questions:
            answer = q.options[q.gold]
            assert answer in doc.text  # the fact is in the question's own document
            # Other words: what the question asks with, beyond the names, is not in the text.
            names = words(person + " " + " ".join(q.options))
            asked = words(q.text) - names - {"the", "of", "is", "a", "in", "which", "who"}
            assert asked and not asked & words(doc.text), (q.text, doc.text)
            # Distractors are the same kind of thing from the same world, never the answer.
            # Each option named about as often as the others: no surface cue to the answer.
            counts = [corpus.count(option) for option in q.options]
            assert min(counts) >= 1 and max(counts) - min(counts) <= 1, (q.options, counts)


def test_the_generator_resolves_pronouns_and_restates_known_shapes():
    doc = build_world(0, 30)[0]
    first, *rest = resolved(doc.text)
    person = first.split(" was born")[0]
    assert all(s.startswith(person) for s in rest)  # "She owns ..." -> "<person> owns ..."
    sentence = f"{person} owns the Frosted Lantern."
    ways = {restate(sentence, str(k)) for k in range(40)}
    assert len(ways) == 4 and all("Frosted Lantern" in w and person in w for w in ways)
    assert restate("Nothing of a known shape here.", "k") == "Nothing of a known shape here."


def test_relation_texts_come_from_the_document_alone_and_spread_each_fact():
    docs = build_world(0, 30)
    doc = docs[0]
    entities = extract_entities(doc, 12, PROMPTS.header(doc))["entities"]
    assert len(entities) == 5  # the person, a town, a guild, a treasure, a friend
    texts = [analyze_relations(doc, (a, b), PROMPTS) for i, a in enumerate(entities)
             for b in entities[i + 1:]]
    question_words = set().union(*(words(q.text) for q in doc.questions)) - words(doc.text)
    person, treasure = entities[0], entities[3]
    for text in texts:
        assert not words(text) & question_words  # never from the questions
    # The person-treasure fact is restated in every text about either of them, in several ways.
    about = [t for t in texts if person in t or treasure in t]
    holding = [t for t in about if treasure in t]
    assert len(holding) >= 4 and len({t.split(treasure)[0][-30:] for t in holding}) > 1
    assert rephrase(doc, "toddler", 0) != rephrase(doc, "toddler", 1)
