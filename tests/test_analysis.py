"""Scaling-curve fits: parameter recovery, model choice, interval coverage, held-out
extrapolation, the report's files (deterministic), and refusals of bad tables."""
import csv
import json

import numpy as np
import pytest

from entigraph.analysis.bootstrap import bootstrap, questions_resampler, runs_resampler, runs_scheme
from entigraph.analysis.families import FAMILIES, family
from entigraph.analysis.fit import Points, fit, heldout, starts, tokens_to_reach
from entigraph.analysis.report import describe, write_report
from entigraph.config import CURVE_FAMILIES
from entigraph.errors import EntigraphError

# Known parameters, in each family's own parameterisation (x = log10 tokens).
TRUTH = {
    "loglinear": [-0.1, 0.08],
    "power_law": [0.7, 1.3, 0.4],
    "logistic": [0.25, 0.65, 1.8, 6.5],
    "mixture_exp": [0.6, 0.1, 0.15, 0.1, 5.0, 6.5, 8.0],
}
X = np.linspace(4, 9, 12)  # 10^4 .. 10^9 tokens


def curve(name, x=X):
    return family(name).curve(x, np.array(TRUTH[name]))


def binomial_points(name, questions, seed, x=X):
    rng = np.random.default_rng(seed)
    return Points(x, rng.binomial(questions, curve(name, x)) / questions,
                  np.full(len(x), float(questions)))


def fitted(name, points, method, seed=0):
    fam = family(name)
    return fit(fam, points, method, starts(fam, points, 8, np.random.default_rng(seed)))


def test_config_names_every_family():
    assert CURVE_FAMILIES == list(FAMILIES)


@pytest.mark.parametrize("name", list(TRUTH))
def test_least_squares_recovers_known_parameters(name):
    f = fitted(name, Points(X, curve(name), None), "least_squares")
    np.testing.assert_allclose(f.theta, TRUTH[name], atol=1e-3)
    assert f.rmse < 1e-6


@pytest.mark.parametrize("name", list(TRUTH))
def test_binomial_likelihood_recovers_known_parameters(name):
    f = fitted(name, binomial_points(name, 200_000, seed=1), "binomial")
    tolerance = {"mixture_exp": 0.1}.get(name, 0.03)  # 7 parameters: time constants less sharp
    np.testing.assert_allclose(f.theta, TRUTH[name], atol=tolerance)


@pytest.mark.parametrize("name", ["loglinear", "power_law", "logistic"])
def test_aic_prefers_the_true_family(name):
    points = binomial_points(name, 5000, seed=2, x=np.repeat(X, 2))
    aic = {other: fitted(other, points, "binomial").aic for other in TRUTH}
    assert min(aic, key=aic.get) == name, aic


def test_question_bootstrap_intervals_cover_the_truth_at_their_level():
    """40 simulated sweeps (5 budgets, 200 questions): the 90% interval of the slope should
    hold the true slope in about 90% of them."""
    fam, x, questions, hits = family("loglinear"), np.linspace(4, 8, 5), 200, 0
    for sim in range(40):
        rng = np.random.default_rng(sim)
        correct = (rng.random((len(x), questions)) < curve("loglinear", x)[:, None]).astype(float)
        points = Points(x, correct.mean(axis=1), np.full(len(x), float(questions)))
        f = fit(fam, points, "binomial", starts(fam, points, 2, rng))
        scheme, resample = questions_resampler(points, correct)
        lo, hi = bootstrap(f, "questions", scheme, resample, 100, rng).intervals(fam.params, 0.9)["beta"]
        hits += lo <= TRUTH["loglinear"][1] <= hi
    assert 0.8 <= hits / 40 <= 0.98


