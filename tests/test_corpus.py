"""Corpus loaders (QuALITY, generic JSONL, text folder, built-in), splits and the QuALITY
download against a local HTTP server."""
import functools
import http.server
import io
import json
import socket
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from entigraph import quality_download
from entigraph.corpus import (Document, Question, load_builtin, load_corpus, load_jsonl,
                              load_quality, load_text_dir, questions_of, reference_split)
from entigraph.errors import CorpusError
from entigraph.quality_download import FILES, ZIP_NAME, download_quality

TRAIN, DEV = FILES


# --- fixture writers ----------------------------------------------------------------------

def qq(uid, gold=1, difficult=0, options=("a", "b", "c", "d"), text=None):
    q = {"question": text or f"question {uid}?", "question_unique_id": uid,
         "options": list(options), "difficult": difficult}
    if gold is not None:
        q["gold_label"] = gold
    return q


def article(aid, title, author, questions, year="1955", text="Some article text.", set_id=None):
    return {"article_id": aid, "set_unique_id": set_id or f"{aid}_{len(questions)}",
            "title": title, "author": author, "year": year, "topic": "x",
            "article": text, "questions": questions}


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def doc_row(uid="d1", **over):
    row = {"uid": uid, "title": f"Title {uid}", "author": "A. Writer", "year": 2001,
           "text": "Body text.", "questions": [
               {"uid": f"{uid}-a", "question": "Which?", "options": ["w", "x", "y", "z"],
                "answer": 3, "hard": True}]}
    row.update(over)
    return row


def cfg(fmt, path=None, download=False):
    return SimpleNamespace(name="t", format=fmt, path=path, download=download)


# --- QuALITY ------------------------------------------------------------------------------

def test_quality_merges_lines_dedups_across_files_and_converts_gold(tmp_path):
    train = write_lines(tmp_path / TRAIN, [
        article("20001", "Star Pit", "Ann Lee", [qq("s1", gold=4, difficult=1), qq("s2", gold=1)],
                year="1956", set_id="20001_A"),
        article("20002", "Moon Farm", "Bo Chan", [qq("m1", gold=2)], year="", set_id="20002_A"),
        article("20001", "Star Pit", "Ann Lee", [qq("s3", gold=3), qq("s4", gold=None)],
                year="1956", set_id="20001_B"),
    ])
    # The same article (by title and author) under another id in the second file; one of
    # its questions duplicates a train question, which must not be counted twice.
    dev = write_lines(tmp_path / DEV, [
        article("30001", "Star Pit", "Ann Lee", [qq("s5", gold=2), qq("s1", gold=4, difficult=1)],
                text="Another copy.", set_id="30001_A"),
        article("30002", "Star Pit", "Other Author", [qq("o1", gold=1)], set_id="30002_A"),
    ])
    docs = load_quality([train, str(dev)])

    assert [(d.uid, d.title, d.author) for d in docs] == [
        ("20001", "Star Pit", "Ann Lee"), ("20002", "Moon Farm", "Bo Chan"),
        ("30002", "Star Pit", "Other Author")]
    star = docs[0]
    assert star.year == 1956 and docs[1].year is None
    assert star.text == "Some article text."  # the first line's text wins
    # s4 has no gold label: skipped; s1 from dev is a duplicate: kept once.
    assert [q.uid for q in star.questions] == ["s1", "s2", "s3", "s5"]
    assert [q.gold for q in star.questions] == [3, 0, 2, 1]
    assert [q.hard for q in star.questions] == [True, False, False, False]
    assert star.questions[0].options == ("a", "b", "c", "d")
    assert isinstance(star.questions[0], Question) and isinstance(star, Document)


