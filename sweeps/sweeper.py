"""The Hydra sweeper behind `entigraph <command> --multirun`: Hydra's basic sweeper (and whichever
launcher `launcher=` picks), plus what a sweep of training runs needs:

- `sweep.grid` (set by a preset such as `grid=paper_budgets`) adds to the swept overrides;
- every job's config is composed and validated before any job starts, so a bad value is one
  line and exit code 2, not a failure half-way through;
- so is every corpus the jobs train on: a missing one is generated first or refused, as
  sweep.generate_corpora says (sweeps/corpora.py);
- train jobs get run folders inside the sweep folder (`<sweep.dir>/<run_name>`);
- once all jobs ended, `<sweep.dir>/jobs.json` lists each job's overrides and outcome.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf, open_dict

from entigraph.errors import ConfigError, EntigraphError, SweepIncomplete
from entigraph.records import write_json_atomic

# A train job's run folder lies in the sweep folder, so the sweep folder holds every run.
RUN_DIR_IN_SWEEP = "run_dir=${sweep.dir}/${run_name}"


def _hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar (strings quoted, so 1e-3 stays a float)."""
    return repr(value) if isinstance(value, str) else str(value)


def grid_overrides(grid: dict) -> list[str]:
    """`sweep.grid` as sweep overrides, e.g. {optim.lr: [1e-4, 1e-3]} -> ['optim.lr=1e-4,1e-3']."""
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"config: sweep.grid.{key} is empty; give it a list of values")
    return [f"{key}={','.join(map(_hydra_value, values))}" for key, values in grid.items()]


class EntigraphSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.task_function = task_function  # for a launcher of our own (_cost_here)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            extra = grid_overrides(OmegaConf.to_container(self.config.sweep.grid))
        except ConfigError as err:
            self._refuse(err)
        if self.config.command == "train":  # first, so a user's own run_dir= wins
            extra.insert(0, RUN_DIR_IN_SWEEP)
        returns = super().sweep([*extra, *arguments])
        self._summarise([job for batch in returns for job in batch])
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose and validate every job's config before the launcher starts any; then make
        sure of the corpora the jobs train on (sweeps/corpora.py), here, once for all jobs."""
        from entigraph.config import validate

        if not batch:
            self._refuse("the sweep has no jobs; give each swept key at least one value")
        jobs = []
        try:
            for overrides in batch:
                cfg = self.hydra_context.config_loader.load_sweep_config(
                    master_config=self.config, sweep_overrides=list(overrides))
                with open_dict(cfg):
                    del cfg["hydra"]
                validate(cfg)
                if cfg.command == "search":  # its objective too (e.g. no dry run of a search)
                    from entigraph.sweeps.optuna_search import check_objective

                    check_objective(cfg)
                jobs.append((cfg, list(overrides)))
        except Exception as err:  # composition (unknown key, bad grammar) or validation
            self._refuse(f"{' '.join(overrides)}: {err}".splitlines()[0])
        self._ensure_corpora(jobs)
        if all(cfg.command == "train" and cfg.trainer.dry_run for cfg, _ in jobs):
            self._cost_here(len(jobs))

    def _cost_here(self, n_jobs: int) -> None:
        """A dry run only prints a plan, so its jobs run here, one after another, whatever
        `launcher=` says: nothing is submitted to SLURM and no worker process is started (the
        launcher's settings, e.g. slurm's 8 processes a job, are still in the jobs' configs)."""
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        if isinstance(self.launcher, BasicLauncher):
            return
        launcher = self.config.hydra.runtime.choices.get("launcher")
        print(f"dry run: costing the {n_jobs} jobs here; launcher={launcher} submits and starts "
              f"nothing")
        self.launcher = BasicLauncher()
        self.launcher.setup(hydra_context=self.hydra_context, task_function=self.task_function,
                            config=self.config)

    def _ensure_corpora(self, jobs: list) -> None:
        from entigraph.sweeps.corpora import ensure_corpora, search_points

        def points(cfg, overrides: list) -> list:
            """A train job trains on its corpus, a search worker on each one its space names."""
            if cfg.command == "search":
                return search_points(cfg, overrides)
            return [(cfg, overrides)] if cfg.command == "train" else []

        try:
            ensure_corpora(point for cfg, overrides in jobs for point in points(cfg, overrides))
        except EntigraphError as err:
            self._refuse(err)

    def _refuse(self, err: Any) -> None:
        print(f"entigraph {self.config.command}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code if isinstance(err, EntigraphError) else 2)

    def _summarise(self, jobs: list) -> None:
        from entigraph.dry_run import total as dry_run_total

        rows = [{"overrides": [o for o in job.overrides if o != RUN_DIR_IN_SWEEP],
                 **_summary_of(job.return_value)} for job in jobs]
        path = Path(self.config.sweep.dir) / "jobs.json"
        write_json_atomic(path, {"sweep": self.config.sweep.name, "jobs": rows})
        counts = Counter(row["status"] for row in rows)
        failed = [row["run_dir"] or " ".join(row["overrides"])
                  for row in rows if row["status"] == "failed"]
        print(f"sweep {self.config.sweep.name}: {len(rows)} jobs, "
              + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
              + f" ({sum(row['skipped'] for row in rows)} skipped as already completed)"
              + (f"; failed: {'; '.join(failed)}" if failed else "") + f"; summary: {path}")
        if dry := dry_run_total([job.return_value for job in jobs]):
            print(dry)
        if failed:  # every other job has run: now the exit code says the sweep is not whole
            self._refuse(SweepIncomplete(len(failed), f"{len(rows)} jobs",
                                         f"its record and in {path}",
                                         "rerun the same command to retry them"))


def _summary_of(result: Any) -> dict:
    """The few fields of a job's returned record worth listing in jobs.json."""
    if not isinstance(result, dict):
        return {"status": "unknown"}
    return {"status": result.get("status", "unknown"), "run_dir": result.get("run_dir"),
            "skipped": bool(result.get("skipped")), "error": result.get("error"),
            "accuracy": (result.get("metrics") or {}).get("accuracy")}


def register_sweeper() -> None:
    """Hydra instantiates only plugin classes it knows; ours is not in a hydra_plugins package."""
    Plugins.instance().register(EntigraphSweeper)