@pytest.mark.slow
def test_runs_bootstrap_intervals_cover_the_truth_at_their_level():
    fam, x, hits = family("loglinear"), np.linspace(4, 8, 10), 0
    for sim in range(60):
        rng = np.random.default_rng(sim)
        points = Points(x, curve("loglinear", x) + rng.normal(0, 0.02, len(x)), None)
        f = fit(fam, points, "least_squares", starts(fam, points, 2, rng))
        b = bootstrap(f, "runs", runs_scheme(points), runs_resampler(f), 200, rng)
        lo, hi = b.intervals(fam.params, 0.9)["beta"]
        hits += lo <= TRUTH["loglinear"][1] <= hi
    assert 0.8 <= hits / 60 <= 0.98


def test_replicate_runs_are_resampled_within_budgets():
    points = Points(np.repeat([4.0, 5.0, 6.0], 2), np.array([.1, .2, .3, .35, .5, .45]), None)
    f = fitted("loglinear", points, "least_squares")
    assert runs_scheme(points).startswith("runs resampled within each budget")
    resampled = runs_resampler(f)(np.random.default_rng(0))
    assert sorted(resampled.x) == sorted(points.x)
    for x, y in zip(resampled.x, resampled.y):
        assert y in points.y[points.x == x]


def test_heldout_predicts_the_largest_budget_from_the_others():
    points = binomial_points("power_law", 100_000, seed=3)
    result = heldout(family("power_law"), points, "binomial", 8, np.random.default_rng(0))
    assert result["tokens"] == 10 ** 9
    assert result["observed"] == pytest.approx(points.y[-1])
    assert result["abs_error"] < 0.01


def test_heldout_says_how_many_budgets_it_needs():
    points = Points(X[:4], curve("power_law", X[:4]), None)
    result = heldout(family("power_law"), points, "least_squares", 2, np.random.default_rng(0))
    assert "needs at least 5 distinct token budgets" in result["skipped"]


def test_tokens_to_reach_a_target():
    fam, theta = family("loglinear"), np.array(TRUTH["loglinear"])
    # -0.1 + 0.08 x = 0.5  =>  x = 7.5
    assert tokens_to_reach(fam, theta, 0.5, x_max=9) == pytest.approx(10 ** 7.5, rel=1e-6)
    assert tokens_to_reach(family("power_law"), np.array(TRUTH["power_law"]), 0.8, 9) == np.inf


# --- the report, from a CSV table ----------------------------------------------------------

def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sweep_table(path, name="power_law", questions=2000, budgets=X, seed=4):
    points = binomial_points(name, questions, seed, x=np.asarray(budgets))
    return write_csv(path, [{"tokens": int(round(10 ** x)), "accuracy": y, "questions": questions}
                            for x, y in zip(points.x, points.y)])


def test_report_writes_fit_tables_and_figures(analyze_cfg, tmp_path):
    cfg = analyze_cfg(sweep_table(tmp_path / "paper.csv"), "out", "fit.targets=[0.6]",
                      "++references={Llama 3 8B base: 0.3949}")
    outputs, _ = write_report(cfg)
    document = json.loads(outputs["fit"].read_text())
    for name in TRUTH:
        entry = document["families"][name]
        assert {"params", "intervals", "rmse", "aic", "bic", "heldout", "prediction"} <= set(entry)
        assert set(entry["params"]) == set(family(name).params)
        assert set(entry["intervals"]) == {"runs", "questions"}  # binomial redraw: no per-question file
    assert document["best"]["criterion"] == "heldout_abs_error"
    assert document["best"]["family"] in TRUTH
    best = document["families"][document["best"]["family"]]
    assert best["heldout"]["abs_error"] == min(v["heldout"]["abs_error"]
                                               for v in document["families"].values())
    prediction = document["best"]["prediction"]
    assert prediction["tokens"] == pytest.approx(10 ** (2 * 9 - X[-2]), rel=1e-6)  # next step
    assert prediction["interval"][0] <= prediction["accuracy"] <= prediction["interval"][1]
    target = document["families"]["power_law"]["tokens_to_target"]["0.6"]
    assert target["interval"][0] <= target["tokens"] <= target["interval"][1]
    assert "| power_law |" in outputs["fits_md"].read_text()
    assert len(outputs["fits_csv"].read_text().splitlines()) == 1 + len(TRUTH)
    for figure in ("plot", "residuals"):
        assert outputs[figure].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_deterministic_and_regenerates_from_its_own_table(analyze_cfg, tmp_path):
    source = sweep_table(tmp_path / "paper.csv", budgets=X[:6])
    first, _ = write_report(analyze_cfg(source, "a"))
    second, _ = write_report(analyze_cfg(source, "b"))
    again, _ = write_report(analyze_cfg(first["table"], "c"))  # the cached table as input
    for key in ("plot", "residuals", "fits_md"):
        assert first[key].read_bytes() == second[key].read_bytes()
        assert first[key].read_bytes() == again[key].read_bytes()
    fits = [json.loads(o["fit"].read_text())["families"] for o in (first, second, again)]
    assert fits[0] == fits[1] == fits[2]