def test_quality_test_split_without_labels_keeps_documents_without_questions(tmp_path):
    path = write_lines(tmp_path / "test", [article("1", "T", "A", [qq("q", gold=None)])])
    (doc,) = load_quality([path])
    assert doc.questions == ()


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a["questions"][0].update(options=["a", "b", "c"]),
     "question 'q1' has 3 options; each question needs exactly 4"),
    (lambda a: a["questions"][0].update(gold_label=5), "gold answer 5 is out of range 1..4"),
    (lambda a: a["questions"][0].update(gold_label=0), "gold answer 0 is out of range 1..4"),
    (lambda a: a.pop("article"), "has no 'article'"),
    (lambda a: a.update(article="   "), "'article' is empty"),
    (lambda a: a.pop("title"), "has no 'title'"),
    (lambda a: a["questions"][0].pop("question_unique_id"), "has no 'question_unique_id'"),
    (lambda a: a["questions"][0].update(difficult=2), "'difficult' must be 0/1"),
])
def test_quality_malformed_line_names_file_and_line(tmp_path, mutate, message):
    bad = article("2", "Bad", "B", [qq("q1")])
    mutate(bad)
    path = write_lines(tmp_path / "quality.dev", [article("1", "Good", "G", [qq("g1")]), "", bad])
    with pytest.raises(CorpusError) as err:
        load_quality([path])
    text = str(err.value)
    assert text.startswith(f"{path}:3: ") and message in text
    assert "\n" not in text


def test_quality_missing_file_and_empty_corpus(tmp_path):
    with pytest.raises(CorpusError, match="not found: .*nope.dev"):
        load_quality([tmp_path / "nope.dev"])
    empty = tmp_path / "empty.dev"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match="no documents"):
        load_quality([empty])


# --- generic JSONL ------------------------------------------------------------------------

def test_jsonl_loads_documents_and_defaults(tmp_path):
    minimal = {"title": "Bare", "author": "Nobody", "text": "Only text."}
    path = write_lines(tmp_path / "c.jsonl", [
        doc_row("d1"),
        doc_row("d2", year=None, questions=[
            {"question": "Q?", "options": ["1", "2", "3", "4"], "answer": 0}]),
        minimal,
    ])
    d1, d2, d3 = load_jsonl(path)
    assert (d1.uid, d1.title, d1.author, d1.year, d1.text) == ("d1", "Title d1", "A. Writer",
                                                               2001, "Body text.")
    assert d1.questions == (Question("d1-a", "Which?", ("w", "x", "y", "z"), 3, True),)
    assert d2.year is None
    assert d2.questions[0].uid == "d2-q1" and d2.questions[0].hard is False
    assert d3.uid == "3" and d3.questions == () and d3.year is None
    assert d1.header == '"Title d1" by A. Writer (2001)'


def _q(**over):
    q = {"uid": "q3", "question": "Q?", "options": ["a", "b", "c", "d"], "answer": 1}
    q.update(over)
    return q


