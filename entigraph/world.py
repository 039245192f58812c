"""A miniature world for the demo (corpus.format=world): fictional people, towns, guilds and
treasures, seeded and reproducible, with a niche corpus about them and questions on it.

Each person has one short document stating four facts about them (where they were born, the
guild they work for, the treasure they own, a friend), naming them once and then by pronoun,
each fact once in the whole corpus, as a niche corpus states its facts. Each fact has one four-choice question, worded unlike the
document (the closed-book test asks for the fact, not the sentence), its three distractors
drawn from the same kind of thing in the same world. A tiny model trained from scratch can
learn the associations in minutes on a CPU, so the demo can show synthetic tokens teaching them.

A model trained from scratch on a niche corpus alone cannot answer questions at all: it has never
seen one. The paper continues pretraining a base model that can. So the demo first trains its
own tiny base model on another world of the same kind (`pretraining_texts`): every fact of other
people in several phrasings, and questions about them answered in the evaluation's own prompt
format. None of its people, towns, guilds or treasures is in the demo's world: all the base
model brings to it is the skill of answering, and the facts must come from the synthetic corpus.
"""
from __future__ import annotations

import random
from pathlib import Path

from entigraph.corpus import Document, Question
from entigraph.corpus_folder import MANIFEST, read_manifest, write_texts
from entigraph.records import write_json_atomic

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "st",
          "t", "th", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
CODAS = ["", "", "l", "n", "r", "s", "th", "nd", "rk", "sk"]
ADJECTIVES = ["Amber", "Iron", "Silver", "Crimson", "Hollow", "Gilded", "Copper", "Ivory",
              "Obsidian", "Azure", "Jade", "Ashen", "Frosted", "Sunken", "Whispering", "Brass"]
OBJECTS = ["Compass", "Lantern", "Atlas", "Chalice", "Sextant", "Music Box", "Telescope",
           "Hourglass", "Locket", "Astrolabe", "Dagger", "Harp", "Mirror", "Crown"]

# How the documents state each fact, and how the questions ask for it (other words).
STATEMENTS = {
    "born": "{p} was born in {o}.",
    "guild": "{p} works for the {o}.",
    "owns": "{p} owns the {o}.",
    "friend": "{p} is a close friend of {o}.",
}
QUESTIONS = {
    "born": "Which town is the birthplace of {p}?",
    "guild": "Which guild employs {p}?",
    "owns": "Which treasure is in the possession of {p}?",
    "friend": "Who is a companion of {p}?",
}


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                   for _ in range(syllables)).capitalize()


def _unique(rng: random.Random, count: int, make) -> list[str]:
    """`count` distinct names from `make(rng)`, in the order drawn."""
    names: dict[str, None] = {}
    while len(names) < count:
        names.setdefault(make(rng))
    return list(names)


def build_world(seed: int, people: int) -> list[Document]:
    """The world of `seed`: `people` documents of four facts and four questions each."""
    rng = random.Random(seed)
    towns = _unique(rng, max(4, people // 3), lambda r: _word(r, 2))
    guilds = [f"{name} Guild" for name in _unique(rng, max(4, people // 5), lambda r: _word(r, 2))]
    treasures = rng.sample([f"{a} {o}" for a in ADJECTIVES for o in OBJECTS], people)
    names = _unique(rng, people, lambda r: f"{_word(r, 1)} {_word(r, 2)}")
    authors = _unique(rng, people, lambda r: f"{_word(r, 2)} {_word(r, 1)}")
    pools = {"born": towns, "guild": guilds, "owns": treasures, "friend": names}
    # Every town, guild and person is used about equally often, so no option of a question
    # stands out by how often the corpus names it: only the fact tells the answer.
    births, members = _spread(rng, towns, people), _spread(rng, guilds, people)
    friends = _derangement(rng, names)
    docs = []
    for i, person in enumerate(names):
        facts = {"born": births[i], "guild": members[i], "owns": treasures[i],
                 "friend": friends[i]}
        # The name once, then a pronoun, as prose would: a reader (or a generator) has to
        # resolve it to tie the later facts to the person.
        pronoun = rng.choice(["He", "She"])
        text = " ".join(STATEMENTS[kind].format(p=person if k == 0 else pronoun, o=value)
                        for k, (kind, value) in enumerate(facts.items()))
        questions = tuple(_question(rng, f"p{i:03d}-{kind}", QUESTIONS[kind].format(p=person),
                                    value, [v for v in pools[kind] if v not in (value, person)])
                          for kind, value in facts.items())
        docs.append(Document(uid=f"p{i:03d}", title=f"The Story of {person}",
                             author=authors[i], year=rng.randint(1890, 1990), text=text,
                             questions=questions))
    return docs


def _spread(rng: random.Random, items: list[str], count: int) -> list[str]:
    """`count` picks from `items`, each picked as often as any other (give or take one)."""
    picks = (items * -(-count // len(items)))[:count]
    rng.shuffle(picks)
    return picks


def _derangement(rng: random.Random, names: list[str]) -> list[str]:
    """A friend for each name: another name, each name someone's friend exactly once."""
    order = names[:]
    rng.shuffle(order)
    following = {a: b for a, b in zip(order, order[1:] + order[:1])}  # one cycle: nobody twice
    return [following[n] for n in names]


def _question(rng: random.Random, uid: str, text: str, answer: str, others: list[str]) -> Question:
    options = [answer, *rng.sample(others, 3)]
    rng.shuffle(options)
    return Question(uid=uid, text=text, options=tuple(options), gold=options.index(answer))


def pretraining_texts(seed: int, people: int) -> list[str]:
    """The base model's corpus: each person of the world of `seed` in a text stating each fact
    every way the offline generator knows, then a text per question with its answer, in the
    evaluation's mc prompt format."""
    from entigraph.evaluation import render_prompt
    from entigraph.offline_generator import RESTATEMENTS, resolved

    texts = []
    for doc in build_world(seed, people):
        ways = [way.format(**match.groupdict()) for sentence in resolved(doc.text)
                for pattern, forms in RESTATEMENTS if (match := pattern.match(sentence))
                for way in forms]
        texts.append(" ".join(ways))
        texts += [f"{render_prompt(doc, q)} {q.options[q.gold]}" for q in doc.questions]
    return texts


def write_pretraining_corpus(folder: Path, seed: int, people: int) -> None:
    """`pretraining_texts` as a corpus folder training reads (its manifest written last, so a
    folder is complete or absent); nothing to do when it is complete already."""
    if read_manifest(folder) is not None:
        return
    texts = pretraining_texts(seed, people)
    _, corpus_sha256 = write_texts(folder, ({"id": str(i), "text": text}
                                            for i, text in enumerate(texts)))
    write_json_atomic(Path(folder) / MANIFEST, {
        "status": "complete", "kind": "demo base-model pretraining world",
        "corpus_sha256": corpus_sha256,
        "world": {"seed": seed, "people": people},
        # Characters / 4, the generator's own estimate; the trainer counts real tokens.
        "totals": {"texts": len(texts), "synthetic_tokens": sum(len(t) for t in texts) // 4}})