def test_families_needing_more_budgets_are_skipped_with_the_count(analyze_cfg, tmp_path):
    outputs, document = write_report(analyze_cfg(sweep_table(tmp_path / "t.csv", budgets=X[:3])))
    families = document["families"]
    assert "params" in families["loglinear"]
    assert families["mixture_exp"]["skipped"].startswith(
        "mixture_exp needs at least 8 distinct token budgets (7 parameters + 1); this slice has 3")
    assert "needs at least 5" in families["logistic"]["skipped"]
    assert document["best"]["family"] == "loglinear"
    assert document["best"]["criterion"].startswith("aic")


def test_slices_with_too_few_budgets_for_any_family_are_points_with_intervals(analyze_cfg,
                                                                              tmp_path):
    for budgets in (X[:2], X[:1]):
        source = sweep_table(tmp_path / f"t{len(budgets)}.csv", budgets=budgets)
        outputs, document = write_report(analyze_cfg(source, f"out{len(budgets)}"))
        assert document["best"] is None
        assert "needs at least 3 distinct token budgets" in document["families"]["loglinear"]["skipped"]
        (only,) = document["slices"].values()
        assert [b["tokens"] for b in only["by_budget"]] == [round(10 ** x) for x in budgets]
        for b in only["by_budget"]:  # 2,000 questions a run: a binomial redraw's interval
            assert b["interval"][0] < b["accuracy"] < b["interval"][1]
            assert b["interval"][1] - b["interval"][0] < 0.06
        assert "no curve fitted" in describe(document)
        assert outputs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("row, message", [
    ({"tokens": 1000, "accuracy": "nan"}, "accuracy is nan"),
    ({"tokens": "", "accuracy": 0.4}, "synthetic_tokens is None"),
    ({"tokens": 1000, "accuracy": 56.2}, "give accuracy as a fraction"),
    ({"tokens": 0, "accuracy": 0.4}, "must be positive"),
])
def test_bad_values_are_refused_naming_the_row(analyze_cfg, tmp_path, row, message):
    rows = [{"tokens": 10 ** k, "accuracy": 0.1 * k} for k in (3, 4, 5)] + [row]
    with pytest.raises(EntigraphError, match=message) as err:
        write_report(analyze_cfg(write_csv(tmp_path / "t.csv", rows)))
    assert "t.csv:5" in str(err.value)  # the CSV line


def test_a_table_without_the_needed_columns_is_refused(analyze_cfg, tmp_path):
    with pytest.raises(EntigraphError, match="needs columns tokens and accuracy"):
        write_report(analyze_cfg(write_csv(tmp_path / "t.csv", [{"budget": 1, "acc": 0.5}])))


def test_binomial_without_question_counts_is_refused(analyze_cfg, tmp_path):
    rows = [{"tokens": 10 ** k, "accuracy": 0.1 * k} for k in (3, 4, 5)]
    with pytest.raises(EntigraphError, match="fit.method=binomial needs every run's number"):
        write_report(analyze_cfg(write_csv(tmp_path / "t.csv", rows), "out", "fit.method=binomial"))
