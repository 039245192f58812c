"""Fitting one curve family to (tokens, accuracy) points: least squares or binomial likelihood,
multi-start within bounds, information criteria, held-out extrapolation, tokens to a target."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import brentq, least_squares
from scipy.special import xlogy
from scipy.stats import binom

from entigraph.analysis.families import Family, canonical

EPS = 1e-9  # keeps predicted probabilities inside (0, 1) for the binomial likelihood
SEARCH_DECADES = 6.0  # tokens to a target: searched up to 10^6 times the largest budget


@dataclass(frozen=True)
class Points:
    """One point per run: x = log10(synthetic tokens), accuracy, questions scored (or None)."""
    x: np.ndarray
    y: np.ndarray
    n: Optional[np.ndarray]

    @property
    def budgets(self) -> int:
        return len(np.unique(self.x))

    def subset(self, mask: np.ndarray) -> "Points":
        return Points(self.x[mask], self.y[mask], None if self.n is None else self.n[mask])


@dataclass(frozen=True)
class Fit:
    family: Family
    method: str  # least_squares | binomial
    theta: np.ndarray
    points: Points

    def predict(self, x) -> np.ndarray:
        return self.family.curve(np.asarray(x, dtype=float), self.theta)

    @property
    def residuals(self) -> np.ndarray:
        return self.points.y - self.predict(self.points.x)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(self.residuals ** 2)))

    @property
    def loglik(self) -> float:
        if self.method == "binomial":
            p = np.clip(self.predict(self.points.x), EPS, 1 - EPS)
            k = np.round(self.points.y * self.points.n)
            return float(np.sum(binom.logpmf(k, self.points.n, p)))
        # Gaussian errors with the variance at its maximum-likelihood value RSS / N.
        count = len(self.points.y)
        rss = max(float(np.sum(self.residuals ** 2)), 1e-300)
        return -0.5 * count * (np.log(2 * np.pi * rss / count) + 1)

    @property
    def n_params(self) -> int:
        # Least squares also estimates the error variance.
        return len(self.theta) + (self.method == "least_squares")

    @property
    def aic(self) -> float:
        return 2 * self.n_params - 2 * self.loglik

    @property
    def bic(self) -> float:
        return self.n_params * np.log(len(self.points.y)) - 2 * self.loglik


def _residuals(fam: Family, points: Points, method: str):
    """Residuals whose sum of squares least_squares minimises: plain errors, or signed binomial
    deviance residuals (their squares sum to the deviance, so the minimum is the likelihood's)."""
    if method == "least_squares":
        return lambda t: fam.curve(points.x, t) - points.y
    k, n = points.y * points.n, points.n

    def deviance(t):
        p = np.clip(fam.curve(points.x, t), EPS, 1 - EPS)
        dev = 2 * (xlogy(k, k / (n * p)) + xlogy(n - k, (n - k) / (n * (1 - p))))
        return np.sign(p - points.y) * np.sqrt(np.maximum(dev, 0.0))

    return deviance


def starts(fam: Family, points: Points, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The data's guess, then random points inside the bounds (around the guess where a bound
    is infinite)."""
    lo, hi = fam.bounds(points.x)
    guess = np.clip(fam.guess(points.x, points.y), lo, hi)
    out = [guess]
    finite = np.isfinite(lo) & np.isfinite(hi)
    for _ in range(count - 1):
        around = guess + rng.normal(size=guess.shape) * (np.abs(guess) + 1)
        out.append(np.where(finite, rng.uniform(np.where(finite, lo, 0), np.where(finite, hi, 1)),
                            around))
    return out


def fit(fam: Family, points: Points, method: str, x0s: list[np.ndarray]) -> Fit:
    """The best of the fits started at each of `x0s` (the lowest cost)."""
    lo, hi = fam.bounds(points.x)
    resid = _residuals(fam, points, method)
    best = min((least_squares(resid, np.clip(x0, lo, hi), bounds=(lo, hi), x_scale="jac")
                for x0 in x0s), key=lambda r: r.cost)
    return Fit(fam, method, canonical(fam, best.x), points)


def heldout(fam: Family, points: Points, method: str, x0s_count: int,
            rng: np.random.Generator) -> dict:
    """Fit on every budget but the largest, predict the largest: the extrapolation error."""
    largest = points.x == points.x.max()
    train = points.subset(~largest)
    need = fam.min_budgets + 1
    if train.budgets < fam.min_budgets:
        return {"skipped": f"held-out extrapolation needs at least {need} distinct token budgets "
                           f"({fam.min_budgets} to fit, 1 held out); this slice has {points.budgets}"}
    f = fit(fam, train, method, starts(fam, train, x0s_count, rng))
    predicted = float(f.predict(points.x.max()))
    observed = float(points.y[largest].mean())
    return {"tokens": int(round(10 ** points.x.max())), "observed": observed,
            "predicted": predicted, "error": predicted - observed,
            "abs_error": abs(predicted - observed)}


def tokens_to_reach(fam: Family, theta: np.ndarray, target: float, x_max: float) -> float:
    """Tokens at which the curve first reaches `target` (searched from 1 token to
    SEARCH_DECADES beyond the largest budget); inf when it does not get there."""
    grid = np.linspace(0.0, x_max + SEARCH_DECADES, 600)
    gap = fam.curve(grid, theta) - target
    above = np.flatnonzero(gap >= 0)
    if not len(above):
        return float("inf")
    i = above[0]
    if i == 0:
        return 1.0
    root = brentq(lambda x: float(fam.curve(np.array(x), theta) - target), grid[i - 1], grid[i])
    return float(10 ** root)
