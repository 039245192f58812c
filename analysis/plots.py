"""Figures, regenerated from fitted slices alone: accuracy against synthetic tokens (log axis)
with the fitted curves and their bootstrap bands, and the residuals of each fit."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from entigraph.analysis.bootstrap import percentiles
from entigraph.analysis.curves import SliceFit

GRID = 200  # points along a drawn curve
# Reference lines, highest first: black and grey, told apart by style.
MARKERS = ["o", "s", "^", "v", "P", "X"]  # one per source (`input=`), in source order
REFERENCE_STYLES = [("black", "--"), ("dimgray", "-."), ("black", ":"), ("dimgray", "--"),
                    ("black", "-."), ("dimgray", ":")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """PNG bytes that depend only on the figure (no software or date metadata), swapped in
    atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _grid(s: SliceFit) -> np.ndarray:
    """From the smallest budget to the predicted next one, so the extrapolation shows."""
    top = s.points.x.max() if s.next_tokens is None else max(s.points.x.max(), np.log10(s.next_tokens))
    return np.linspace(s.points.x.min(), top, GRID)


def slice_colours(fitted: list[SliceFit], palette: list[str]) -> dict[str, str]:
    """A colour per slice label (the slice without its source), in label order: a method keeps
    its colour beside the paper's curve of the same label and from one analysis to the next."""
    labels = sorted({s.label for s in fitted})
    return {s.name: palette[labels.index(s.label) % len(palette)] for s in fitted}


