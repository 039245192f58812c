"""`entigraph search`: one Optuna worker. Optuna is driven directly (the Hydra Optuna sweeper can
neither prune nor run trials asynchronously, design brief §6); Hydra composes the config and,
under --multirun, launches the workers.

Each trial is a training run in `<sweep.dir>/trials/<number>` whose config is the worker's with
the trial's params (named by config keys) set; its value is the validation QA accuracy, and the
intermediate validation evaluations (eval.every_steps) feed the pruner. With
sweep.optuna.trial=eval a trial instead evaluates `checkpoint` into that folder under its params
(e.g. the open-book settings of space=paper_rag), unpruned. Workers share the study
through its storage and stop at the global cap, sweep.optuna.n_trials.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from entigraph.errors import ConfigError, SweepIncomplete
from entigraph.records import write_json_atomic
from entigraph.sweeps.space import search_space, suggest
from entigraph.sweeps.storage import open_storage, shown

# What the cap counts: trials finished or under way (a stale running trial is failed first).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# A worker whose trials keep failing (a bad value in the space, no disk) stops instead of looping.
MAX_FAILURES_IN_A_ROW = 3


def check_objective(cfg: DictConfig) -> None:
    """The objective must be validation accuracy, and a pruner needs intermediate evaluations."""
    if cfg.sweep.optuna.trial == "eval":
        check_evaluation_objective(cfg)
        return
    if cfg.trainer.dry_run:
        raise ConfigError("config: trainer.dry_run=true costs runs known in advance (a run or a "
                          "grid); a search's trials are not: cost a grid over the space's "
                          "corners with `entigraph train --multirun` instead")
    if cfg.eval.split != "validation" or not cfg.eval.after_training:
        raise ConfigError(f"config: eval.split={cfg.eval.split} (after_training="
                          f"{cfg.eval.after_training}): a search maximises validation accuracy; "
                          f"set eval.split=validation and eval.after_training=true")
    if cfg.sweep.optuna.pruner != "none" and cfg.eval.every_steps == 0:
        raise ConfigError(f"config: sweep.optuna.pruner={cfg.sweep.optuna.pruner} prunes on "
                          f"evaluations during training; set eval.every_steps > 0 or "
                          f"sweep.optuna.pruner=none")


def check_evaluation_objective(cfg: DictConfig) -> None:
    """Trials that score a model: which model, on the validation split, nothing to prune on."""
    spec = cfg.sweep.optuna
    if not cfg.checkpoint:
        raise ConfigError("config: sweep.optuna.trial=eval scores checkpoint in each trial; set "
                          "checkpoint=<model folder>")
    if cfg.eval.split != "validation":
        raise ConfigError(f"config: eval.split={cfg.eval.split}: a search maximises validation "
                          f"accuracy; set eval.split=validation")
    if spec.pruner != "none":
        raise ConfigError(f"config: sweep.optuna.pruner={spec.pruner}, but an evaluation trial "
                          f"has no intermediate results to prune on; set sweep.optuna.pruner=none")


def make_pruner(spec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials,
                                           n_warmup_steps=spec.warmup_steps)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource,
                                              reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def make_sampler(spec, worker: int) -> optuna.samplers.BaseSampler:
    seed = None if spec.seed is None else spec.seed + worker  # workers must not propose alike
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(cfg: DictConfig) -> optuna.Study:
    """The study sweep.name in its storage, created by whichever worker comes first."""
    spec = cfg.sweep.optuna
    return optuna.create_study(study_name=cfg.sweep.name, storage=open_storage(spec.storage, spec),
                               direction="maximize", sampler=make_sampler(spec, cfg.sweep.worker),
                               pruner=make_pruner(spec), load_if_exists=True)


def trial_config(cfg: DictConfig, trial: optuna.Trial, params: dict) -> DictConfig:
    """The run of a trial: the worker's config with the params set, in the folder of the trial
    it retries if any (so a dead worker's run resumes from its checkpoint)."""
    from entigraph.config import validate
    from entigraph.sweeps.grid import in_sweep_group, with_overrides

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    number = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    run_dir = Path(cfg.sweep.dir) / "trials" / f"{trial.number if number is None else number:04d}"
    point = in_sweep_group(with_overrides(cfg, {**params, "command": cfg.sweep.optuna.trial,
                                                "run_dir": str(run_dir)}, "sweep.space"))
    validate(point)
    return point


class PruneOnEval:
    """A trial's on_eval: report each validation accuracy and stop the run when the pruner says
    so. It pickles without its trial, so the processes of a launched run (trainer.launch) reach
    the same trial through the study's storage."""

    def __init__(self, cfg: DictConfig, trial: optuna.Trial) -> None:
        self.study_name, self.trial_id = cfg.sweep.name, trial._trial_id
        self.spec = OmegaConf.to_container(cfg.sweep.optuna, resolve=True)
        self._trial: optuna.Trial | None = trial

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_trial": None}

    def trial(self) -> optuna.Trial:
        if self._trial is None:
            spec = OmegaConf.create(self.spec)
            study = optuna.load_study(study_name=self.study_name, pruner=make_pruner(spec),
                                      storage=open_storage(spec.storage, spec))
            self._trial = optuna.Trial(study, self.trial_id)
        return self._trial

    def __call__(self, step: int, accuracy: float) -> None:
        trial = self.trial()
        trial.report(accuracy, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"step {step}: validation accuracy {accuracy:.3f}")


def objective(cfg: DictConfig, space: dict, started: list[int]):
    """The trial function; it appends each trial's number to `started` (this worker's trials)."""
    from entigraph.commands import eval as evaluate
    from entigraph.sweeps.runs import run_point
    from entigraph.training import remove_checkpoint

    def run_trial(trial: optuna.Trial) -> float:
        started.append(trial.number)
        point = trial_config(cfg, trial, suggest(trial, space))
        trial.set_user_attr("run_dir", point.run_dir)
        try:
            record = evaluate(point) if point.command == "eval" else \
                run_point(point, PruneOnEval(cfg, trial))
        except Exception:  # pruned or failed for good (a retry is a new trial): never resumed
            remove_checkpoint(point.run_dir)
            raise
        if record["status"] == "pruned":  # by its launched processes (trainer.launch)
            raise optuna.TrialPruned(record["error"])
        for key in ("n_questions", "n_scored"):  # the binomial fit of the analysis weighs by them
            trial.set_user_attr(key, record["metrics"].get(key))
        return record["metrics"]["accuracy"]

    return run_trial


def state_of(study: optuna.Study, number: int) -> TrialState:
    return next(t.state for t in study.get_trials(deepcopy=False) if t.number == number)


def counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def run_worker(cfg: DictConfig) -> dict:
    """Run trials until the study holds sweep.optuna.n_trials; write the summary after each."""
    from entigraph.sweeps.corpora import command_line, ensure_corpora, search_points

    check_objective(cfg)
    space = search_space(cfg)  # every key and range checked before the storage is touched
    study = open_study(cfg)  # first: an unreachable storage is refused before any generation
    if cfg.sweep.optuna.trial == "train":
        ensure_corpora(search_points(cfg, command_line()))
    cap, worker, failures, started = cfg.sweep.optuna.n_trials, cfg.sweep.worker, 0, []
    taken_over: set[int] = set()  # this worker's trials another worker failed and retries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while failures < MAX_FAILURES_IN_A_ROW:
            optuna.storages.fail_stale_trials(study)  # before counting: a dead worker's trial
            if counted(study) >= cap:
                break
            try:
                study.optimize(objective(cfg, space, started), n_trials=1, catch=(Exception,))
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                # Optuna cannot tell a trial another worker has already failed as stale (this
                # worker's heartbeat came late, e.g. on an overloaded machine): its retry runs it.
                if state_of(study, started[-1]) != TrialState.FAIL:
                    raise
                print(f"[search {cfg.sweep.name} worker {worker}] trial {started[-1]} was failed "
                      f"by another worker (no heartbeat within grace_s) and is retried", flush=True)
                taken_over.add(started[-1])
                continue
            failures = failures + 1 if state_of(study, started[-1]) == TrialState.FAIL else 0
            summary = write_summary(study, cfg)
            print(f"[search {cfg.sweep.name} worker {worker}] {summary['finished']}/{cap} trials "
                  f"finished; best validation accuracy {summary['best_value']}", flush=True)
    if failures:
        raise ConfigError(f"search {cfg.sweep.name}: {failures} trials in a row failed; see "
                          f"the error in their record.json under {Path(cfg.sweep.dir) / 'trials'}")
    summary = write_summary(study, cfg)
    failed = [n for n in started if n not in taken_over and state_of(study, n) == TrialState.FAIL]
    if failed:  # the study went on past them; the exit code says this worker's share is not whole
        raise SweepIncomplete(len(failed), f"this worker's {len(started)} trials",
                              f"its record.json under {Path(cfg.sweep.dir) / 'trials'}",
                              "the study went on with new trials in their place")
    return {"status": "completed", **summary}


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict:
    return {"number": trial.number, "value": trial.value, "params": trial.params,
            "run_dir": trial.user_attrs.get("run_dir"), "state": trial.state.name.lower()}


def write_summary(study: optuna.Study, cfg: DictConfig) -> dict:
    """best_trials.json (the top sweep.optuna.top_k) and summary.json in the sweep folder."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                      key=lambda t: t.value, reverse=True)
    best = [_trial_row(t) for t in complete[:cfg.sweep.optuna.top_k]]
    states = [t.state.name.lower() for t in trials]
    summary = {
        "study": study.study_name, "storage": shown(cfg.sweep.optuna.storage),
        "objective": "maximise validation QA accuracy (metrics.accuracy, eval.split=validation)",
        "space": dict(cfg.sweep.space), "n_trials_cap": cfg.sweep.optuna.n_trials,
        "trials": {state: states.count(state) for state in sorted(set(states))},
        "finished": sum(s in ("complete", "pruned") for s in states),
        "best_value": best[0]["value"] if best else None, "best": best[0] if best else None,
    }
    sweep_dir = Path(cfg.sweep.dir)
    write_json_atomic(sweep_dir / "best_trials.json", best)
    write_json_atomic(sweep_dir / "summary.json", summary)
    return summary
