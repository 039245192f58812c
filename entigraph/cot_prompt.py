"""The paper's five-shot chain-of-thought QA prompt, its answer parser and sample selection rules.

Every block has the same structure (design brief §3): an example heading, a Question section, a
Choices section with lines `A. ...` to `D. ...`, and a Thought Process and Answer section whose
reasoning ends in a line `Answer: <letter>.`. The five examples are about famous books (none is a
QuALITY article) and were written for this project. The block of the question asked ends right
after its "Thought Process and Answer" heading; generation stops at the next heading, and the
answer is read from the first `Answer:` line (where the examples end their blocks).

Standard library only: evaluation imports it, and so do the tests.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from typing import Optional, Sequence

LETTERS = "ABCD"
HEADING = "### Example {n}"
# Generation stops at the start of the next block (or section).
STOP_SEQUENCES = ["\n### ", "\n#### "]

FEWSHOT = [
    {
        "title": "Pride and Prejudice", "author": "Jane Austen", "year": "1813",
        "question": "Why does Elizabeth Bennet first refuse Mr. Darcy's proposal?",
        "choices": ["He proposes in a letter rather than in person",
                    "She is already engaged to Mr. Wickham",
                    "He insults her family and she blames him for separating Jane and Bingley",
                    "Her father forbids the marriage"],
        "thought": "Darcy proposes at Hunsford while dwelling on how far beneath him her family "
                   "is. Elizabeth already believes he ruined Jane's hopes with Bingley and "
                   "wronged Wickham, so she refuses him for his pride and his interference. He "
                   "writes his letter only after the refusal, and she is engaged to no one.",
        "answer": 2,
    },
    {
        "title": "Moby-Dick", "author": "Herman Melville", "year": "1851",
        "question": "Who is the only member of the Pequod's crew to survive the final chase?",
        "choices": ["Ishmael", "Starbuck", "Queequeg", "Captain Ahab"],
        "thought": "The whale sinks the Pequod and drags Ahab down with the harpoon line. "
                   "Starbuck and Queequeg go down with the ship. The narrator stays afloat on "
                   "Queequeg's coffin until the Rachel picks him up, so the survivor is the one "
                   "telling the story.",
        "answer": 0,
    },
    {
        "title": "Frankenstein", "author": "Mary Shelley", "year": "1818",
        "question": "What does the creature ask Victor Frankenstein to make for him?",
        "choices": ["A home in Geneva", "A female companion", "A new body",
                    "A letter of introduction to the De Lacey family"],
        "thought": "On the glacier near Chamonix the creature tells Victor how lonely he is and "
                   "demands a companion of his own kind, promising to leave Europe with her. "
                   "Victor starts the work in the Orkneys and then destroys it.",
        "answer": 1,
    },
    {
        "title": "The Great Gatsby", "author": "F. Scott Fitzgerald", "year": "1925",
        "question": "What does the green light at the end of Daisy's dock stand for in Gatsby's "
                    "eyes?",
        "choices": ["The money he made from bootlegging", "His time in the army",
                    "His friendship with Nick", "His hope of winning Daisy back"],
        "thought": "Gatsby bought his house across the bay from Daisy's and reaches out toward "
                   "the light on her dock. Nick reads it as the dream of a future with her that "
                   "Gatsby keeps chasing; it is not about his money, the army or Nick.",
        "answer": 3,
    },
    {
        "title": "Nineteen Eighty-Four", "author": "George Orwell", "year": "1949",
        "question": "Where does Winston Smith work?",
        "choices": ["The Ministry of Love", "The Ministry of Plenty", "The Ministry of Truth",
                    "The Ministry of Peace"],
        "thought": "Winston's job is to rewrite old newspaper articles so the record always "
                   "agrees with the Party. That rewriting of history is done at the Ministry of "
                   "Truth; the Ministry of Love is where he is later taken and broken.",
        "answer": 2,
    },
]

_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.*?)\s*$")
_ONE_LETTER = re.compile(r"^\(?([A-D])\)?\.?$")


def question_text(title: str, author: str, year: str, question: str) -> str:
    """The paper's framing of a closed-book question; unknown author or year drop out."""
    source = f'In the context of "{title}"'
    if author:
        source += f", written by {author}"
    if year:
        source += f" in {year}" if author else f", written in {year}"
    return f"{source}, {question} There is only one correct choice."


def _block(n: int, title: str, author: str, year: str, question: str,
           choices: Sequence[str]) -> str:
    lines = [HEADING.format(n=n), "", "#### Question", question_text(title, author, year, question),
             "", "#### Choices", *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)), "",
             "#### Thought Process and Answer", ""]
    return "\n".join(lines)


def render(title: str, author: str, year: str, question: str, choices: Sequence[str]) -> str:
    """The whole prompt: five worked examples, then the question's block up to its answer."""
    shots = [_block(i + 1, ex["title"], ex["author"], ex["year"], ex["question"], ex["choices"])
             + f"Thought process: {ex['thought']}\nAnswer: {LETTERS[ex['answer']]}.\n\n"
             for i, ex in enumerate(FEWSHOT)]
    target = _block(len(FEWSHOT) + 1, title, author, year, question, choices)
    return "".join(shots) + target + "Thought process:"


def parse_answer(completion: str) -> Optional[str]:
    """The letter of the first `Answer:` line, or None when it names no single letter A-D
    (no answer line, `Answer: A or B.`, `Answer: E.`, free text, ...)."""
    for line in completion.splitlines():
        found = _ANSWER_LINE.match(line)
        if found:
            letter = _ONE_LETTER.match(found.group(1))
            return letter.group(1) if letter else None
    return None


def select(answers: Sequence[Optional[str]], rule: str, rng: random.Random) -> Optional[str]:
    """One answer from a question's parsed samples (None: unparsed) by the configured rule."""
    valid = [a for a in answers if a is not None]
    if not valid:
        return None
    if rule == "first_valid":
        return valid[0]
    if rule == "random_valid":
        return rng.choice(valid)
    if rule == "majority":
        counts = Counter(valid)
        top = max(counts.values())
        return next(a for a in valid if counts[a] == top)  # ties: the earliest sample
    raise ValueError(f"unknown selection rule {rule!r}")