@pytest.mark.parametrize("line, message", [
    ('{"title": "x", "author": ', "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (doc_row(questions=[_q(options=["a", "b", "c"])]),
     "question 'q3' has 3 options; each question needs exactly 4"),
    (doc_row(questions=[_q(options=["a", "b", "c", "d", "e"])]), "has 5 options"),
    (doc_row(questions=[_q(answer=4)]), "gold answer 4 is out of range 0..3"),
    (doc_row(questions=[_q(answer=-1)]), "gold answer -1 is out of range 0..3"),
    (doc_row(questions=[_q(answer="1")]), "'answer' must be int"),
    (doc_row(questions=[_q(answer=True)]), "'answer' must be int"),
    (doc_row(questions=[{"uid": "q3", "options": ["a", "b", "c", "d"], "answer": 1}]),
     "question 'q3' has no 'question'"),
    (doc_row(text=""), "document 'd1': 'text' is empty"),
    ({"uid": "d9", "author": "a", "text": "t"}, "document 'd9' has no 'title'"),
    (doc_row(year="1990"), "'year' must be an integer or null"),
    (doc_row(questions={"a": 1}), "'questions' must be a list"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "corpus.jsonl", [doc_row("d0"), "", "", doc_row("d5"),
                                                   doc_row("d6"), "", line])
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path}:7: ")
    assert message in str(err.value)


def test_jsonl_duplicate_uid_missing_file_empty_file(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [doc_row("a"), doc_row("a")])
    with pytest.raises(CorpusError, match=r"dup.jsonl:2: document uid 'a' already used on line 1"):
        load_jsonl(path)
    with pytest.raises(CorpusError, match="not found: .*absent.jsonl"):
        load_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CorpusError, match="no documents in .*empty.jsonl"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_jsonl_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(doc_row()).encode() + b"\n" + b'{"title": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"latin.jsonl:2: not UTF-8"):
        load_jsonl(path)


# --- text folder and built-in -------------------------------------------------------------

def test_text_dir(tmp_path):
    (tmp_path / "b_second_story.txt").write_text("Second.\n", encoding="utf-8")
    (tmp_path / "a_first.txt").write_text("  First text.  ", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    docs = load_text_dir(tmp_path)
    assert [(d.uid, d.title, d.author, d.year, d.text, d.questions) for d in docs] == [
        ("a_first", "a first", "unknown", None, "First text.", ()),
        ("b_second_story", "b second story", "unknown", None, "Second.", ())]


def test_text_dir_errors(tmp_path):
    with pytest.raises(CorpusError, match="folder not found"):
        load_text_dir(tmp_path / "missing")
    with pytest.raises(CorpusError, match="no .txt files"):
        load_text_dir(tmp_path)
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="blank.txt: empty text"):
        load_text_dir(tmp_path)


def test_builtin_corpus():
    docs = load_builtin()
    assert len(docs) == 5
    assert len({d.uid for d in docs}) == 5 and len({d.title for d in docs}) == 5
    for doc in docs:
        assert doc.author and isinstance(doc.year, int)
        assert 250 <= len(doc.text.split()) <= 350, doc.uid
        assert len(doc.questions) == 4
        assert sum(q.hard for q in doc.questions) == 1
        for q in doc.questions:
            assert len(q.options) == 4 and len(set(q.options)) == 4
            assert 0 <= q.gold < 4
    # Answers should not sit at one position.
    assert len({q.gold for d in docs for q in d.questions}) == 4
    assert len(questions_of(docs)) == 20


# --- dispatch and split -------------------------------------------------------------------

def test_load_corpus_dispatch(tmp_path):
    assert len(load_corpus(cfg("builtin"), tmp_path)) == 5
    train = write_lines(tmp_path / "t", [article("1", "A", "X", [qq("a")])])
    dev = write_lines(tmp_path / "d", [article("2", "B", "Y", [qq("b")])])
    assert [d.uid for d in load_corpus(cfg("quality", f"{train}, {dev}"), tmp_path)] == ["1", "2"]
    assert [d.uid for d in load_corpus(cfg("quality", [str(train), str(dev)]), tmp_path)] == ["1", "2"]
    jl = write_lines(tmp_path / "c.jsonl", [doc_row("z")])
    assert [d.uid for d in load_corpus(cfg("jsonl", str(jl)), tmp_path)] == ["z"]
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "one.txt").write_text("x")
    assert [d.uid for d in load_corpus(cfg("textdir", str(tmp_path / "txt")), tmp_path)] == ["one"]


def test_load_corpus_missing_path_messages(tmp_path):
    with pytest.raises(CorpusError, match=r"set corpus.path=.* or corpus.download=true"):
        load_corpus(cfg("quality", None, download=False), tmp_path)
    with pytest.raises(CorpusError, match="corpus.format=jsonl needs corpus.path"):
        load_corpus(cfg("jsonl", None), tmp_path)
    with pytest.raises(CorpusError, match="corpus.format=textdir needs corpus.path"):
        load_corpus(cfg("textdir", None), tmp_path)
    with pytest.raises(CorpusError, match="unknown corpus.format 'csv'"):
        load_corpus(cfg("csv", "x"), tmp_path)


def _docs(titles):
    return [Document(uid=f"u{i}", title=t, author="a", year=None, text="t")
            for i, t in enumerate(titles)]


def test_reference_split_sorted_by_title_and_sized():
    docs = _docs(["kilo", "alpha", "echo", "bravo", "juliet", "delta", "hotel", "golf",
                  "charlie", "foxtrot"])
    val, test = reference_split(docs, 0.2)
    assert [d.title for d in val] == ["alpha", "bravo"]
    assert [d.title for d in test] == ["charlie", "delta", "echo", "foxtrot", "golf", "hotel",
                                       "juliet", "kilo"]
    assert len(reference_split(_docs("abcdefghi" * 29 + "abcd"), 0.2)[0]) == 53  # 265 docs
    assert len(reference_split(docs, 0.25)[0]) == 3  # 2.5 rounds half up
    assert [len(s) for s in reference_split(_docs("abcde"), 0.01)] == [1, 4]  # at least 1
    assert [len(s) for s in reference_split(_docs("abcde"), 0.99)] == [4, 1]  # test kept
    assert reference_split(_docs("a"), 0.2) == ([], _docs("a"))
    assert [d.title for d in reference_split(load_builtin(), 0.2)[0]] == [
        "A Short History of Corvena Island"]


