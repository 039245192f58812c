"""`entigraph analyze`: the tidy table, the curve fits (fit.json, a Markdown and a CSV table)
and the figures, from any source; optionally mirrored to W&B."""
from __future__ import annotations

import json
from pathlib import Path

from entigraph.analysis.collect import Results, csv_text, write_tables
from entigraph.analysis.curves import SliceFit, fit_slice, slices
from entigraph.analysis.paper import reference_lines
from entigraph.analysis.plots import plot_curves, plot_residuals
from entigraph.analysis.sources import input_label, inputs, load
from entigraph.errors import EntigraphError
from entigraph.records import write_atomic, write_json_atomic

SUMMARY_COLUMNS = ["slice", "family", "status", "rmse", "aic", "bic", "delta_aic",
                   "heldout_tokens", "heldout_predicted", "heldout_observed", "heldout_error",
                   "next_tokens", "next_accuracy", "next_low", "next_high", "params"]


def fit_all(results: Results, cfg) -> list[SliceFit]:
    """Every slice fitted; refused when no family fits any slice (too few budgets)."""
    parts = slices(results.rows, cfg.slice_by)
    fitted = [fit_slice(name, rows, results.questions, cfg.fit, cfg.fit.seed)
              for name, rows in parts.items()]
    if not any(s.fits for s in fitted):
        budgets = max(s.points.budgets for s in fitted)
        needs = "; ".join(f"{name}: {v['skipped']}" for name, v in
                          fitted[0].summary["families"].items())
        raise EntigraphError(f"input={input_label(cfg.input)}: too few token budgets to fit a "
                             f"curve (at most {budgets} in a slice). {needs}")
    return fitted


def headline(fitted: list[SliceFit]) -> SliceFit:
    """The slice with the most distinct budgets (then the most runs, then by name)."""
    return max(fitted, key=lambda s: (s.points.budgets, len(s.points.x), s.name))


def fit_document(fitted: list[SliceFit], main: SliceFit, references: dict[str, float],
                 cfg) -> dict:
    return {
        "input": cfg.input if isinstance(cfg.input, str) else inputs(cfg.input),
        "slice_by": cfg.slice_by, "confidence": cfg.fit.confidence,
        "interval_source": cfg.fit.interval_source, "headline_slice": main.name,
        "families": main.summary["families"], "best": main.summary["best"],
        "slices": {s.name: s.summary for s in fitted}, "references": references,
    }


def summary_rows(fitted: list[SliceFit]) -> list[dict]:
    """One row per (slice, family): the Markdown and CSV tables."""
    rows = []
    for s in fitted:
        best = (s.summary["best"] or {}).get("family")
        for name, v in s.summary["families"].items():
            if "skipped" in v:
                rows.append({"slice": s.name, "family": name, "status": "skipped: " + v["skipped"]})
                continue
            held, pred = v["heldout"], v["prediction"]
            low, high = pred["interval"] or [None, None]
            rows.append({
                "slice": s.name, "family": name, "status": "best" if name == best else "fitted",
                "rmse": v["rmse"], "aic": v["aic"], "bic": v["bic"], "delta_aic": v["delta_aic"],
                "heldout_tokens": held.get("tokens"), "heldout_predicted": held.get("predicted"),
                "heldout_observed": held.get("observed"), "heldout_error": held.get("error"),
                "next_tokens": pred["tokens"], "next_accuracy": pred["accuracy"],
                "next_low": low, "next_high": high,
                "params": json.dumps({k: round(p, 6) for k, p in v["params"].items()}),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["slice", "family", "status", "rmse", "AIC", "BIC", "ΔAIC", "held-out error",
            "next budget: accuracy [interval]", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if r["status"].startswith("skipped"):
            lines.append(f"| {r['slice']} | {r['family']} | {r['status']} |" + " |" * (len(head) - 3))
            continue
        interval = (f" [{_num(r['next_low'])}, {_num(r['next_high'])}]"
                    if r["next_low"] is not None else "")
        lines.append(" | ".join([
            f"| {r['slice']}", r["family"], r["status"], _num(r["rmse"]), f"{r['aic']:.2f}",
            f"{r['bic']:.2f}", f"{r['delta_aic']:.2f}", _num(r["heldout_error"]),
            f"{r['next_tokens']:,} tokens: {_num(r['next_accuracy'])}{interval}",
            f"`{r['params']}`"]) + " |")
    return "# Scaling-curve fits\n\n" + "\n".join(lines) + "\n"


def _num(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def describe(document: dict) -> str:
    """What a user wants on the terminal: skipped families and the best fit's prediction."""
    lines = [f"fit: {name} skipped: {v['skipped']}"
             for name, v in document["families"].items() if "skipped" in v]
    best = document["best"]
    pred = best["prediction"]
    interval = (f" [{_num(pred['interval'][0])}, {_num(pred['interval'][1])}]"
                if pred["interval"] else "")
    lines.append(f"best family ({document['headline_slice']}, by {best['criterion']}): "
                 f"{best['family']}; predicted accuracy at {pred['tokens']:,} tokens: "
                 f"{_num(pred['accuracy'])}{interval}")
    return "\n".join(lines)


def write_report(cfg) -> tuple[dict[str, Path], dict]:
    """Every output of `entigraph analyze`; returns the paths and the fit document."""
    results = load(cfg)
    fitted = fit_all(results, cfg)
    main = headline(fitted)
    output_dir = Path(cfg.output_dir)
    outputs = write_tables(results, output_dir)
    references = reference_lines(cfg.references, results.rows)
    document = fit_document(fitted, main, references, cfg)
    rows = summary_rows(fitted)
    outputs.update(fit=output_dir / "fit.json", fits_md=output_dir / "fits.md",
                   fits_csv=output_dir / "fits.csv", plot=output_dir / "accuracy_vs_tokens.png",
                   residuals=output_dir / "residuals.png")
    write_json_atomic(outputs["fit"], document)
    write_atomic(outputs["fits_md"], markdown(rows))
    write_atomic(outputs["fits_csv"], csv_text(SUMMARY_COLUMNS, rows))
    plot_curves(fitted, main.name, references, cfg.chance, cfg.fit.confidence, outputs["plot"])
    plot_residuals(main, outputs["residuals"])
    if cfg.wandb.project or cfg.wandb.run_id:
        from entigraph.analysis.publish import log_to_wandb

        log_to_wandb(cfg.wandb, output_dir, outputs, results.rows, document["best"])
    return outputs, document
