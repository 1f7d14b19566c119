"""Metric plots: each metric against checkpoint index, every branch on one chart (a panel per
prompt set), in the same branch colours as the loss overlay.

    paths = plot_metrics(table, refs, Path("out/metrics"))   # {metric: PNG path}

`plot_each_metric` is the frame every metric plot shares (a sweep report draws each metric
against the swept value in it: burnlab/analysis/sweep/plots.py); `draw_line` a line with its bands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from burnlab.analysis.measure import METRICS, MetricTable  # noqa: E402
from burnlab.analysis.run import BranchRef  # noqa: E402

# (x, value, its 95% interval [low, high] or None)
Point = tuple[float, float, "list[float] | None"]


def plot_metrics(table: MetricTable, refs: list[BranchRef], folder: Path) -> dict[str, Path]:
    """One PNG per metric that has any value; metrics measured nowhere are skipped."""

    def draw(axis, prompt_set: str, metric: str) -> None:
        for number, ref in enumerate(refs):
            values = table.series(ref.run.name, ref.branch.name, prompt_set, metric)
            intervals = table.intervals(ref.run.name, ref.branch.name, prompt_set, metric)
            draw_line(
                axis,
                [
                    (index, value, interval)
                    for index, (value, interval) in enumerate(zip(values, intervals))
                    if value is not None
                ],
                f"C{number}",
                ref.title,
            )
        axis.set_xlabel("checkpoint index")
        axis.xaxis.get_major_locator().set_params(integer=True)

    return plot_each_metric(table, folder, draw)


def plot_each_metric(table: MetricTable, folder: Path, draw: Callable[[plt.Axes, str, str], None]) -> dict[str, Path]:
    """A PNG per metric measured anywhere in `table`, a panel per prompt set, in which
    draw(axis, prompt_set, metric) draws; returns {metric: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    prompt_sets = list(dict.fromkeys(row["prompt_set"] for row in table.rows))
    paths = {}
    for metric, description in METRICS.items():
        if all(row[metric] is None for row in table.rows):
            continue
        figure, axes = plt.subplots(
            1, len(prompt_sets), figsize=(4 * len(prompt_sets), 3.4), squeeze=False, sharey=True
        )
        for axis, prompt_set in zip(axes[0], prompt_sets):
            draw(axis, prompt_set, metric)
            axis.set_title(prompt_set, fontsize=10)
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel(metric)
        if axes[0][0].get_legend_handles_labels()[0]:
            axes[0][0].legend(fontsize=7)
        figure.suptitle(f"{metric}: {description} (bands: 95% bootstrap intervals over the images)", fontsize=9)
        figure.tight_layout()
        paths[metric] = folder / f"{metric}.png"
        figure.savefig(paths[metric], dpi=80)
        plt.close(figure)
    return paths


def draw_line(axis: plt.Axes, points: list[Point], colour: str, label: str) -> None:
    """Values joined by a line with markers, their intervals as a band; nothing without points."""
    if not points:
        return
    axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=label)
    bands = [p for p in points if p[2] is not None]
    axis.fill_between(
        [p[0] for p in bands], [p[2][0] for p in bands], [p[2][1] for p in bands], color=colour, alpha=0.2, linewidth=0
    )
