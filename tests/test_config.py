from importlib.resources import files

import pytest

from cli import entigraph
from hydra.errors import ConfigCompositionException

from entigraph.config import validate
from entigraph.errors import ConfigError

COMMANDS = ["generate", "train", "eval", "sweep", "demo", "analyze", "build-model"]
RUN_COMMANDS = ["generate", "train", "eval", "sweep", "demo"]
REQUIRED = {"eval": ["checkpoint=/tmp/model"]}


def group_options():
    conf = files("entigraph.conf")
    return [(group.name, option.name.removesuffix(".yaml"))
            for group in conf.iterdir() if group.is_dir() and not group.name.startswith("_")
            for option in group.iterdir() if option.name.endswith(".yaml")]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_config_composes_and_validates(compose, command):
    cfg = compose(command, REQUIRED.get(command, []))
    validate(cfg)


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_composes_under_train(compose, group, option):
    overrides = [f"{group}={option}"]
    if group == "corpus" and option in ("jsonl", "textdir"):
        overrides.append("corpus.path=/tmp/x")
    if group == "generator" and option.startswith("vllm"):
        overrides.append("generator.model=/tmp/model")
    if group == "launcher" and option == "slurm":  # 8 processes a run: a batch of 16 in 2s
        overrides.append("trainer.micro_batch_size=2")
    cfg = compose("train", overrides)
    validate(cfg)


def test_sweepable_knobs_have_defaults(compose):
    cfg = compose("train")
    assert cfg.data.synthetic_tokens is None  # null: the whole corpus
    assert cfg.data.mixing_ratio == 0.0
    assert cfg.optim.lr == 5e-6
    assert cfg.seed == 0


