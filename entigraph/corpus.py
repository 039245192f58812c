"""Source documents and their multiple-choice questions, and the loaders that read them."""
from __future__ import annotations

# Standard library only: the CLI imports this module before any heavy stack.
import json
import math
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from entigraph.errors import CorpusError


@dataclass(frozen=True)
class Question:
    uid: str
    text: str
    options: tuple[str, ...]  # exactly four
    gold: int  # 0-based index into options
    hard: bool = False


@dataclass(frozen=True)
class Document:
    uid: str
    title: str
    author: str
    year: Optional[int]
    text: str
    questions: tuple[Question, ...] = field(default=())

    @property
    def header(self) -> str:
        """The line that introduces the document to a generator, so it can cite the title
        (prompt set entigraph-v1: the author as stored)."""
        year = f" ({self.year})" if self.year else ""
        return f'"{self.title}" by {self.author}{year}'

    @property
    def citation(self) -> str:
        """The header line the official code puts above an article: "<title>", <First Last>,
        <year>. (an unknown author or year drops out)."""
        parts = [f'"{self.title}"'] + [str(p) for p in (first_last(self.author), self.year)
                                       if p and str(p).lower() != "unknown"]
        return ", ".join(parts) + "."


def first_last(author: str) -> str:
    """An author written "First Last", as the official code writes them: QuALITY stores "Last,
    First" (exactly one comma); any other form is kept as it is."""
    parts = author.split(",")
    return f"{parts[1].strip()} {parts[0].strip()}" if len(parts) == 2 else author.strip()


# --- loaders ------------------------------------------------------------------------------
N_OPTIONS = 4
FORMATS = ("builtin", "world", "quality", "jsonl", "textdir")


class _LineError(Exception):
    """What is wrong with one record; the line loop adds "<file>:<line>: " in front."""


def _read_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, JSON object) for every non-blank line of `path`.

    Reads bytes and splits on b"\\n" only: article texts may hold U+2028 and similar
    characters that text-mode line iteration would treat as line breaks."""
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _parse_lines(path: Path, parse: Callable[[int, dict], Any]) -> list:
    """Apply `parse(lineno, obj)` to each line, turning its _LineError into a located CorpusError."""
    out = []
    for lineno, obj in _read_json_lines(path):
        try:
            out.append(parse(lineno, obj))
        except _LineError as e:
            raise CorpusError(f"{path}:{lineno}: {e}") from None
    return out


def _require(obj: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise _LineError(f"{what} has no '{key}'")
    value = obj[key]
    # bool is an int subclass; a boolean is never a valid string, list or index here.
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _LineError(f"{what}: '{key}' must be {names}, not {type(value).__name__}")
    return value


def _text(obj: dict, key: str, what: str) -> str:
    value = _require(obj, key, str, what).strip()
    if not value:
        raise _LineError(f"{what}: '{key}' is empty")
    return value


def _options(obj: dict, key: str, qid: str) -> tuple[str, ...]:
    options = _require(obj, key, list, f"question '{qid}'")
    if len(options) != N_OPTIONS:
        raise _LineError(f"question '{qid}' has {len(options)} options; "
                         f"each question needs exactly {N_OPTIONS}")
    if not all(isinstance(o, str) for o in options):
        raise _LineError(f"question '{qid}': every option must be a string")
    return tuple(options)


def _gold(value: Any, qid: str, first: int) -> int:
    """A gold index written `first`-based (QuALITY 1, ours 0), returned 0-based."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _LineError(f"question '{qid}': gold answer must be an integer, not {value!r}")
    if not first <= value < first + N_OPTIONS:
        raise _LineError(f"question '{qid}': gold answer {value} is out of range "
                         f"{first}..{first + N_OPTIONS - 1}")
    return value - first


def _flag(value: Any, qid: str, key: str) -> bool:
    if value in (0, 1):  # also matches True/False
        return bool(value)
    raise _LineError(f"question '{qid}': '{key}' must be 0/1 or true/false, not {value!r}")


