"""The five-shot open-book prompt of the `rag` protocol, and the query a question is retrieved by.

The layout is the closed-book prompt's (entigraph/cot_prompt.py: the same five worked examples,
question framing, stop sequences and `Answer: X.` rule), with the official code's open-book
additions (ZitongYang/Synthetic_Continued_Pretraining, inference/retrieval.py) between each
example's heading and its question: an instruction line naming how many contexts follow, then
the contexts, each under its own numbered marker:

    ## Example 1
    ### Instructions
    Use the 2 contexts below to answer the question.
    [Context 1]
    Title: ...
    Author: ...

    <passage>

    [Context 2]
    ...
    ### Question
    ...

The examples' contexts (one to three, so the model sees the count vary) are short passages
written for this project about the books the examples ask about. The question's own contexts
are the retrieved chunks (entigraph/retrieval), already in the configured order (best last or
best first); the retrieval query is the question framed as in the prompt, with its choices, as
the official code embedded it.

Standard library only.
"""
from __future__ import annotations

from typing import Sequence

from entigraph import cot_prompt

# Contexts of the worked examples, in the order of cot_prompt.FEWSHOT.
EXAMPLE_CONTEXTS = [
    [("Reading Hunsford Again", "Maria Okafor",
      "Darcy's first proposal fails because of how he makes it. He tells Elizabeth at length "
      "that her family is beneath him, and she answers that she already holds two things "
      "against him: that he parted Jane from Bingley, and that he ruined Wickham.")],
    [("The Last Chase", "Peter Lindqvist",
      "On the third day the white whale rams the Pequod, which sinks with all hands. Ahab is "
      "caught by his own line and pulled under."),
     ("Who Tells Moby-Dick", "Ana Ferreira",
      "Ishmael survives the wreck by clinging to the coffin Queequeg had made, and a passing "
      "ship, the Rachel, finds him a day later.")],
    [("Victor's Promise", "Helen Marsh",
      "The creature meets Victor on the ice near Chamonix and tells him his story. He asks for "
      "one thing: a companion as strange as himself, with whom he would leave Europe for good."),
     ("The Orkney Laboratory", "Tomas Reyes",
      "Victor agrees and begins a second creature on a remote island, but he tears the work "
      "apart before it is finished.")],
    [("Across the Bay", "Lena Sato",
      "Gatsby's mansion looks over the water at the green light on the Buchanans' dock. Nick "
      "sees Gatsby stretch his arms out toward it on the night they first meet."),
     ("The Green Light", "David Kimani",
      "For Gatsby the light stands for Daisy and the life he believes he can still win back "
      "with her.")],
    [("Winston's Ministry", "Clara Novak",
      "Winston Smith works in the Records Department of the Ministry of Truth, where he "
      "corrects old newspapers so that they agree with what the Party says today."),
     ("The Four Ministries", "Samuel Adeyemi",
      "Oceania is governed by the Ministries of Truth, Peace, Love and Plenty; the Ministry of "
      "Love is the one that holds and questions prisoners."),
     ("Room 101", "Ines Varga",
      "After his arrest Winston is held in the Ministry of Love, where O'Brien breaks him.")],
]

INSTRUCTION = "Use the {k} context{s} below to answer the question."


def context_text(title: str, author: str, passage: str) -> str:
    """An example's context in the layout of a retrieved chunk (entigraph/retrieval)."""
    return f"Title: {title}\nAuthor: {author}\n\n{passage}"


def _preamble(contexts: Sequence[str]) -> list[str]:
    k = len(contexts)
    lines = ["### Instructions", INSTRUCTION.format(k=k, s="" if k == 1 else "s")]
    for i, text in enumerate(contexts):
        lines += [f"[Context {i + 1}]", text.strip(), ""]
    return lines


def render(title: str, author: str, year: str, question: str, choices: Sequence[str],
           contexts: Sequence[str]) -> str:
    """The whole prompt: five worked open-book examples, then the question's block (with its
    `contexts`, in prompt order) up to its answer."""
    shots = []
    for i, (example, passages) in enumerate(zip(cot_prompt.FEWSHOT, EXAMPLE_CONTEXTS)):
        preamble = _preamble([context_text(*p) for p in passages])
        shots.append("\n".join(cot_prompt.block(i + 1, example["title"], example["author"],
                                                example["year"], example["question"],
                                                example["choices"], preamble)
                               + cot_prompt.answered(example)))
    target = "\n".join(cot_prompt.block(len(shots) + 1, title, author, year, question, choices,
                                        _preamble(contexts)) + ["Thought process:"])
    return "\n\n".join(shots + [target])


def query(title: str, author: str, year: str, question: str, choices: Sequence[str]) -> str:
    """What a question is retrieved by: its framing (which names the article) and its choices."""
    return "\n".join([cot_prompt.question_text(title, author, year, question),
                      *cot_prompt.choice_lines(choices)])