@pytest.mark.parametrize("override,key,allowed", [
    ("data.mixing_ratio=1.0", "data.mixing_ratio", "[0.0, 1.0)"),
    ("data.mixing_ratio=-0.1", "data.mixing_ratio", "[0.0, 1.0)"),
    ("data.synthetic_tokens=0", "data.synthetic_tokens", "(0, inf)"),
    ("optim.lr=-1e-5", "optim.lr", "(0.0, inf)"),
    ("trainer.epochs=0", "trainer.epochs", "(0, inf)"),
    ("eval.split=dev", "eval.split", "one of: all, validation, test"),
])
def test_out_of_range_values_name_key_and_range(compose, override, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate(compose("train", [override]))
    message = str(err.value)
    assert key in message and allowed in message and "\n" not in message


def test_unknown_key_and_wrong_type_fail_at_composition(compose):
    with pytest.raises(ConfigCompositionException):
        compose("train", ["data.not_a_knob=1"])
    with pytest.raises(ConfigCompositionException):
        compose("train", ["data.synthetic_tokens=1.5"])


def test_experiment_preset_overrides_groups(compose):
    cfg = compose("train", ["experiment=smoke"])
    assert cfg.data.block_size == 64 and cfg.tracker.mode == "disabled"


def test_paper_preset_is_the_papers_recipe(tmp_path):
    """What `entigraph train experiment=paper_entigraph --cfg job` shows a user: the paper's
    scoring first, AdamW as the HF Trainer, no entity cap, replay by the reference rule."""
    import yaml

    out = entigraph("train", "experiment=paper_entigraph", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["eval"]["protocols"] == ["cot", "mc"] and cfg["eval"]["split"] == "test"
    assert cfg["eval"]["cot"] == {**cfg["eval"]["cot"], "num_samples": 64, "max_new_tokens": 300,
                                  "selection": "random_valid", "unparsed": "drop"}
    assert (cfg["optim"]["beta1"], cfg["optim"]["beta2"], cfg["optim"]["eps"]) == (0.9, 0.999, 1e-8)
    assert cfg["optim"]["lr"] == 5e-6 and cfg["trainer"]["epochs"] == 2
    assert cfg["synthesis"]["max_entities"] is None and cfg["synthesis"]["max_triples"] == 3000
    assert cfg["synthesis"]["prompt_set"] == "entigraph-v2"
    assert cfg["generator"]["model"] == "gpt-4-turbo" and cfg["generator"]["temperature"] == 1.0
    assert cfg["data"]["mixing_mode"] == "replace" and cfg["data"]["mixing_ratio"] == 0.1
    for baseline, method, epochs in (("paper_rephrase", "rephrase", 2), ("paper_raw", "raw", 4)):
        out = entigraph("train", f"experiment={baseline}", "--cfg", "job", cwd=tmp_path)
        other = yaml.safe_load(out.stdout)
        assert other["synthesis"]["method"] == method and other["trainer"]["epochs"] == epochs
        assert other["eval"] == cfg["eval"] and other["optim"] == cfg["optim"]


def test_cli_help_lists_every_command(tmp_path):
    out = entigraph("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in COMMANDS:
        assert f"  {command} " in out.stdout


def test_cli_prints_composed_config(tmp_path):
    out = entigraph("train", "optim.lr=1e-4", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "lr: 0.0001" in out.stdout and "mixing_ratio: 0.0" in out.stdout


def test_cli_bad_value_fails_before_work_with_one_line(tmp_path):
    out = entigraph("train", "data.mixing_ratio=1.5", f"paths.root={tmp_path}/out", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "data.mixing_ratio" in out.stderr and "[0.0, 1.0)" in out.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_cli_unknown_command(tmp_path):
    out = entigraph("fit", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command 'fit'" in out.stderr


def test_cli_eval_needs_a_checkpoint(tmp_path):
    out = entigraph("eval", f"paths.root={tmp_path}/out", cwd=tmp_path)
    assert out.returncode == 2 and "set checkpoint=<model folder>" in out.stderr
    missing = entigraph("eval", f"checkpoint={tmp_path}/nope", f"paths.root={tmp_path}/out", cwd=tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides,message", [
    (["generator=vllm_server"], "generator.model is not set"),
    (["model.hidden_size=64", "model.num_heads=4"], "head dimension >= 32"),
    (["trainer.batch_size=16", "trainer.micro_batch_size=3"], "not a multiple of"),
])
def test_cross_field_checks(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose("train", overrides))


def test_an_empty_evaluation_split_is_named(compose, tmp_path):
    import json

    from entigraph.commands import eval_questions

    corpus = tmp_path / "one.jsonl"
    corpus.write_text(json.dumps({"title": "T", "author": "A", "text": "x", "questions": [
        {"question": "?", "options": ["a", "b", "c", "d"], "answer": 0}]}) + "\n")
    cfg = compose("eval", ["corpus=jsonl", f"corpus.path={corpus}"])
    assert len(eval_questions(cfg, "test")) == 1  # a single article goes to test
    with pytest.raises(ConfigError, match="the validation split of corpus custom has no questions"):
        eval_questions(cfg, "validation")


def test_run_folders_carry_a_hash_of_what_changes_the_result(compose):
    import re

    def name(*overrides: str) -> str:
        return compose("train", list(overrides)).run_name

    base = name()
    assert re.fullmatch(r"demo-entigraph/tok\w+_mix0.0_lr5e-06_seed0-[0-9a-f]{8}", base), base
    assert name("optim.warmup_ratio=0.2") != base  # a knob the name does not spell out
    assert name("model.hidden_size=96") != base
    # Naming, logging, checkpointing and how many processes train do not change the result;
    # nor does data.repeat (a budget within the corpus reads the same blocks either way).
    assert name("trainer.log_every=3", "trainer.checkpoint_every=7", "tracker.mode=disabled",
                "trainer.launch.processes=2", "sweep.name=other",
                "sweep.generate_corpora=none", "data.repeat=true") == base
    # Nor how its corpus was made: the run trains on data.corpus_dir's texts, in the hash.
    assert name("generator.max_in_flight=3", "synthesis.budget_dollars=5") == base
    assert name("data.corpus_dir=elsewhere") != base


def test_sweep_runs_are_grouped_and_tagged_by_sweep(compose):
    from entigraph.sweeps.grid import in_sweep_group

    point = in_sweep_group(in_sweep_group(compose("train", ["sweep.name=ladder"])))
    assert point.tracker.group == "ladder" and list(point.tracker.tags) == ["sweep:ladder"]
