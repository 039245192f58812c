"""The synthetic corpora of a sweep's runs, made sure of before any run starts.

A sweep's points may train on several corpora: data.corpus_dir follows synthesis.output_dir,
which a grid over synthesis.method, prompt_set or generator.model changes. Each distinct
data.corpus_dir of the points that holds no complete corpus is generated first, with the config
of the first point that trains on it, or refused in one line naming the `entigraph generate`
command that makes it, as sweep.generate_corpora says: free generates what costs nothing (the
raw documents, the offline generator), all any corpus, none nothing. Every refusal comes
before any generation, so a refused sweep has spent nothing.
"""
from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from entigraph.corpus_folder import read_manifest, require_complete
from entigraph.errors import ConfigError

# Overrides that change what `entigraph generate` makes (config groups of these names too).
CORPUS_KEYS = ("experiment", "corpus", "generator", "synthesis", "model", "paths.root",
               "paths.corpora", "paths.cache")
# A point and the overrides that made its config, as a command line would give them.
Point = tuple[DictConfig, Sequence[str]]


def command_line() -> list[str]:
    """The overrides of the running command (none outside a Hydra app, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def with_values(point: DictConfig, overrides: Sequence[str], keys: Iterable[str]) -> Point:
    """`point` with `overrides` and its own values of `keys` (a grid's) after them."""
    return point, [*overrides, *(f"{key}={OmegaConf.select(point, key)}" for key in keys)]


def search_points(cfg: DictConfig, overrides: Sequence[str]) -> list[Point]:
    """A search worker's config (made by `overrides`) with each combination of the space's
    choices for keys that change the corpus (a search over synthesis.method trains on each
    method's corpus)."""
    from optuna.distributions import CategoricalDistribution

    from entigraph.sweeps.grid import with_overrides
    from entigraph.sweeps.space import distribution

    corpus_keys = {key: distribution(key, text) for key, text in cfg.sweep.space.items()
                   if _makes_corpus(key)}
    choices = {key: dist.choices for key, dist in corpus_keys.items()
               if isinstance(dist, CategoricalDistribution)}
    return [with_values(with_overrides(cfg, dict(zip(choices, combo)), "sweep.space"), overrides,
                        choices) for combo in itertools.product(*choices.values())]


def ensure_corpora(points: Iterable[Point]) -> None:
    """Generate each missing corpus of `points` that sweep.generate_corpora allows, after
    refusing (ConfigError) if any other is missing. Dry runs need no corpus."""
    from entigraph.commands import generate

    missing = {}
    for point, overrides in points:
        folder = point.data.corpus_dir
        if not point.trainer.dry_run and folder not in missing and read_manifest(folder) is None:
            missing[folder] = (point, overrides)
    reasons = [(point, _refusal(point, overrides)) for point, overrides in missing.values()]
    refused = [(point, reason) for point, reason in reasons if reason]
    if refused:  # the first in full; the others by method, on the same line
        others = ", ".join(point.synthesis.method for point, _ in refused[1:])
        raise ConfigError(refused[0][1] + (f" (also missing: {others})" if others else ""))
    for folder, (point, _) in missing.items():
        print(f"sweep: generating the missing {point.synthesis.method} corpus {folder} "
              f"(sweep.generate_corpora={point.sweep.generate_corpora})", flush=True)
        generate(point)
        require_complete(folder)


def costs_nothing(point: DictConfig) -> bool:
    """The raw documents call no generator; the offline generator is a local template."""
    return point.synthesis.method == "raw" or point.generator.backend == "offline"


def _refusal(point: DictConfig, overrides: Sequence[str]) -> str | None:
    """Why the sweep may not generate the missing corpus of `point` (None if it may)."""
    policy, method, folder = (point.sweep.generate_corpora, point.synthesis.method,
                              point.data.corpus_dir)
    missing = f"config: no complete {method} corpus at {folder}"
    if Path(folder).resolve() != Path(point.synthesis.output_dir).resolve():
        return (f"{missing}, and data.corpus_dir is not synthesis.output_dir, where `entigraph "
                f"generate` writes; generate it there or fix data.corpus_dir")
    needed = "free" if costs_nothing(point) else "all"
    if policy in ("all", needed):
        return None
    return (f"{missing}; make it with `{generate_command(point, overrides)}` or set "
            f"sweep.generate_corpora={needed} to generate it first"
            + ("" if needed == "free" else " (a paid generator, within synthesis.budget_tokens "
               "and synthesis.budget_dollars)"))


def generate_command(point: DictConfig, overrides: Sequence[str]) -> str:
    """`entigraph generate` with those of `overrides` that change the corpus, each key's value as
    `point` resolved it (so a sweeper's quoting never shows), the last of a key kept."""
    words = {}
    for override in overrides:
        key = override.split("=", 1)[0]
        if _makes_corpus(key.lstrip("+~")):
            words.pop(key, None)
            words[key] = _shown(point, key, override)
    return " ".join(["entigraph generate", *words.values()])


def _makes_corpus(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in CORPUS_KEYS)


def _shown(point: DictConfig, key: str, override: str) -> str:
    """An override as a shell word: a config group's choice as given, a key as key=value."""
    value = OmegaConf.select(point, key.lstrip("+~"), default=DictConfig({}))
    if isinstance(value, DictConfig) or key.startswith("~"):
        return shlex.quote(override)
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    return shlex.quote(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
