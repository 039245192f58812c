"""A search space written in Hydra's override grammar, as Optuna distributions.

    optim.lr: tag(log, interval(1e-6, 1e-4))     -> FloatDistribution(log=True)
    trainer.epochs: tag(int, interval(1, 4))     -> IntDistribution
    data.synthetic_tokens: choice(1000, 2000)    -> CategoricalDistribution
    seed: range(0, 10, 2)                        -> IntDistribution(step=2)

Parameters are named by their config keys, so a trial's params are config overrides.
"""
from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from entigraph.errors import ConfigError


def distribution(key: str, text: str) -> BaseDistribution:
    """One key's Optuna distribution from its Hydra sweep expression."""
    try:
        sweep = OverridesParser.create().parse_override(f"{key}={text}").value()
    except Exception as err:
        raise ConfigError(f"config: sweep.space.{key}={text!r} is not a Hydra sweep "
                          f"({str(err).splitlines()[0]})") from None
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(sweep.list)
    if isinstance(sweep, RangeSweep):
        return IntDistribution(int(sweep.start), int(sweep.stop) - 1, step=int(sweep.step or 1))
    if isinstance(sweep, IntervalSweep):
        if "int" in sweep.tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log=log)
        return FloatDistribution(sweep.start, sweep.end, log=log)
    raise ConfigError(f"config: sweep.space.{key}={text!r} is not a sweep; use choice(...), "
                      f"range(...) or interval(...), optionally tag(log, ...)")


def search_space(cfg: DictConfig) -> dict[str, BaseDistribution]:
    """The distributions of cfg.sweep.space, each key checked against the config and each end of
    its range validated, so a bad space fails before any trial starts."""
    from entigraph.sweeps.grid import with_overrides
    from entigraph.config import validate

    if not cfg.sweep.space:
        raise ConfigError("config: sweep.space is empty; give config keys and Hydra sweeps, e.g. "
                          "space=lr or '+sweep.space={optim.lr: \"tag(log, interval(1e-5, 1e-3))\"}'")
    space = {key: distribution(key, text) for key, text in cfg.sweep.space.items()}
    for key, dist in space.items():
        ends = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
        for value in ends:
            validate(with_overrides(cfg, {key: value}, "sweep.space"))
    return space


def suggest(trial, space: dict[str, BaseDistribution]) -> dict:
    """The trial's value for every key of the space (Optuna's public suggest API)."""
    params = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return params
