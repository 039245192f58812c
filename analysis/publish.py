"""Mirror an analysis to W&B: the figures and the tidy table, into a new analysis run of a
project or into an existing run (resumed by id)."""
from __future__ import annotations

from pathlib import Path

from entigraph.analysis.collect import COLUMNS
from entigraph.tracking import resolve_mode

FIGURES = ("plot", "residuals")


def log_to_wandb(wcfg, output_dir: Path, outputs: dict[str, Path], rows: list[dict],
                 best: dict | None) -> str:
    """Log and finish; returns the W&B run's folder (under output_dir/wandb)."""
    import wandb

    run = wandb.init(project=wcfg.project, entity=wcfg.entity, id=wcfg.run_id,
                     resume="allow" if wcfg.run_id else None, job_type="analysis",
                     dir=str(output_dir), mode=resolve_mode(wcfg.mode),
                     settings=wandb.Settings(console="off", disable_git=True,
                                             x_disable_stats=True, silent=True))
    table = wandb.Table(columns=COLUMNS, data=[[row.get(c) for c in COLUMNS] for row in rows])
    run.log({"analysis/results": table,
             **{f"analysis/{name}": wandb.Image(str(outputs[name])) for name in FIGURES}})
    if best:
        run.summary.update({"analysis/best_family": best["family"],
                            "analysis/next_tokens": best["prediction"]["tokens"],
                            "analysis/next_accuracy": best["prediction"]["accuracy"]})
    run_dir = run.dir
    run.finish()
    return run_dir
