"""Where results come from: `input=` names run folders, a CSV table, `wandb:<entity>/<project>`,
`optuna:<storage>` or `paper` (the paper's published points), or a list of these; every source
gives the same tidy rows (collect.COLUMNS), their `input` column naming the source."""
from __future__ import annotations

import re
from pathlib import Path

from entigraph.analysis.collect import (
    Results, add_run, check, config_row, read_runs, read_table, select)
from entigraph.analysis.curves import must_agree, slice_key, sliced_columns
from entigraph.analysis.paper import PAPER, paper_results
from entigraph.errors import ConfigError, EntigraphError
from entigraph.records import RECORD

WANDB, OPTUNA = "wandb:", "optuna:"


def inputs(value) -> list[str]:
    """`input` as a list of sources: one source, or a list of them."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def input_label(value) -> str:
    """`input` as a user would type it, for messages and fit.json."""
    return value if isinstance(value, str) else "[" + ",".join(inputs(value)) + "]"


def protocols(value) -> list:
    """`protocol` as a list: [None] (each run's headline), one protocol, or several."""
    return [value] if value is None or isinstance(value, str) else [str(p) for p in value]


def sliced_protocols(cfg) -> tuple[str, ...]:
    """The protocols sliced apart: those of `protocol` when it lists several, else none."""
    wanted = protocols(cfg.protocol)
    return tuple(wanted) if len(wanted) > 1 else ()


def not_evaluated(source: str, protocol: str) -> ConfigError:
    return ConfigError(f"input={source}: protocol={protocol} found nothing (no completed "
                       f"training run evaluated by {protocol}); add it with `entigraph eval "
                       f"run=<run folder> eval.protocols=[{protocol}]`")


def load(cfg) -> Results:
    """The rows of every source of `cfg.input`, narrowed to `cfg.where`. Each source's rows are
    checked on their own (and later sliced apart): sources may measure different things, as
    the paper's curves and a user's runs do."""
    combined = Results([])
    wanted, split = protocols(cfg.protocol), sliced_protocols(cfg)
    for source in inputs(cfg.input):
        results = select(read(source, cfg), dict(cfg.where))
        for row in results.rows:
            row["input"] = row.get("input") or source  # a cached table keeps its rows' inputs
        labels = {row["input"] for row in results.rows}
        for label in sorted(labels):
            check([r for r in results.rows if r["input"] == label],
                  source if len(labels) == 1 else label, slice_key(cfg.slice_by, split),
                  must_agree(cfg.slice_by, split), sliced_columns(cfg.slice_by, split))
        if not labels and len(wanted) == 1 and wanted[0]:
            raise not_evaluated(source, wanted[0])
        if not labels:
            check([], source)
        twice = {r["run"] for r in combined.rows} & {r["run"] for r in results.rows}
        if twice:
            raise EntigraphError(f"input={input_label(cfg.input)}: run {sorted(twice)[0]} comes "
                                 f"from two sources; list each source once")
        combined.rows += results.rows
        combined.questions.update(results.questions)
    return combined


def read(source: str, cfg) -> Results:
    """The rows of one source; runs give their accuracy by cfg.protocol (tables their own)."""
    if source == PAPER:
        return paper_results()
    if source.endswith(".csv") and not source.startswith((WANDB, OPTUNA)):
        if not Path(source).exists():
            raise EntigraphError(f"input={source}: no such file")
        return read_table(Path(source))
    wanted = protocols(cfg.protocol)
    if len(wanted) == 1:
        return read_by(source, cfg, wanted[0])
    return by_protocols(source, {p: read_by(source, cfg, p) for p in wanted})


def read_by(source: str, cfg, protocol: str | None) -> Results:
    """The runs of one source (W&B, Optuna or run folders) with their accuracy by `protocol`."""
    if source.startswith(WANDB):
        return wandb_results(source[len(WANDB):], cfg.wandb.group, list(cfg.wandb.tags),
                             protocol)
    if source.startswith(OPTUNA):
        return optuna_results(source[len(OPTUNA):], cfg.study, protocol)
    return read_runs(source, protocol)


def by_protocols(source: str, parts: dict[str, Results]) -> Results:
    """A row per run and protocol (run `<run>:<protocol>`, the key of its questions too). A run
    without a protocol's result is left out of that protocol's slices, in one line per
    protocol; a protocol no run has is refused."""
    runs = {r["run"] for part in parts.values() for r in part.rows}
    combined = Results([])
    for protocol, part in parts.items():
        if runs and not part.rows:
            raise not_evaluated(source, protocol)
        missing = sorted(runs - {r["run"] for r in part.rows})
        if missing:
            print(f"input={source}: {len(missing)} run(s) without a {protocol} result left out of "
                  f"the protocol={protocol} slices ({', '.join(missing[:3])}"
                  f"{', ...' if len(missing) > 3 else ''}); add it with `entigraph eval "
                  f"run=<run folder> eval.protocols=[{protocol}]`")
        combined.rows += [{**r, "run": f"{r['run']}:{protocol}"} for r in part.rows]
        combined.questions.update({f"{run}:{protocol}": answers
                                   for run, answers in part.questions.items()})
    return combined


def wandb_row(run_path: str, job_type: str, config: dict, summary: dict,
              protocol: str | None = None) -> dict | None:
    """The row of one W&B training run (its config is our resolved config; its summary holds
    the record's metrics and `derived/<name>` quantities) by `protocol` (None: its headline
    one); None for other runs and runs not evaluated by it."""
    if job_type != "train":
        return None
    derived = {k[len("derived/"):]: v for k, v in summary.items() if k.startswith("derived/")}
    return config_row(run_path, config, summary, derived, "wandb", protocol)


def wandb_results(path: str, group: str | None, tags: list[str],
                  protocol: str | None = None) -> Results:
    """Finished runs of a W&B project (`entity/project`) through the public API, optionally
    only a group's or those with any of `tags`. Needs a reachable W&B server."""
    import wandb

    filters: dict = {"state": "finished"}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$in": tags}
    try:
        runs = list(wandb.Api().runs(path, filters=filters))
    except Exception as err:  # no network, no key, no such project: all the user's to fix
        raise EntigraphError(f"input=wandb:{path}: W&B could not list runs ({err}); analyse the "
                             f"run folders or a cached results.csv instead") from err
    rows = [row for run in runs if (row := wandb_row("/".join(run.path), run.job_type,
                                                     dict(run.config), dict(run.summary),
                                                     protocol))]
    return Results(rows)


def optuna_storage(url: str):
    """An RDB URL (sqlite:///..., postgresql://...) as is; anything else is a journal file."""
    if re.match(r"^[a-z][a-z0-9+]*://", url):
        return url
    import optuna

    if not Path(url).exists():
        raise EntigraphError(f"input=optuna:{url}: no such journal file (or give an RDB URL "
                             f"such as sqlite:///study.db)")
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


def optuna_results(url: str, study_name: str | None, protocol: str | None = None) -> Results:
    """Completed trials of a study by `protocol` (None: each run's headline one): from the
    trial's run folder (user attr `run_dir`) when it exists, else from its params (named by
    config keys) and value (its run's headline accuracy, counted as mc's: a trial keeps no
    eval config)."""
    import optuna

    storage = optuna_storage(url)
    names = optuna.get_all_study_names(storage)
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name not in names:
        raise EntigraphError(f"input=optuna:{url}: set study=<name>; studies there: "
                             f"{', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    results = Results([])
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir and (Path(run_dir) / RECORD).exists():
            add_run(results, Path(run_dir), protocol)
        elif row := trial_row(f"{study_name}#{trial.number}", trial.params, trial.value,
                              trial.user_attrs, protocol):
            results.rows.append(row)
    return results


def trial_row(run: str, params: dict, value: float, attrs: dict,
              protocol: str | None = None) -> dict | None:
    """A row from a trial's params (config keys such as data.synthetic_tokens) and value; None
    when `protocol` is not the one its value measures."""
    config: dict = {}
    for key, v in params.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    metrics = {"accuracy": value, "n_questions": attrs.get("n_questions"),
               "n_scored": attrs.get("n_scored")}
    derived = {"synthetic_tokens_selected": params.get("data.synthetic_tokens")}
    return config_row(run, config, metrics, derived, "optuna", protocol)