def _year(value: Any) -> Optional[int]:
    """QuALITY years are strings, sometimes empty or approximate: keep only plain integers."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _nonempty(docs: list[Document], source: Any) -> list[Document]:
    if not docs:
        raise CorpusError(f"no documents in {source}")
    return docs


# --- QuALITY ------------------------------------------------------------------------------

def _quality_question(q: Any, index: int) -> Optional[Question]:
    """One QuALITY question; None when it has no gold label (the test split)."""
    if not isinstance(q, dict):
        raise _LineError(f"question {index + 1} is not a JSON object")
    qid = _require(q, "question_unique_id", str, f"question {index + 1}")
    text = _text(q, "question", f"question '{qid}'")
    options = _options(q, "options", qid)
    if q.get("gold_label") is None:
        return None
    return Question(uid=qid, text=text, options=options,
                    gold=_gold(q["gold_label"], qid, first=1),
                    hard=_flag(q.get("difficult", 0), qid, "difficult"))


def _quality_line(lineno: int, obj: dict) -> tuple[str, dict]:
    """(dedup key, fields) of one QuALITY line: one article with one writer's question set."""
    title = _text(obj, "title", "article")
    author = _require(obj, "author", str, f"article '{title}'").strip()
    questions = _require(obj, "questions", list, f"article '{title}'")
    fields = dict(uid=str(_require(obj, "article_id", (str, int), f"article '{title}'")),
                  title=title, author=author, year=_year(obj.get("year")),
                  text=_text(obj, "article", f"article '{title}'"),
                  questions=[q for q in (_quality_question(raw, i)
                                         for i, raw in enumerate(questions)) if q is not None])
    # The paper's code keys articles by "<title> by <author>": the same article appears on
    # two lines per split (one per question writer) and can appear in more than one split.
    return f"{title} by {author}", fields


def load_quality(paths: Iterable[str | Path]) -> list[Document]:
    """Articles of the QuALITY HTML-stripped JSON-lines files (`QuALITY.v1.0.1.htmlstripped.*`).

    Lines of one article (one per question writer) are merged, and articles are deduplicated
    across all `paths` by "<title> by <author>", as in the EntiGraph reference code; a
    document keeps the article_id and text of the first line seen. Gold labels are converted
    from QuALITY's 1-based to 0-based. Questions without a gold label (the unreleased test
    split) are skipped; a question seen twice (same question_unique_id) is kept once.
    Documents come out in first-seen order."""
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise CorpusError("no QuALITY files given")
    merged: dict[str, dict] = {}
    for path in paths:
        for key, fields in _parse_lines(path, _quality_line):
            if key not in merged:
                merged[key] = fields
                continue
            seen = {q.uid for q in merged[key]["questions"]}
            merged[key]["questions"] += [q for q in fields["questions"] if q.uid not in seen]
    docs = [Document(**{**f, "questions": tuple(f["questions"])}) for f in merged.values()]
    return _nonempty(docs, ", ".join(map(str, paths)))


# --- generic JSON lines -------------------------------------------------------------------

def _jsonl_question(q: Any, index: int, doc_uid: str) -> Question:
    if not isinstance(q, dict):
        raise _LineError(f"question {index + 1} is not a JSON object")
    qid = str(q.get("uid") or f"{doc_uid}-q{index + 1}")
    return Question(uid=qid, text=_text(q, "question", f"question '{qid}'"),
                    options=_options(q, "options", qid),
                    gold=_gold(_require(q, "answer", int, f"question '{qid}'"), qid, first=0),
                    hard=_flag(q.get("hard", False), qid, "hard"))


def _jsonl_line(lineno: int, obj: dict) -> Document:
    uid = obj.get("uid")
    uid = str(lineno) if uid is None or uid == "" else str(uid)
    what = f"document '{uid}'"
    questions = obj.get("questions") or []
    if not isinstance(questions, list):
        raise _LineError(f"{what}: 'questions' must be a list")
    year = obj.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        raise _LineError(f"{what}: 'year' must be an integer or null, not {year!r}")
    return Document(uid=uid, title=_text(obj, "title", what), author=_text(obj, "author", what),
                    year=year, text=_text(obj, "text", what),
                    questions=tuple(_jsonl_question(q, i, uid) for i, q in enumerate(questions)))


