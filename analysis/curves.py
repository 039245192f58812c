"""Scaling-curve analysis of a table: slices of runs, every family fitted to each slice with
bootstrap intervals, held-out extrapolation, predictions, and the best family."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby
from typing import Callable, Optional

import numpy as np

from entigraph.analysis.bootstrap import (
    Bootstrap, bootstrap, percentiles, questions_resampler, runs_resampler, runs_scheme)
from entigraph.analysis.collect import COMPATIBLE
from entigraph.analysis.families import family
from entigraph.analysis.fit import Fit, Points, fit, heldout, starts, tokens_to_reach
from entigraph.config import SLICINGS
from entigraph.errors import EntigraphError


@dataclass
class SliceFit:
    name: str
    points: Points
    fits: dict[str, Fit]
    bands: dict[str, Bootstrap]  # per family, the bootstrap behind bands and predictions
    next_tokens: Optional[int]  # None: a single budget, no grid step to extrapolate to
    summary: dict  # what fit.json says about the slice
    input: str = ""  # the source of its rows (`input=`), "" for a single source
    label: str = ""  # the slice without its source: slices of one label share a colour
    # Per-question outcomes shared by every run of the slice: (question ids, runs x questions).
    answers: Optional[tuple[list, np.ndarray]] = None
    budget_draws: Optional[np.ndarray] = None  # bootstrap draws of the budget means (draws, budgets)


# Slicing by columns also holds the recipe's sweep axes and the corpus's making fixed within a
# slice (besides collect.COMPATIBLE, what every run measured), unless sliced by them.
RECIPE = ("mixing_ratio", "lr", "prompt_set", "generator")
PROTOCOL = "protocol"


def slice_key(how, protocols: tuple = ()) -> Callable[[dict], str]:
    """The slice a row belongs to. group: its (mixing ratio, LR); envelope: its mixing ratio
    (the best LR is picked per budget later); none: one slice; a list of columns: their values,
    named `column=value, ...`. With several `protocols` (analyze protocol=[cot,rag]), its
    protocol too: `<slice>, protocol=rag` (`protocol=rag` for none)."""
    key = _key(how)
    if not protocols or PROTOCOL in sliced_columns(how):
        return key
    if how == "none":
        return lambda r: f"{PROTOCOL}={r.get(PROTOCOL)}"
    return lambda r: f"{key(r)}, {PROTOCOL}={r.get(PROTOCOL)}"


def _key(how) -> Callable[[dict], str]:
    if how == "none":
        return lambda r: "all"
    if how == "group":
        return lambda r: r["group"]
    if how == "envelope":
        return lambda r: (r["group"] if r.get("mixing_ratio") is None
                          else f"mix{r['mixing_ratio']}_bestlr")
    columns = sliced_columns(how)
    return lambda r: ", ".join(f"{c}={r.get(c)}" for c in columns)


def sliced_columns(how, protocols: tuple = ()) -> tuple[str, ...]:
    """The columns of slice_by: a list of them, or one column's name (none for group,
    envelope and none); and protocol when several `protocols` are sliced apart."""
    columns = (() if how in SLICINGS else (how,)) if isinstance(how, str) else tuple(how)
    return columns + ((PROTOCOL,) if protocols and PROTOCOL not in columns else ())


def must_agree(how, protocols: tuple = ()) -> tuple[str, ...]:
    """Columns every run of one slice must share (messages name the first that differs)."""
    recipe = () if how in SLICINGS else RECIPE
    return tuple(c for c in (*COMPATIBLE, *recipe) if c not in sliced_columns(how, protocols))


def slices(rows: list[dict], how, protocols: tuple = ()) -> dict[str, list[dict]]:
    """The curves to fit: rows grouped by `slice_key`; with `envelope`, at each budget only the
    runs of the LR with the best mean accuracy there (the max over LRs favours noise upwards a
    little: an optimistic envelope). Rows of several inputs are sliced input by input, each
    slice named `<input>: <slice>`. Slices of several `protocols` come later protocol first,
    so that comparisons read later minus earlier (rag - cot for [cot,rag])."""
    by_input = _by(rows, lambda r: r.get("input") or "")
    if len(by_input) > 1:
        return {f"{label}: {name}": part for label, some in by_input.items()
                for name, part in _slices(some, how, protocols).items()}
    return _slices(rows, how, protocols)


def _slices(rows: list[dict], how, protocols: tuple) -> dict[str, list[dict]]:
    parts = _by(rows, slice_key(how, protocols))
    if how == "envelope":
        parts = {name: [r for budget in _by(part, lambda r: r["synthetic_tokens"]).values()
                        for r in _best_lr(budget)]
                 for name, part in parts.items()}
    rank = {p: -i for i, p in enumerate(protocols)}  # stable: by name within a protocol
    return dict(sorted(parts.items(), key=lambda kv: rank.get(kv[1][0].get(PROTOCOL), 1)))


def _by(rows: list[dict], key) -> dict:
    return {k: list(g) for k, g in groupby(sorted(rows, key=lambda r: str(key(r))), key=key)}


def _best_lr(rows: list[dict]) -> list[dict]:
    by_lr = _by(rows, lambda r: r.get("lr"))
    best = max(by_lr, key=lambda lr: (np.mean([r["accuracy"] for r in by_lr[lr]]), str(lr)))
    return by_lr[best]


def questions_scored(row: dict):
    """The questions an accuracy is a share of: those scored (eval.cot.unparsed=drop leaves
    some out), or all asked when a row does not say."""
    return row["n_scored"] if row.get("n_scored") is not None else row.get("n_questions")


def points_of(rows: list[dict]) -> Points:
    n = [questions_scored(r) for r in rows]
    return Points(np.log10([float(r["synthetic_tokens"]) for r in rows]),
                  np.array([float(r["accuracy"]) for r in rows]),
                  None if None in n else np.array(n, dtype=float))


def question_matrix(rows: list[dict], questions: dict) -> tuple[Optional[tuple], str]:
    """(question ids, runs x questions outcomes) over the question set every run shares, or
    None and why."""
    answers = [questions.get(r["run"]) for r in rows]
    if None in answers:
        return None, "not every run has per-question records"
    ids = sorted(answers[0])
    if any(sorted(a) != ids for a in answers):
        return None, "the runs answered different question sets"
    return (ids, np.array([[a[q] for q in ids] for a in answers], dtype=float)), "paired"


def choose_method(method: str, points: Points, name: str) -> str:
    if method == "auto":
        return "least_squares" if points.n is None else "binomial"
    if method == "binomial" and points.n is None:
        raise EntigraphError(f"fit.method=binomial needs every run's number of questions; some "
                             f"runs of slice {name} have none (use fit.method=least_squares)")
    return method


def next_budget(points: Points, predict_tokens: Optional[int]) -> Optional[int]:
    """The budget to predict: the one given, else the next step of the sweep's geometric grid
    (none for a single budget)."""
    if predict_tokens:
        return int(predict_tokens)
    xs = np.unique(points.x)
    return int(round(10 ** (2 * xs[-1] - xs[-2]))) if len(xs) > 1 else None


def budget_means(points: Points) -> np.ndarray:
    """Mean accuracy over the runs at each budget, in increasing budget order."""
    return np.array([points.y[points.x == x].mean() for x in np.unique(points.x)])


def budget_resampler(points: Points, by_questions) -> tuple[str, Callable] | None:
    """How a budget's mean accuracy is redrawn for its interval: over questions (paired, or
    binomial), else over the runs at each budget when every budget has several; else none."""
    if by_questions:
        return by_questions
    if points.budgets < len(points.x) and all((points.x == x).sum() > 1 for x in np.unique(points.x)):
        def runs(rng):
            at = [points.x == x for x in np.unique(points.x)]
            return Points(np.concatenate([points.x[m] for m in at]),
                          np.concatenate([rng.choice(points.y[m], m.sum()) for m in at]), None)
        return "runs resampled within each budget", runs
    return None


def budget_summary(points: Points, by_questions, fcfg, rng) -> tuple[list[dict], Optional[np.ndarray]]:
    """Each budget's mean accuracy with its bootstrap interval, and the draws behind them."""
    plan = budget_resampler(points, by_questions)
    means, draws = budget_means(points), None
    if plan and fcfg.bootstrap_iterations:
        draws = np.array([budget_means(plan[1](rng)) for _ in range(fcfg.bootstrap_iterations)])
    lo, hi = percentiles(draws, fcfg.confidence) if draws is not None else (None, None)
    return [{"tokens": int(round(10 ** x)), "runs": int((points.x == x).sum()),
             "accuracy": float(m),
             "interval": None if lo is None else [float(lo[i]), float(hi[i])],
             "interval_from": plan[0] if draws is not None else None}
            for i, (x, m) in enumerate(zip(np.unique(points.x), means))], draws


