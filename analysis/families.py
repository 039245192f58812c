"""Curve families of accuracy against synthetic tokens (design brief §4).

Every family is a function of x = log10(tokens): budgets span orders of magnitude, and working
in decades keeps the fitted parameters on comparable scales. Parameters whose natural value
spans decades (a time constant, a midpoint) are fitted and reported as log10 of tokens, which
their names say.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Family:
    name: str
    params: tuple[str, ...]
    curve: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, theta) -> accuracy
    # (x of the data) -> (lower, upper) bounds; data-dependent for location parameters.
    bounds: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    # (x, y) -> a starting point read off the data: the first of the multi-start fits.
    guess: Callable[[np.ndarray, np.ndarray], np.ndarray]
    formula: str

    @property
    def min_budgets(self) -> int:
        """Distinct budgets a fit needs: one more than the parameters, so residuals are left
        and the fit is not an exact interpolation (an AIC of -inf)."""
        return len(self.params) + 1


def _loglinear(x, t):
    return t[0] + t[1] * x


def _power_law(x, t):
    # 1 - acc = (1 - a) + b * n^-gamma: the error above the plateau falls as a power law.
    return t[0] - 10.0 ** (t[1] - t[2] * x)


def _logistic(x, t):
    lo, hi, slope, mid = t
    return lo + (hi - lo) / (1.0 + np.exp(-slope * (x - mid)))


def _mixture_exp(x, t):
    # acc = a - sum_k b_k r_k^n with r_k = exp(-1 / tau_k): r_k^n = exp(-n / tau_k).
    k = (len(t) - 1) // 2
    b, log_tau = t[1:1 + k], t[1 + k:]
    n = 10.0 ** np.asarray(x, dtype=float)[..., None]
    return t[0] - np.sum(b * np.exp(-n / 10.0 ** log_tau), axis=-1)


def _span(x: np.ndarray, margin: float) -> tuple[float, float]:
    return float(np.min(x)) - margin, float(np.max(x)) + margin


def _plateau(y: np.ndarray) -> float:
    return min(float(np.max(y)) + 0.05, 1.0)


def _power_law_guess(x, y):
    a = _plateau(y)
    gamma = 0.5
    return np.array([a, np.log10(max(a - float(np.min(y)), 1e-3)) + gamma * float(np.min(x)), gamma])


def mixture_exp(terms: int) -> Family:
    def bounds(x):
        lo_tau, hi_tau = _span(x, 2.0)
        lo = np.r_[0.0, np.zeros(terms), np.full(terms, lo_tau)]
        hi = np.r_[1.0, np.ones(terms), np.full(terms, hi_tau)]
        return lo, hi

    def guess(x, y):
        a = _plateau(y)
        b = max(a - float(np.min(y)), 1e-3) / terms
        return np.r_[a, np.full(terms, b), np.linspace(np.min(x), np.max(x), terms)]

    names = ("a", *(f"b{i}" for i in range(1, terms + 1)),
             *(f"log10_tau{i}" for i in range(1, terms + 1)))
    return Family("mixture_exp", names, _mixture_exp, bounds, guess,
                  "acc = a - sum_k b_k * r_k^n, r_k = exp(-1/tau_k)")


FAMILIES: dict[str, Callable[[int], Family]] = {
    "loglinear": lambda _: Family(
        "loglinear", ("alpha", "beta"), _loglinear,
        lambda x: (np.full(2, -np.inf), np.full(2, np.inf)),
        lambda x, y: np.polyfit(x, y, 1)[::-1],
        "acc = alpha + beta * log10(n)"),
    "mixture_exp": mixture_exp,
    "power_law": lambda _: Family(
        "power_law", ("a", "log10_b", "gamma"), _power_law,
        lambda x: (np.array([0.0, -10.0, 0.0]), np.array([1.0, 20.0, 3.0])),
        _power_law_guess,
        "1 - acc = (1 - a) + b * n^-gamma"),
    "logistic": lambda _: Family(
        "logistic", ("lo", "hi", "slope", "log10_mid"), _logistic,
        lambda x: (np.array([0.0, 0.0, 0.0, _span(x, 3.0)[0]]),
                   np.array([1.0, 1.0, 10.0, _span(x, 3.0)[1]])),
        lambda x, y: np.array([np.min(y), np.max(y), 1.0, np.mean(x)]),
        "acc = lo + (hi - lo) / (1 + exp(-slope * (log10(n) - log10_mid)))"),
}


def family(name: str, mixture_terms: int = 3) -> Family:
    return FAMILIES[name](mixture_terms)


def canonical(fam: Family, theta: np.ndarray) -> np.ndarray:
    """One representative of equivalent parameter vectors: the mixture's terms are
    interchangeable, so they are ordered by time constant (intervals then refer to the same
    term in every bootstrap fit)."""
    if fam.name != "mixture_exp":
        return theta
    k = (len(theta) - 1) // 2
    order = np.argsort(theta[1 + k:])
    return np.r_[theta[0], theta[1:1 + k][order], theta[1 + k:][order]]
