"""The paper's five-shot chain-of-thought QA prompt, its answer parser and sample selection rules.

The layout is the official code's (design brief §3; ZitongYang/Synthetic_Continued_Pretraining,
utils/prompt_utils.py and tasks/quality.py); the five worked examples are about famous books
(none is a QuALITY article) and were written for this project:

    ## Example 1
    ### Question
    In the context of "<Title>", written by <First Last> in <year>, <question> There is only one correct choice.
    ### Choices
    A. ...
    B. ...
    C. ...
    D. ...
    ### Thought Process and Answer
    Thought process: <reasoning>
    Answer: <letter>.

    ## Example 2
    ...
    ## Example 6
    ### Question
    ... (the question asked) ...
    ### Thought Process and Answer
    Thought process:

Lines are joined by single newlines, one blank line separates the examples, and the question's
first letter is lower-cased where it follows the comma (the official `uncapitalize_first`, applied
blindly: a question opening on a name gets it lower-cased too, as in the paper's runs). Authors
are written "First Last" (the caller converts QuALITY's "Last, First" with
`entigraph.corpus.first_last`); an unknown author or year drops out of the sentence.

Stop and parse rule. The official run stopped vLLM on the answer line itself (stop strings
"Answer: A.\\n", "Answer: AB.\\n", ... every permutation of the letters) and kept only the samples
that stopped there, reading the letter before the final ".". lm-eval 0.4.13 cannot do that: both
its transformers and vLLM wrappers cut every `until` string, and all that follows it, out of the
returned text (lm_eval.models.utils.postprocess_generated_text), so stopping on the answer line
would lose the letter. Here generation stops at the start of the next block or section
(STOP_SEQUENCES: "\\n## ", "\\n### "; in this layout neither comes before the answer line of a
well-formed answer), and `parse_answer` reads the answer from the first line that is
`Answer: X.` with X one letter A-D: the line where the official generation would have stopped;
whatever follows it was never generated there and is ignored here. Mechanically:

- exact form: "Answer: " then the letter(s) then "." closing the line. "Answer: C" (no period),
  "Answer: (C).", "Answer:  C." or "Answer: C. " never matched an official stop string (the
  official run would have generated past them): they are not answer lines, and the scan goes on
  to a later line. Two explicit leniencies: leading spaces or tabs are allowed, and the end of
  the returned text closes a line as a newline does (the newline after "." may be the first
  character of the stop string lm-eval cut off, as in "Answer: C.\\n## Example 7"; so a sample
  that ends on "Answer: C." at end-of-text or at the token cap, which the official run dropped,
  counts here). One deliberate strictness: other text before "Answer:" on the same line ("... so
  the Answer: C.") does not make an answer line, though the official stop strings matched
  anywhere in the text; the examples always give the answer a line of its own.
- several letters ("Answer: AB.", any permutation of distinct letters, as the official stop
  strings) end the scan unparsed. The official code would have taken the last letter (the
  character before the "."): a quirk deliberately not copied.
- nothing after the first answer line counts ("Answer: A.\\nAnswer: C." is A).

Standard library only: evaluation imports it, and so do the tests.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from typing import Optional, Sequence

LETTERS = "ABCD"
HEADING = "## Example {n}"
# Generation stops at the start of the next block or section (see the module docstring).
STOP_SEQUENCES = ["\n## ", "\n### "]

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

# A line that would have ended the official generation: "Answer: <letters>." on its own line.
_ANSWER_LINE = re.compile(r"[ \t]*Answer: ([A-D]{1,4})\.")


def uncapitalize_first(text: str) -> str:
    """`text` with its first character lower-cased (the official framing of a question)."""
    return text[:1].lower() + text[1:]


def question_text(title: str, author: str, year: str, question: str) -> str:
    """The paper's framing of a closed-book question; unknown author or year drop out.
    `author` as it should be printed ("First Last"); the question's first letter is lower-cased."""
    source = f'In the context of "{title}"'
    if author:
        source += f", written by {author}"
    if year:
        source += f" in {year}" if author else f", written in {year}"
    return f"{source}, {uncapitalize_first(question)} There is only one correct choice."


def choice_lines(choices: Sequence[str]) -> list[str]:
    return [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]


def block(n: int, title: str, author: str, year: str, question: str, choices: Sequence[str],
          preamble: Sequence[str] = ()) -> list[str]:
    """The lines of example `n` up to its answer; `preamble` goes between the heading and the
    question (the open-book prompt's instructions and contexts)."""
    return [HEADING.format(n=n), *preamble, "### Question",
            question_text(title, author, year, question), "### Choices", *choice_lines(choices),
            "### Thought Process and Answer"]


def answered(example: dict) -> list[str]:
    """An example's worked answer lines."""
    return [f"Thought process: {example['thought']}", f"Answer: {LETTERS[example['answer']]}."]


def render(title: str, author: str, year: str, question: str, choices: Sequence[str]) -> str:
    """The whole prompt: five worked examples, then the question's block up to its answer."""
    shots = ["\n".join(block(i + 1, ex["title"], ex["author"], ex["year"], ex["question"],
                             ex["choices"]) + answered(ex))
             for i, ex in enumerate(FEWSHOT)]
    target = "\n".join(block(len(FEWSHOT) + 1, title, author, year, question, choices)
                       + ["Thought process:"])
    return "\n\n".join(shots + [target])


def parse_answer(completion: str) -> Optional[str]:
    """The letter of the first answer line of a completion, or None (the rule and its reasons:
    module docstring). An answer line is `Answer: X.` alone on its line (leading blanks allowed;
    the end of the text ends a line); X of several distinct letters (`Answer: AB.`) ends the
    scan unparsed, where the official code would have taken the last letter. Lines such as
    `Answer: C`, `Answer: (C).` or `Answer: A or B.` are not answer lines: the scan goes on."""
    for line in completion.split("\n"):
        found = _ANSWER_LINE.fullmatch(line)
        if found and len(set(found.group(1))) == len(found.group(1)):
            letters = found.group(1)
            return letters if len(letters) == 1 else None
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
