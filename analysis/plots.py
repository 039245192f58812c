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
    return np.linspace(s.points.x.min(), max(s.points.x.max(), np.log10(s.next_tokens)), GRID)


def plot_curves(fitted: list[SliceFit], headline: str, references: dict[str, float],
                chance, confidence: float, path: Path) -> None:
    """Every slice's runs; the headline slice with every fitted family and its band, the other
    slices with their best family only. A slice's runs and its best curve share a colour; the
    headline's other families take colours no slice has."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(fitted):
        color = colors[i % len(colors)]
        ax.scatter(10 ** s.points.x, 100 * s.points.y, color=color, zorder=3, label=f"{s.name} runs")
        best = (s.summary["best"] or {}).get("family")
        for j, (name, f) in enumerate(s.fits.items()):
            if s.name != headline and name != best:
                continue
            x = _grid(s)
            style = "-" if name == best else ["--", ":", "-."][j % 3]
            line_color = color if name == best else colors[(j + len(fitted)) % len(colors)]
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
    ax.set_xlabel("synthetic tokens")
    ax.set_ylabel("QA accuracy (%)")
    ax.set_title(f"bands: {100 * confidence:g}% bootstrap intervals", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    # Outside the axes: with several slices and references it would hide the runs.
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _mark_prediction(ax, s: SliceFit, color) -> None:
    """The best family's accuracy at the next budget, with its interval."""
    if not s.summary["best"]:
        return
    pred = s.summary["best"]["prediction"]
    low, high = pred["interval"] or [pred["accuracy"]] * 2
    ax.errorbar([pred["tokens"]], [100 * pred["accuracy"]], fmt="D", color=color, capsize=3,
                yerr=[[100 * (pred["accuracy"] - low)], [100 * (high - pred["accuracy"])]],
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
