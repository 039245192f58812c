"""The corpora of a sweep over synthesis methods: each missing one generated before any run, or
the sweep refused in one line naming the command that makes it (sweep.generate_corpora)."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from cli import entigraph
from entigraph.analysis.compare import PAIRED
from entigraph.errors import ConfigError
from entigraph.sweeps.corpora import ensure_corpora, generate_command, search_points, with_values
from entigraph.sweeps.grid import grid_points

SMOKE = ["experiment=smoke", "trainer.checkpoint_every=0"]
TWO_METHODS = "++sweep.grid={synthesis.method:[entigraph,raw],data.synthetic_tokens:[1024]}"


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("record.json"))]


def method_of(run: dict) -> str:
    return yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())["synthesis"]["method"]


def one_line_error(out) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def entigraph_only(generated_root, tmp_path):
    """A paths.root holding the built-in documents' EntiGraph corpus and no other."""
    corpora = generated_root / "corpora" / "demo"
    (entigraph_corpus,) = corpora.glob("entigraph-*")
    root = tmp_path / "root"
    shutil.copytree(entigraph_corpus, root / "corpora" / "demo" / entigraph_corpus.name)
    return root


def points_of(compose, root, *overrides):
    """The sweep's points, each with the overrides a command line would have given."""
    given = [*SMOKE, f"paths.root={root}", *overrides]
    cfg = compose("sweep", given)
    return [with_values(point, given, cfg.sweep.grid) for point in grid_points(cfg, cfg.sweep.grid)]


def test_a_refusal_names_the_method_the_command_and_the_knob(compose, tmp_path):
    points = points_of(compose, tmp_path, TWO_METHODS, "sweep.generate_corpora=none")
    with pytest.raises(ConfigError) as err:
        ensure_corpora(points)
    message = str(err.value)
    assert message.startswith("config: no complete entigraph corpus at ")
    assert (f"`entigraph generate experiment=smoke paths.root={tmp_path} synthesis.method="
            f"entigraph` or set sweep.generate_corpora=free") in message
    assert message.endswith("(also missing: raw)") and "\n" not in message
    assert not (tmp_path / "corpora").exists()


def test_a_paid_corpus_is_refused_before_a_free_one_is_made(compose, tmp_path):
    points = points_of(compose, tmp_path, TWO_METHODS, "generator=openai")
    with pytest.raises(ConfigError, match=r"synthesis.method=entigraph` or set "
                                          r"sweep.generate_corpora=all to generate it first"):
        ensure_corpora(points)
    assert not (tmp_path / "corpora").exists()  # not even the raw corpus, which costs nothing


def test_dry_runs_need_no_corpus_and_a_corpus_elsewhere_is_not_generated(compose, tmp_path):
    ensure_corpora(points_of(compose, tmp_path, TWO_METHODS, "trainer.dry_run=true",
                             "sweep.generate_corpora=none"))
    elsewhere = points_of(compose, tmp_path, TWO_METHODS, f"data.corpus_dir={tmp_path}/mine")
    with pytest.raises(ConfigError, match="data.corpus_dir is not synthesis.output_dir"):
        ensure_corpora(elsewhere)


def test_the_command_keeps_what_makes_the_corpus_as_the_point_resolved_it(compose, tmp_path):
    root = f"{tmp_path}/a b"
    (point, _), *_ = points_of(compose, root, "generator=openai", "synthesis.method=raw")
    # As the sweeper gives a job's overrides: a grid's strings quoted, the sweep's own run_dir.
    overrides = ["run_dir=${sweep.dir}/${run_name}", "synthesis.method='raw'", "grid=methods",
                 "generator=openai", f"paths.root={root}", "optim.lr=1e-3",
                 "data.synthetic_tokens=1024", "synthesis.max_triples=3"]
    assert generate_command(point, overrides) == (
        f"entigraph generate synthesis.method=raw generator=openai 'paths.root={tmp_path}/a b' "
        f"synthesis.max_triples=20")  # values as the point has them, keys in the order given


def test_a_search_over_methods_needs_each_methods_corpus(compose, tmp_path):
    space = "+sweep.space={synthesis.method: 'choice(entigraph, raw)', optim.lr: 'interval(1e-4, 1e-3)'}"
    cfg = compose("search", [*SMOKE, f"paths.root={tmp_path}", "~space", space])
    points = search_points(cfg, ["experiment=smoke"])
    assert [point.synthesis.method for point, _ in points] == ["entigraph", "raw"]
    assert points[1][1] == ["experiment=smoke", "synthesis.method=raw"]


