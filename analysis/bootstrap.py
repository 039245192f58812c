"""Bootstrap refits of a curve: resampling runs, or resampling questions.

Over runs: with replicate runs (seeds) at every budget, runs are resampled within each budget,
keeping the design; with one run a budget that would drop budgets, so the residuals of the
fit are resampled over runs instead. Over questions: the same resampled question indices are
applied to every run (the runs answered the same questions, so their errors are paired);
without per-question records, each run's count of correct answers is redrawn as binomial.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from entigraph.analysis.fit import Fit, Points, fit

Resample = Callable[[np.random.Generator], Points]


@dataclass(frozen=True)
class Bootstrap:
    kind: str  # runs | questions
    scheme: str  # how the data were resampled, for fit.json
    thetas: np.ndarray  # (refits, parameters)

    def intervals(self, names: tuple[str, ...], confidence: float) -> dict[str, list[float]]:
        lo, hi = percentiles(self.thetas, confidence)
        return {name: [float(a), float(b)] for name, a, b in zip(names, lo, hi)}


def percentiles(values: np.ndarray, confidence: float, method: str = "linear"):
    """Equal-tailed percentile interval (lower, upper) along the first axis; method "nearest"
    keeps infinite values from turning into NaN by interpolation."""
    tail = 100 * (1 - confidence) / 2
    return (np.percentile(values, tail, axis=0, method=method),
            np.percentile(values, 100 - tail, axis=0, method=method))


def _budget_groups(p: Points) -> list[np.ndarray]:
    return [np.flatnonzero(p.x == x) for x in np.unique(p.x)]


def _replicated(p: Points) -> bool:
    return all(len(g) > 1 for g in _budget_groups(p))


def runs_scheme(p: Points) -> str:
    if _replicated(p):
        return "runs resampled within each budget"
    return "residuals resampled over runs (some budget has a single run)"


def runs_resampler(f: Fit) -> Resample:
    p = f.points
    groups = _budget_groups(p)
    if _replicated(p):
        return lambda rng: p.subset(np.concatenate([rng.choice(g, len(g)) for g in groups]))
    # Fitted residuals are smaller than the errors by about sqrt((N - k) / N) (k parameters
    # were fitted to them); scaling them back keeps few-budget intervals from being too narrow.
    count = len(p.x)
    fitted = f.predict(p.x)
    residuals = f.residuals * np.sqrt(count / max(count - len(f.theta), 1))
    return lambda rng: Points(p.x, np.clip(fitted + rng.choice(residuals, count), 0, 1), p.n)


def questions_resampler(p: Points, correct: Optional[np.ndarray]) -> tuple[str, Resample] | None:
    """`correct`: (runs, questions) booleans over one shared question set, or None."""
    if correct is not None:
        def paired(rng):
            idx = rng.integers(0, correct.shape[1], correct.shape[1])
            return Points(p.x, correct[:, idx].mean(axis=1), p.n)
        return "questions resampled (paired across runs)", paired
    if p.n is None:
        return None

    def binomial(rng):
        return Points(p.x, rng.binomial(p.n.astype(int), p.y) / p.n, p.n)
    return "binomial redraw of each run's correct answers (no per-question records)", binomial


def bootstrap(f: Fit, kind: str, scheme: str, resample: Resample, iterations: int,
              rng: np.random.Generator) -> Bootstrap:
    """Refit `iterations` resampled data sets. Each refit starts at the full-data estimate
    (one start instead of the multi-start), which keeps the bootstrap fast."""
    thetas = []
    for _ in range(iterations):
        points = resample(rng)
        thetas.append(fit(f.family, points, f.method, [f.theta]).theta)
    return Bootstrap(kind, scheme, np.array(thetas).reshape(len(thetas), len(f.theta)))
