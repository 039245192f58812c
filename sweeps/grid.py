"""Expanding a grid of config values into the configs of its runs."""
from __future__ import annotations

import copy
import itertools
import os

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from entigraph.config import validate
from entigraph.errors import ConfigError


def with_overrides(cfg: DictConfig, overrides: dict, source: str = "sweep.grid") -> DictConfig:
    """A copy of `cfg` with dotted keys set; keys the schema lacks are refused (struct mode)."""
    point = copy.deepcopy(cfg)
    for key, value in overrides.items():
        try:
            OmegaConf.update(point, key, value, merge=False)
        except (ConfigKeyError, ConfigAttributeError):
            raise ConfigError(f"config: {source} key {key!r} is not a config key; "
                              f"sweeps can only set existing keys such as optim.lr") from None
    return point


def in_sweep_group(point: DictConfig, sweep: str | None = None) -> DictConfig:
    """`point` with its W&B group the sweep's name (`sweep`, else sweep.name), unless
    tracker.group was chosen, and tagged `sweep:<name>`: a sweep's runs are grouped in W&B
    however they were launched."""
    sweep = sweep or point.sweep.name
    with open_dict(point):
        point.tracker.group = point.tracker.group or sweep
        tag = f"sweep:{sweep}"
        if tag not in point.tracker.tags:
            point.tracker.tags.append(tag)
    return point


def in_agent_sweep(cfg: DictConfig) -> DictConfig:
    """In a run that `wandb agent` started (it sets WANDB_SWEEP_ID), `cfg` grouped and tagged
    by that W&B sweep's id, as grid and search runs are by their sweep's name."""
    sweep_id = os.environ.get("WANDB_SWEEP_ID")
    return in_sweep_group(cfg, sweep_id) if sweep_id else cfg


def grid_points(cfg: DictConfig, grid) -> list[DictConfig]:
    """One validated config per combination of the grid's values, in grid order."""
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ConfigError("config: sweep.grid is empty; give each key a list of values, e.g. "
                          "'sweep.grid={data.synthetic_tokens:[1000,2000]}'")
    keys = list(grid)
    points = [in_sweep_group(with_overrides(cfg, dict(zip(keys, combo))))
              for combo in itertools.product(*(grid[k] for k in keys))]
    for point in points:
        validate(point)
    return points