def plot_curves(fitted: list[SliceFit], headline: str, references: dict[str, float],
                chance, confidence: float, path: Path, comparison: dict | None = None) -> None:
    """Every slice's runs and its budget means with their intervals; the headline slice with
    every fitted family and its band, the other slices with their best family only. A slice's
    runs, means and best curve share a colour (sources differ by marker); the headline's other
    families take colours no slice has. With a comparison, a panel below shows the paired
    differences between slices at shared budgets."""
    plt = _pyplot()
    differences = (comparison or {}).get("differences") or []
    if differences:
        fig, (ax, low) = plt.subplots(2, 1, figsize=(9.5, 7.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.4]})
    else:
        fig, ax = plt.subplots(figsize=(9.5, 5))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = slice_colours(fitted, palette)
    sources = sorted({s.input for s in fitted})
    for s in fitted:
        color, marker = colours[s.name], MARKERS[sources.index(s.input) % len(MARKERS)]
        ax.scatter(10 ** s.points.x, 100 * s.points.y, color=color, marker=marker, alpha=0.45,
                   zorder=3, label=f"{s.name} runs")
        _mark_budget_means(ax, s, color, marker)
        best = (s.summary["best"] or {}).get("family")
        for j, (name, f) in enumerate(s.fits.items()):
            if s.name != headline and name != best:
                continue
            x = _grid(s)
            style = "-" if name == best else ["--", ":", "-."][j % 3]
            line_color = color if name == best else palette[(j + len(fitted)) % len(palette)]
            ax.plot(10 ** x, 100 * f.predict(x), style, color=line_color, label=f"{s.name}: {name}")
            if name in s.bands:
                curves = np.array([f.family.curve(x, t) for t in s.bands[name].thetas])
                # Accuracy lives in [0, 1]; an unbounded family's band is cut there for display.
                lo, hi = np.clip(percentiles(curves, confidence), 0.0, 1.0)
                ax.fill_between(10 ** x, 100 * lo, 100 * hi, color=line_color, alpha=0.15, lw=0)
        _mark_prediction(ax, s, color)
    for j, (label, value) in enumerate(sorted(references.items(), key=lambda kv: -kv[1])):
        color, style = REFERENCE_STYLES[j % len(REFERENCE_STYLES)]
        ax.axhline(100 * value, color=color, linestyle=style, lw=1,
                   label=f"{label} ({100 * value:.2f}%)")
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle=":", label=f"chance ({100 * chance:g}%)")
    ax.set_xscale("log")
    ax.set_ylabel("QA accuracy (%)")
    ax.set_title(f"bands and bars: {100 * confidence:g}% bootstrap intervals", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    # Outside the axes: with several slices and references it would hide the runs.
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if differences:
        _plot_differences(low, differences, comparison["decision_accuracy"], palette)
    (low if differences else ax).set_xlabel("synthetic tokens")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _mark_budget_means(ax, s: SliceFit, color, marker) -> None:
    """Each budget's mean accuracy over its runs, with its interval where there is one."""
    for b in s.summary["by_budget"]:
        low, high = b["interval"] or [b["accuracy"]] * 2
        ax.errorbar([b["tokens"]], [100 * b["accuracy"]], fmt=marker, color=color, capsize=3,
                    markersize=7, markeredgecolor="black", markeredgewidth=0.6, zorder=4,
                    yerr=[[100 * (b["accuracy"] - low)], [100 * (high - b["accuracy"])]])


def _plot_differences(ax, differences: list[dict], decision: dict, palette: list[str]) -> None:
    """A − B in points at each shared budget, per pair of slices, with its interval."""
    pairs = list(dict.fromkeys((d["a"], d["b"]) for d in differences))
    for k, pair in enumerate(pairs):
        rows = [d for d in differences if (d["a"], d["b"]) == pair]
        # A small sideways shift per pair keeps bars at the same budget apart.
        shift = 10 ** (0.03 * (k - (len(pairs) - 1) / 2))
        tokens = np.array([d["tokens"] for d in rows]) * shift
        value = np.array([100 * d["difference"] for d in rows])
        low = np.array([100 * (d["interval"] or [d["difference"]] * 2)[0] for d in rows])
        high = np.array([100 * (d["interval"] or [d["difference"]] * 2)[1] for d in rows])
        ax.errorbar(tokens, value, yerr=[value - low, high - value], fmt="o-", capsize=3,
                    color=palette[(k + 3) % len(palette)], label=f"{pair[0]} − {pair[1]}")
    ax.axhline(0, color="black", lw=1)
    ax.set_ylabel("difference (pts)")
    title = "accuracy differences at shared budgets"
    if decision["overall"] is not None:
        title += (f"; decision accuracy {decision['overall']:.2f} (ranking at each budget vs at "
                  f"{decision['target_tokens']:,} tokens)")
    ax.set_title(title, fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _mark_prediction(ax, s: SliceFit, color) -> None:
    """The best family's accuracy at the next budget, with its interval."""
    if not s.summary["best"]:
        return
    pred = s.summary["best"]["prediction"]
    # An unbounded family's prediction is cut to [0, 1] for display, as its band is.
    accuracy, low, high = np.clip([pred["accuracy"], *(pred["interval"] or [pred["accuracy"]] * 2)],
                                  0.0, 1.0)
    ax.errorbar([pred["tokens"]], [100 * accuracy], fmt="D", color=color, capsize=3,
                yerr=[[100 * (accuracy - min(low, accuracy))], [100 * (max(high, accuracy) - accuracy)]],
                label=f"{s.name}: predicted at {pred['tokens']:,}")


def plot_residuals(s: SliceFit, path: Path) -> None:
    """Observed minus fitted accuracy at each run, per family (headline slice)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.axhline(0, color="black", lw=1)
    for j, (name, f) in enumerate(s.fits.items()):
        # A small sideways shift per family keeps markers at the same budget apart.
        ax.plot(10 ** (f.points.x + 0.02 * (j - len(s.fits) / 2)), 100 * f.residuals, "o",
                label=f"{name} (rmse {100 * f.rmse:.2f} pts)")
    ax.set_xscale("log")
    ax.set_xlabel("synthetic tokens")
    ax.set_ylabel("observed - fitted (pts)")
    ax.set_title(f"residuals, slice {s.name}", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    if s.fits:
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
