"""Mirror an analysis to W&B: the figures (the comparison figure among them), the tidy table,
each slice's accuracy at each budget as a native W&B line plot (a line per slice, e.g. per
method), and the comparison; into a new analysis run of a project (in a group, e.g. the
sweep's) or into an existing run (resumed by id)."""
from __future__ import annotations

from pathlib import Path

from entigraph.analysis.collect import COLUMNS
from entigraph.analysis.curves import SliceFit
from entigraph.tracking import resolve_mode

FIGURES = ("plot", "residuals")
CURVE_COLUMNS = ["slice", "synthetic_tokens", "accuracy", "low", "high", "runs"]
DIFFERENCE_COLUMNS = ["a", "b", "tokens", "difference", "low", "high", "interval_from"]


def curve_rows(fitted: list[SliceFit]) -> list[list]:
    """A row per (slice, budget): its mean accuracy and interval."""
    return [[s.name, b["tokens"], b["accuracy"], *(b["interval"] or [None, None]), b["runs"]]
            for s in fitted for b in s.summary["by_budget"]]


def log_to_wandb(wcfg, output_dir: Path, outputs: dict[str, Path], rows: list[dict],
                 fitted: list[SliceFit], document: dict) -> str:
    """Log and finish; returns the W&B run's folder (under output_dir/wandb)."""
    import wandb

    run = wandb.init(project=wcfg.project, entity=wcfg.entity, id=wcfg.run_id,
                     resume="allow" if wcfg.run_id else None, job_type="analysis",
                     group=wcfg.group, dir=str(output_dir), mode=resolve_mode(wcfg.mode),
                     settings=wandb.Settings(console="off", disable_git=True,
                                             x_disable_stats=True, silent=True))
    table = wandb.Table(columns=COLUMNS, data=[[row.get(c) for c in COLUMNS] for row in rows])
    curves = wandb.Table(columns=CURVE_COLUMNS, data=curve_rows(fitted))
    logged = {"analysis/results": table, "analysis/curves": curves,
              "analysis/accuracy_vs_tokens": wandb.plot.line(
                  curves, "synthetic_tokens", "accuracy", stroke="slice",
                  title="QA accuracy against synthetic tokens"),
              **{f"analysis/{name}": wandb.Image(str(outputs[name])) for name in FIGURES}}
    comparison = document["comparison"]
    if comparison:
        logged["analysis/differences"] = wandb.Table(columns=DIFFERENCE_COLUMNS, data=[
            [d["a"], d["b"], d["tokens"], d["difference"], *(d["interval"] or [None, None]),
             d["interval_from"]] for d in comparison["differences"]])
        run.summary["analysis/decision_accuracy"] = comparison["decision_accuracy"]["overall"]
    run.log(logged)
    best = document["best"]
    if best:
        run.summary.update({"analysis/best_family": best["family"],
                            "analysis/next_tokens": best["prediction"]["tokens"],
                            "analysis/next_accuracy": best["prediction"]["accuracy"]})
    run_dir = run.dir
    run.finish()
    return run_dir
