"""Slices compared with one another (slice_by=[method], or any slicing with several curves):

- at each budget two slices share, the difference of their mean accuracies, with a bootstrap
  interval: paired over questions when both answered the same questions (the same resampled
  questions for both), else from each slice's own budget draws, independently;
- the token multiplier: the tokens slice A's fitted curve needs to reach slice B's best
  observed accuracy, against the tokens B used for it (multiplier > 1: A needs fewer);
- decision accuracy, as DataDecide (Magnusson et al. 2025) defines it: the share of pairs of
  slices whose order at a smaller budget agrees with their order at the largest shared budget
  (a tie at either budget counts one half: it decides nothing).
"""
from __future__ import annotations

import math
from itertools import combinations, permutations
from typing import Optional

import numpy as np

from entigraph.analysis.bootstrap import percentiles
from entigraph.analysis.curves import SliceFit
from entigraph.analysis.fit import tokens_to_reach

PAIRED = "questions resampled (paired across slices)"


def compare(fitted: list[SliceFit], fcfg) -> dict:
    """What fit.json says under "comparison"; empty for a single slice."""
    if len(fitted) < 2:
        return {}
    rng = np.random.default_rng(fcfg.seed)
    return {"differences": differences(fitted, fcfg, rng),
            "token_multipliers": multipliers(fitted, fcfg.confidence),
            "decision_accuracy": decision_accuracy(fitted)}


def _means(s: SliceFit) -> dict[int, float]:
    return {b["tokens"]: b["accuracy"] for b in s.summary["by_budget"]}


def _column(s: SliceFit, tokens: int) -> int:
    return [b["tokens"] for b in s.summary["by_budget"]].index(tokens)


def _runs_at(s: SliceFit, tokens: int) -> np.ndarray:
    """The per-question outcomes of the slice's runs at `tokens` (runs x questions)."""
    return s.answers[1][np.isclose(s.points.x, math.log10(tokens))]


def differences(fitted: list[SliceFit], fcfg, rng) -> list[dict]:
    """A - B at every budget both have, for each pair of slices in order."""
    rows = []
    for a, b in combinations(fitted, 2):
        shared = sorted(set(_means(a)) & set(_means(b)))
        for tokens in shared:
            draws, scheme = _difference_draws(a, b, tokens, fcfg.bootstrap_iterations, rng)
            interval = None
            if draws is not None:
                lo, hi = percentiles(draws, fcfg.confidence)
                interval = [float(lo), float(hi)]
            rows.append({"a": a.name, "b": b.name, "tokens": tokens,
                         "difference": _means(a)[tokens] - _means(b)[tokens],
                         "interval": interval, "interval_from": scheme})
    return rows


def _difference_draws(a: SliceFit, b: SliceFit, tokens: int, iterations: int,
                      rng) -> tuple[Optional[np.ndarray], Optional[str]]:
    if not iterations:
        return None, None
    if a.answers and b.answers and a.answers[0] == b.answers[0]:
        ra, rb = _runs_at(a, tokens), _runs_at(b, tokens)
        count = ra.shape[1]
        draws = []
        for _ in range(iterations):
            idx = rng.integers(0, count, count)
            draws.append(ra[:, idx].mean() - rb[:, idx].mean())
        return np.array(draws), PAIRED
    if a.budget_draws is not None and b.budget_draws is not None:
        ia, ib = _column(a, tokens), _column(b, tokens)
        scheme = (f"independent: {a.summary['by_budget'][ia]['interval_from']} "
                  f"(not paired: the slices answered different questions or lack records)")
        return a.budget_draws[:, ia] - b.budget_draws[:, ib], scheme
    return None, "not available: no per-question records, run replicates or question counts"


def multipliers(fitted: list[SliceFit], confidence: float) -> list[dict]:
    """For each ordered pair (A, B) where A has a fitted curve: the tokens A's best family needs
    to reach B's best observed accuracy, and B's tokens there over A's (with the interval from
    A's bootstrap fits; a curve that never gets there needs unbounded tokens: null tokens,
    multiplier 0; one already there at A's smallest budget needs at most that: `at_most`)."""
    rows = []
    for a, b in permutations(fitted, 2):
        best = (a.summary["best"] or {}).get("family")
        if not best:
            continue
        target_tokens, target = max(_means(b).items(), key=lambda kv: (kv[1], -kv[0]))
        f = a.fits[best]
        x_max, smallest = float(a.points.x.max()), float(10 ** a.points.x.min())

        def needs(theta) -> float:
            # Not extrapolated below A's smallest budget: A needs at most that many there.
            return max(tokens_to_reach(f.family, theta, target, x_max), smallest)

        needed = needs(f.theta)
        row = {"a": a.name, "b": b.name, "family": best, "target_accuracy": target,
               "b_tokens": target_tokens, "a_tokens": _finite(needed),
               "at_most": needed == smallest, "multiplier": target_tokens / needed,
               "interval": None}
        if best in a.bands:
            tokens = np.array([needs(t) for t in a.bands[best].thetas])
            lo, hi = percentiles(tokens, confidence, method="nearest")
            row.update(a_tokens_interval=[_finite(lo), _finite(hi)],
                       interval=[target_tokens / hi, target_tokens / lo])
        rows.append(row)
    return rows


def _finite(value: float) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def decision_accuracy(fitted: list[SliceFit]) -> dict:
    """Pairwise order agreement of each smaller shared budget with the largest shared one."""
    means = {s.name: _means(s) for s in fitted}
    counts: dict[int, int] = {}
    for m in means.values():
        for tokens in m:
            counts[tokens] = counts.get(tokens, 0) + 1
    shared = sorted(t for t, n in counts.items() if n > 1)
    if len(shared) < 2:
        return {"target_tokens": shared[-1] if shared else None, "by_budget": [], "overall": None,
                "note": "needs two budgets that two or more slices share"}
    target = shared[-1]
    at_target = [name for name, m in means.items() if target in m]
    by_budget, agreed, pairs = [], 0.0, 0
    for tokens in shared[:-1]:
        score, n = 0.0, 0
        for x, y in combinations([name for name in at_target if tokens in means[name]], 2):
            small = np.sign(means[x][tokens] - means[y][tokens])
            large = np.sign(means[x][target] - means[y][target])
            score += 0.5 if small == 0 or large == 0 else float(small == large)
            n += 1
        if n:
            by_budget.append({"tokens": tokens, "pairs": n, "agreeing": score,
                              "accuracy": score / n})
            agreed, pairs = agreed + score, pairs + n
    return {"target_tokens": target, "by_budget": by_budget,
            "overall": agreed / pairs if pairs else None}
