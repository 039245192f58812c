"""The results table and the accuracy-against-synthetic-tokens plot, from collected rows."""
from __future__ import annotations

import csv
import io
import os
from itertools import groupby
from pathlib import Path

from entigraph.analysis.collect import COLUMNS, collect
from entigraph.records import write_atomic


def write_table(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def plot_accuracy(rows: list[dict], path: Path) -> None:
    """Accuracy against synthetic tokens on a log axis, one line per group (mixing ratio, LR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for group, points in groupby(rows, key=lambda r: r["group"]):
        points = list(points)
        ax.plot([p["synthetic_tokens"] for p in points], [100 * p["accuracy"] for p in points],
                marker="o", label=group)
    ax.axhline(25, color="grey", linestyle=":", label="chance (4 options)")
    ax.set_xscale("log")
    ax.set_xlabel("synthetic tokens")
    ax.set_ylabel("QA accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    # No software/date metadata: the same rows give the same bytes.
    fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)


def write_report(source: str, output_dir: Path) -> dict[str, Path]:
    rows = collect(source)
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"table": output_dir / "results.csv", "plot": output_dir / "accuracy_vs_tokens.png"}
    write_table(rows, outputs["table"])
    plot_accuracy(rows, outputs["plot"])
    return outputs
