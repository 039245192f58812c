"""`entigraph analyze`: the tidy table, the curve fits (fit.json, a Markdown and a CSV table)
and the figures, from any source; optionally mirrored to W&B."""
from __future__ import annotations

import json
from pathlib import Path

from entigraph.analysis.collect import Results, csv_text, write_tables
from entigraph.analysis.compare import compare
from entigraph.analysis.curves import SliceFit, fit_slice, slices
from entigraph.analysis.paper import reference_lines
from entigraph.analysis.plots import plot_curves, plot_residuals
from entigraph.analysis.sources import inputs, load, sliced_protocols
from entigraph.records import write_atomic, write_json_atomic

SUMMARY_COLUMNS = ["slice", "family", "status", "rmse", "aic", "bic", "delta_aic",
                   "heldout_tokens", "heldout_predicted", "heldout_observed", "heldout_error",
                   "next_tokens", "next_accuracy", "next_low", "next_high", "params"]


def fit_all(results: Results, cfg) -> list[SliceFit]:
    """Every slice fitted where it has the budgets for a family; a slice with fewer is its
    points with their intervals."""
    return [fit_slice(name, rows, results.questions, cfg.fit, cfg.fit.seed)
            for name, rows in slices(results.rows, cfg.slice_by, sliced_protocols(cfg)).items()]


def headline(fitted: list[SliceFit]) -> SliceFit:
    """The slice with the most distinct budgets (then the most runs, then the first by name:
    max keeps the first of equals)."""
    return max(sorted(fitted, key=lambda s: s.name), key=lambda s: (s.points.budgets, len(s.points.x)))