def load_jsonl(path: str | Path) -> list[Document]:
    """Documents of our generic JSON-lines format, one a line:
    {"uid", "title", "author", "year", "text", "questions": [{"uid", "question",
    "options": [4 strings], "answer": <0-based int>, "hard": bool}]}.
    `questions`, `year`, `hard` and the uids are optional; a missing document uid becomes
    the 1-based line number, a missing question uid "<doc uid>-q<n>". Uids must be unique."""
    path = Path(path).expanduser()
    seen: dict[str, int] = {}

    def parse(lineno: int, obj: dict) -> Document:
        doc = _jsonl_line(lineno, obj)
        if doc.uid in seen:
            raise _LineError(f"document uid '{doc.uid}' already used on line {seen[doc.uid]}")
        seen[doc.uid] = lineno
        return doc

    docs = _parse_lines(path, parse)
    return _nonempty(docs, path)


# --- plain text folder and built-in corpus ------------------------------------------------

def load_text_dir(path: str | Path) -> list[Document]:
    """One document per `*.txt` file of a folder (not recursive, sorted by name): uid = file
    stem, title = stem with underscores as spaces, author "unknown", no year, no questions."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CorpusError(f"corpus folder not found: {folder}")
    docs = []
    for file in sorted(folder.glob("*.txt")):
        try:
            text = file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as e:
            raise CorpusError(f"{file}: not UTF-8 text ({e.reason})") from None
        if not text:
            raise CorpusError(f"{file}: empty text")
        docs.append(Document(uid=file.stem, title=file.stem.replace("_", " "),
                             author="unknown", year=None, text=text))
    if not docs:
        raise CorpusError(f"no .txt files in {folder}")
    return docs


def load_builtin() -> list[Document]:
    """The small demo corpus shipped with the package (entigraph/data/demo_corpus.jsonl)."""
    # as_file gives a real path even when the package is installed as a zip.
    with as_file(files("entigraph") / "data" / "demo_corpus.jsonl") as path:
        return load_jsonl(path)


# --- dispatch and splits ------------------------------------------------------------------

def _path_list(path: Any) -> list[str]:
    """corpus.path as a list: a string of comma-joined files, or a list from a config."""
    items = path.split(",") if isinstance(path, str) else [str(p) for p in path]
    return [p.strip() for p in items if p.strip()]


def load_corpus(corpus_cfg: Any, cache_dir: str | Path) -> list[Document]:
    """The documents `corpus_cfg` (attributes name, format, path, download) points to."""
    fmt, path = corpus_cfg.format, corpus_cfg.path
    if fmt not in FORMATS:
        raise CorpusError(f"unknown corpus.format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "builtin":
        return load_builtin()
    if fmt == "world":
        from entigraph.world import build_world  # imported here: only this format needs it
        return build_world(corpus_cfg.seed, corpus_cfg.people)
    paths = _path_list(path) if path is not None else []
    if fmt == "quality":
        if paths:
            return load_quality(paths)
        if getattr(corpus_cfg, "download", False):
            # Imported here: the download module is needed only on this path.
            from entigraph.quality_download import download_quality
            return load_quality(download_quality(cache_dir))
        raise CorpusError("corpus.format=quality needs its files: set corpus.path=<train>,<dev> "
                          "(the QuALITY.v1.0.1.htmlstripped files) or corpus.download=true")
    if len(paths) != 1:
        raise CorpusError(f"corpus.format={fmt} needs corpus.path set to one "
                          f"{'folder' if fmt == 'textdir' else 'file'}")
    return load_text_dir(paths[0]) if fmt == "textdir" else load_jsonl(paths[0])


def questions_of(docs: Iterable[Document]) -> list[tuple[Document, Question]]:
    """Every (document, question) pair, in document then question order."""
    return [(doc, q) for doc in docs for q in doc.questions]


def reference_split(docs: list[Document], validation_share: float
                    ) -> tuple[list[Document], list[Document]]:
    """(validation, test) as in the reference code: articles sorted by title, the first
    `validation_share` of them for validation and the rest for test.

    The count is rounded half up (the reference truncates; they agree on QuALITY's 265
    articles at 0.2) and, with more than one document, kept between 1 and len-1 so that
    neither side is empty; a single document goes to test. Ties in title are ordered by
    uid, so the split does not depend on the order documents were loaded in."""
    if not 0.0 <= validation_share <= 1.0:
        raise ValueError(f"validation_share must be in [0, 1], got {validation_share}")
    ordered = sorted(docs, key=lambda d: (d.title, d.uid))
    if len(ordered) <= 1:
        return [], ordered
    n_val = math.floor(validation_share * len(ordered) + 0.5)
    n_val = min(max(n_val, 1), len(ordered) - 1)
    return ordered[:n_val], ordered[n_val:]