def fit_slice(name: str, rows: list[dict], questions: dict, fcfg, seed: int) -> SliceFit:
    rng = np.random.default_rng(seed)
    points = points_of(rows)
    method = choose_method(fcfg.method, points, name)
    answers, why = question_matrix(rows, questions)
    by_questions = questions_resampler(points, answers[1] if answers else None)
    nxt = next_budget(points, fcfg.predict_tokens)
    fits, bands, families = {}, {}, {}
    for fam_name in fcfg.families:
        fam = family(fam_name, fcfg.mixture_terms)
        if points.budgets < fam.min_budgets:
            families[fam_name] = {"skipped": (
                f"{fam_name} needs at least {fam.min_budgets} distinct token budgets "
                f"({len(fam.params)} parameters + 1); this slice has {points.budgets}")}
            continue
        f = fits[fam_name] = fit(fam, points, method, starts(fam, points, fcfg.starts, rng))
        boots = _bootstraps(f, by_questions, fcfg.bootstrap_iterations, rng)
        # Bands and predictions use interval_source, or the runs bootstrap when questions
        # cannot be resampled.
        band = next((b for b in boots if b.kind == fcfg.interval_source), boots[0] if boots else None)
        if band is not None:
            bands[fam_name] = band
        families[fam_name] = _family_summary(f, boots, band, nxt, fcfg, rng)
    add_delta_aic(families)
    by_budget, draws = budget_summary(points, by_questions, fcfg, rng)
    summary = {"runs": len(rows), "budgets": sorted({int(r["synthetic_tokens"]) for r in rows}),
               "method": method, "by_budget": by_budget,
               "bootstrap": {"iterations": fcfg.bootstrap_iterations,
                             "runs": runs_scheme(points),
                             "questions": by_questions[0] if by_questions else
                             f"not available: {why}, and the numbers of questions are unknown"},
               "families": families, "best": best_family(families)}
    source = rows[0].get("input") or ""
    label = name[len(source) + 2:] if name.startswith(f"{source}: ") else name
    return SliceFit(name, points, fits, bands, nxt, summary, source, label, answers, draws)