def test_the_method_presets_compose(compose):
    cfg = compose("sweep", ["experiment=smoke", "grid=methods"])
    assert cfg.data.repeat and cfg.sweep.name == "methods"
    assert list(cfg.sweep.grid["synthesis.method"]) == ["entigraph", "rephrase", "raw"]
    assert len(grid_points(cfg, cfg.sweep.grid)) == 9
    paper = compose("train", ["experiment=paper_entigraph", "grid=paper_methods"])
    ladder = yaml.safe_load((Path(__file__).resolve().parents[1] / "sweeps" / "grid" /
                             "paper_budgets.yaml").read_text())["sweep"]["grid"]
    budgets = list(paper.sweep.grid["data.synthetic_tokens"])
    assert len(budgets) == 5 and set(budgets) <= set(ladder["data.synthetic_tokens"])
    assert paper.data.repeat and paper.data.mixing_mode == "replace"  # the paper's recipe


def test_a_sweep_refuses_a_missing_corpus_in_one_line_and_trains_nothing(entigraph_only,
                                                                        tmp_path):
    common = [*SMOKE, f"paths.root={entigraph_only}", "sweep.generate_corpora=none"]
    out = entigraph("sweep", *common, TWO_METHODS, cwd=tmp_path)
    line = one_line_error(out)
    assert "no complete raw corpus" in line and "entigraph sweep: error:" in line
    assert (f"`entigraph generate experiment=smoke paths.root={entigraph_only} "
            f"synthesis.method=raw` or set sweep.generate_corpora=free") in line
    multirun = entigraph("train", "--multirun", *common, "synthesis.method=entigraph,raw",
                         cwd=tmp_path)
    assert "synthesis.method=raw" in one_line_error(multirun)
    search = entigraph("search", *common, "~space",
                       "+sweep.space={synthesis.method: 'choice(entigraph, raw)'}", cwd=tmp_path)
    assert search.returncode == 2, search.stderr[-3000:]
    # Optuna announces the study it opened, then the one line of the refusal.
    assert "no complete raw corpus" in search.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("record.json"))  # entigraph_only lies in tmp_path
    assert sorted(p.name.split("-")[0] for p in (entigraph_only / "corpora" / "demo").iterdir()) \
        == ["entigraph"]


def test_a_sweep_generates_a_missing_free_corpus_first(entigraph_only, tmp_path):
    out = entigraph("sweep", *SMOKE, f"paths.root={entigraph_only}", TWO_METHODS, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sweep: generating the missing raw corpus" in out.stdout
    assert out.stdout.index("generating the missing") < out.stdout.index("run folder:")
    runs = records(entigraph_only / "runs")
    assert sorted(map(method_of, runs)) == ["entigraph", "raw"]
    assert all(run["status"] == "completed" for run in runs)


@pytest.mark.slow
def test_the_methods_preset_trains_every_method_on_matched_tokens(compose, entigraph_only,
                                                                   tmp_path):
    out = entigraph("sweep", "experiment=smoke", "grid=methods", f"paths.root={entigraph_only}",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    grid = compose("sweep", ["grid=methods"]).sweep.grid
    budgets, methods = list(grid["data.synthetic_tokens"]), list(grid["synthesis.method"])
    runs = {(method_of(run), run["derived"]["synthetic_tokens_selected"]): run
            for run in records(entigraph_only / "runs")}
    assert sorted(runs) == sorted((m, b) for m in methods for b in budgets)
    assert all(run["status"] == "completed" for run in runs.values())
    (raw_corpus,) = (entigraph_only / "corpora" / "demo").glob("raw-*")
    totals = json.loads((raw_corpus / "manifest.json").read_text())["totals"]
    raw_tokens = totals["synthetic_tokens"] + 2 * totals["texts"]  # each framed by BOS and EOS
    for budget in budgets:
        raw = runs["raw", budget]["derived"]
        assert raw["synthetic_tokens_unique"] == raw_tokens == raw["corpus_tokens_available"]
        assert raw["synthetic_repeats"] == pytest.approx(budget / raw_tokens)
        assert raw["synthetic_repeats"] > 1
        assert runs["entigraph", budget]["derived"]["synthetic_repeats"] == 1.0
        assert len({runs[m, budget]["derived"]["steps"] for m in methods}) == 1

    # One figure, a curve per method, compared: every run answered the same questions.
    out = entigraph("analyze", f"input={entigraph_only / 'runs'}", "slice_by=[method]",
                    f"output_dir={tmp_path / 'analysis'}", "fit.bootstrap_iterations=20",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    document = json.loads((tmp_path / "analysis" / "fit.json").read_text())
    assert sorted(document["slices"]) == [f"method={m}" for m in sorted(methods)]
    assert all(s["families"]["loglinear"].get("params") for s in document["slices"].values())
    comparison = document["comparison"]
    assert len(comparison["differences"]) == 3 * len(budgets)  # three pairs at every budget
    assert {d["interval_from"] for d in comparison["differences"]} == {PAIRED}
    assert comparison["decision_accuracy"]["target_tokens"] == budgets[-1]
    assert 0 <= comparison["decision_accuracy"]["overall"] <= 1
    assert "decision accuracy:" in out.stdout
    assert (tmp_path / "analysis" / "accuracy_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "analysis" / "results.csv") as f:
        raw_rows = [row for row in csv.DictReader(f) if row["method"] == "raw"]
    assert all(float(row["repeats"]) > 1 for row in raw_rows)