# --- download -----------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 serving `folder`; the
    handler class records the request paths in .requests."""
    servers = []

    def _serve(folder: Path):
        handler = type("Handler", (_Quiet,), {"requests": []})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1.0.1", handler.requests

    yield _serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _fixture_lines(name):
    return json.dumps(article(name[-3:], f"Title {name}", "Au", [qq("q", gold=2)])) + "\n"


def test_download_fetches_files_then_uses_cache(tmp_path, serve):
    site = tmp_path / "site" / "v1.0.1"
    site.mkdir(parents=True)
    for name in FILES:
        (site / name).write_text(_fixture_lines(name))
    base, requests = serve(tmp_path / "site")
    cache = tmp_path / "cache"

    paths = download_quality(cache, base_url=base)
    assert paths == [cache / "quality" / TRAIN, cache / "quality" / DEV]
    assert [p.read_text() for p in paths] == [_fixture_lines(n) for n in FILES]
    assert requests == [f"/v1.0.1/{TRAIN}", f"/v1.0.1/{DEV}"]
    assert sorted(p.name for p in (cache / "quality").iterdir()) == sorted(FILES)  # no temp

    assert download_quality(cache, base_url=base) == paths
    assert len(requests) == 2  # cached: nothing fetched again
    (paths[1]).unlink()
    download_quality(cache, base_url=base)
    assert requests[2:] == [f"/v1.0.1/{DEV}"]  # only the missing file


def test_download_falls_back_to_the_release_zip(tmp_path, serve):
    site = tmp_path / "site" / "v1.0.1"
    site.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in FILES:
            archive.writestr(f"QuALITY.v1.0.1/{name}", _fixture_lines(name))
        archive.writestr("QuALITY.v1.0.1/QuALITY.v1.0.1.train", "html version")
    (site / ZIP_NAME).write_bytes(buffer.getvalue())
    base, requests = serve(tmp_path / "site")

    paths = download_quality(tmp_path / "cache", base_url=base)
    assert [p.read_text() for p in paths] == [_fixture_lines(n) for n in FILES]
    assert requests == [f"/v1.0.1/{TRAIN}", f"/v1.0.1/{ZIP_NAME}"]
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(FILES)


def test_download_not_found_anywhere(tmp_path, serve):
    (tmp_path / "site" / "v1.0.1").mkdir(parents=True)
    base, _ = serve(tmp_path / "site")
    with pytest.raises(CorpusError, match=f"cannot download QuALITY from {base}/{ZIP_NAME}: "
                                          "HTTP 404 .*set corpus.path="):
        download_quality(tmp_path / "cache", base_url=base)
    assert list((tmp_path / "cache" / "quality").iterdir()) == []  # no partial files


def test_download_rejects_a_non_jsonl_response(tmp_path, serve):
    site = tmp_path / "site" / "v1.0.1"
    site.mkdir(parents=True)
    (site / TRAIN).write_text("<html>rate limited</html>")
    base, _ = serve(tmp_path / "site")
    with pytest.raises(CorpusError, match="not a QuALITY JSON-lines file"):
        download_quality(tmp_path / "cache", base_url=base)
    assert list((tmp_path / "cache" / "quality").iterdir()) == []


def test_download_fails_fast_without_a_server(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and now is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}/data"
    start = time.monotonic()
    with pytest.raises(CorpusError) as err:
        download_quality(tmp_path / "cache", base_url=base)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert message.startswith(f"cannot download QuALITY from {base}/{TRAIN}: ")
    assert f"set corpus.path=<dir>/{TRAIN},<dir>/{DEV}" in message and "\n" not in message


def test_load_corpus_downloads_quality_when_asked(tmp_path, serve, monkeypatch):
    site = tmp_path / "site" / "v1.0.1"
    site.mkdir(parents=True)
    for name in FILES:
        (site / name).write_text(_fixture_lines(name))
    base, _ = serve(tmp_path / "site")
    monkeypatch.setattr(quality_download, "BASE_URL", base)
    docs = load_corpus(cfg("quality", None, download=True), tmp_path / "cache")
    assert [d.title for d in docs] == [f"Title {n}" for n in FILES]
    assert docs[0].questions[0].gold == 1