def _bootstraps(f: Fit, by_questions, iterations: int, rng) -> list[Bootstrap]:
    if not iterations:
        return []
    plans = [("runs", runs_scheme(f.points), runs_resampler(f))]
    if by_questions:
        plans.append(("questions", *by_questions))
    return [bootstrap(f, kind, scheme, resample, iterations, rng)
            for kind, scheme, resample in plans]


def _family_summary(f: Fit, boots: list[Bootstrap], band: Optional[Bootstrap], nxt: int, fcfg,
                    rng) -> dict:
    names = f.family.params
    x_max = float(f.points.x.max())
    return {
        "formula": f.family.formula,
        "params": dict(zip(names, map(float, f.theta))),
        "intervals": {b.kind: b.intervals(names, fcfg.confidence) for b in boots},
        "rmse": f.rmse, "loglik": f.loglik, "aic": f.aic, "bic": f.bic,
        "heldout": heldout(f.family, f.points, f.method, fcfg.starts, rng),
        "prediction": {"tokens": nxt, "accuracy": float(f.predict(math.log10(nxt))),
                       "interval": _interval(band, lambda t: f.family.curve(
                           np.array(math.log10(nxt)), t), fcfg.confidence)},
        "tokens_to_target": {str(target): {
            "tokens": _finite(tokens_to_reach(f.family, f.theta, target, x_max)),
            "interval": _interval(band, lambda t: tokens_to_reach(f.family, t, target, x_max),
                                  fcfg.confidence)} for target in fcfg.targets},
    }


def _interval(band: Optional[Bootstrap], value, confidence: float) -> Optional[list]:
    """A percentile interval of `value(theta)` over the bootstrap fits; an endpoint the curve
    never reaches (an infinite token count) is null."""
    if band is None:
        return None
    values = np.array([float(value(t)) for t in band.thetas])
    lo, hi = percentiles(values, confidence, method="nearest")
    return [_finite(lo), _finite(hi)]


def _finite(value) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def add_delta_aic(families: dict) -> None:
    """Each fitted family's AIC above the slice's lowest."""
    fitted = [v for v in families.values() if "skipped" not in v]
    for v in fitted:
        v["delta_aic"] = v["aic"] - min(w["aic"] for w in fitted)


def best_family(families: dict) -> Optional[dict]:
    """Lowest held-out extrapolation error where the slice has enough budgets for it, else the
    lowest AIC; with the family's prediction for the next budget."""
    fitted = {k: v for k, v in families.items() if "skipped" not in v}
    if not fitted:
        return None
    with_heldout = {k: v for k, v in fitted.items() if "abs_error" in v["heldout"]}
    if with_heldout:
        name = min(with_heldout, key=lambda k: (with_heldout[k]["heldout"]["abs_error"],
                                                with_heldout[k]["aic"]))
        criterion = "heldout_abs_error"
    else:
        name = min(fitted, key=lambda k: fitted[k]["aic"])
        criterion = "aic (too few budgets to hold the largest out)"
    return {"family": name, "criterion": criterion, "prediction": fitted[name]["prediction"]}