def fit_document(fitted: list[SliceFit], main: SliceFit, references: dict[str, float],
                 comparison: dict, cfg) -> dict:
    return {
        "input": cfg.input if isinstance(cfg.input, str) else inputs(cfg.input),
        "slice_by": cfg.slice_by, "confidence": cfg.fit.confidence,
        "interval_source": cfg.fit.interval_source, "headline_slice": main.name,
        "families": main.summary["families"], "best": main.summary["best"],
        "slices": {s.name: s.summary for s in fitted}, "references": references,
        "comparison": comparison,
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


def markdown(rows: list[dict], comparison: dict) -> str:
    head = ["slice", "family", "status", "rmse", "AIC", "BIC", "ΔAIC", "held-out error",
            "next budget: accuracy [interval]", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if r["status"].startswith("skipped"):
            lines.append(f"| {r['slice']} | {r['family']} | {r['status']} |" + " |" * (len(head) - 3))
            continue
        interval = (f" [{as_fraction(r['next_low'])}, {as_fraction(r['next_high'])}]"
                    if r["next_low"] is not None else "")
        lines.append(" | ".join([
            f"| {r['slice']}", r["family"], r["status"], as_fraction(r["rmse"]), f"{r['aic']:.2f}",
            f"{r['bic']:.2f}", f"{r['delta_aic']:.2f}", as_fraction(r["heldout_error"]),
            f"{r['next_tokens']:,} tokens: {as_fraction(r['next_accuracy'])}{interval}",
            f"`{r['params']}`"]) + " |")
    return "# Scaling-curve fits\n\n" + "\n".join(lines) + "\n" + comparison_markdown(comparison)


def comparison_markdown(comparison: dict) -> str:
    """The comparison section: differences, token multipliers and decision accuracy."""
    if not comparison:
        return ""
    lines = ["", "# Comparison of slices", "", "## Accuracy differences at shared budgets", "",
             "| tokens | A | B | A − B (points) | interval | from |", "|" + " --- |" * 6]
    lines += [f"| {d['tokens']:,} | {d['a']} | {d['b']} | {as_points(d['difference'])} | "
              f"{as_points_interval(d['interval'])} | {d['interval_from'] or '–'} |"
              for d in comparison["differences"]]
    lines += ["", "## Token multipliers", "",
              "Tokens A's fitted curve needs to reach B's best accuracy; multiplier = B's tokens "
              "there / A's (> 1: A needs fewer).", "",
              "| A | B | B's best accuracy | at B's tokens | A needs | multiplier [interval] |",
              "|" + " --- |" * 6]
    for m in comparison["token_multipliers"]:
        needs = (("≤ " if m["at_most"] else "") + f"{m['a_tokens']:,.0f}" if m["a_tokens"]
                 else "never (within 10^6 x its budgets)")
        interval = (f" [{m['interval'][0]:.3g}, {m['interval'][1]:.3g}]" if m["interval"] else "")
        lines.append(f"| {m['a']} | {m['b']} | {as_fraction(m['target_accuracy'])} | "
                     f"{m['b_tokens']:,} | {needs} | {m['multiplier']:.3g}{interval} |")
    decision = comparison["decision_accuracy"]
    lines += ["", "## Decision accuracy", ""]
    if decision["overall"] is None:
        lines.append(f"Not available: {decision.get('note', 'no pair of slices to rank')}.")
    else:
        lines.append(f"Pairs ranked as at {decision['target_tokens']:,} tokens: "
                     f"{decision['overall']:.3f} overall.")
        lines += ["", "| tokens | pairs | agreeing | decision accuracy |", "|" + " --- |" * 4]
        lines += [f"| {b['tokens']:,} | {b['pairs']} | {b['agreeing']:g} | {b['accuracy']:.3f} |"
                  for b in decision["by_budget"]]
    return "\n".join(lines) + "\n"


def as_points(value: float) -> str:
    return f"{100 * value:+.2f}"


def as_points_interval(interval) -> str:
    return f"[{as_points(interval[0])}, {as_points(interval[1])}]" if interval else "–"


def as_fraction(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def describe(document: dict) -> str:
    """What a user wants on the terminal: skipped families, the best fit's prediction and the
    comparison at the largest shared budget."""
    lines = [f"fit: {name} skipped: {v['skipped']}"
             for name, v in document["families"].items() if "skipped" in v]
    best = document["best"]
    if best is None:
        lines.append("no curve fitted: every slice has too few budgets; fit.json and the "
                     "figure give each budget's accuracy with its interval")
    else:
        pred = best["prediction"]
        interval = (f" [{as_fraction(pred['interval'][0])}, {as_fraction(pred['interval'][1])}]"
                    if pred["interval"] else "")
        lines.append(f"best family ({document['headline_slice']}, by {best['criterion']}): "
                     f"{best['family']}; predicted accuracy at {pred['tokens']:,} tokens: "
                     f"{as_fraction(pred['accuracy'])}{interval}")
    comparison = document["comparison"]
    if comparison and comparison["differences"]:
        largest = max(d["tokens"] for d in comparison["differences"])
        lines += [f"at {largest:,} tokens: {d['a']} − {d['b']} = {as_points(d['difference'])} points "
                  f"{as_points_interval(d['interval'])}"
                  for d in comparison["differences"] if d["tokens"] == largest]
    if comparison and comparison["decision_accuracy"]["overall"] is not None:
        lines.append(f"decision accuracy: {comparison['decision_accuracy']['overall']:.3f}")
    return "\n".join(lines)


def write_report(cfg) -> tuple[dict[str, Path], dict]:
    """Every output of `entigraph analyze`; returns the paths and the fit document."""
    results = load(cfg)
    fitted = fit_all(results, cfg)
    main = headline(fitted)
    output_dir = Path(cfg.output_dir)
    outputs = write_tables(results, output_dir)
    references = reference_lines(cfg.references, results.rows)
    comparison = compare(fitted, cfg.fit)
    document = fit_document(fitted, main, references, comparison, cfg)
    rows = summary_rows(fitted)
    outputs.update(fit=output_dir / "fit.json", fits_md=output_dir / "fits.md",
                   fits_csv=output_dir / "fits.csv", plot=output_dir / "accuracy_vs_tokens.png",
                   residuals=output_dir / "residuals.png")
    write_json_atomic(outputs["fit"], document)
    write_atomic(outputs["fits_md"], markdown(rows, comparison))
    write_atomic(outputs["fits_csv"], csv_text(SUMMARY_COLUMNS, rows))
    plot_curves(fitted, main.name, references, cfg.chance, cfg.fit.confidence, outputs["plot"],
                comparison)
    plot_residuals(main, outputs["residuals"])
    if cfg.wandb.project or cfg.wandb.run_id:
        from entigraph.analysis.publish import log_to_wandb

        log_to_wandb(cfg.wandb, output_dir, outputs, results.rows, fitted, document)
    return outputs, document
