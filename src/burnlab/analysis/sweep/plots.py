"""Each metric against the swept value: a PNG per metric, a panel per prompt set, a line per
checkpoint choice (e.g. where the jobs start to differ, and the final checkpoint).

    axis = value_axis(sweep)                          # x per job, log for a learning rate
    paths = plot_metrics_by_value(table, sweep, picked, axis, Path("out/metrics"))

x is a swept key whose values are all numbers, a learning rate (a key with a part lr, *_lr,
lr_* or *_lrs: log-scaled) if there is one, else the first; the other swept keys split the
lines, one per combination of their
values, except those that moved with x (its value decides theirs: named beside x instead).
With no numeric key, the jobs stand in their sorted order, labelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from burnlab.analysis.measure import MetricTable
from burnlab.analysis.metric_plots import Point, draw_line, plot_each_metric
from burnlab.analysis.run import Checkpoint
from burnlab.analysis.sweep.jobs import Sweep, comparable, short_names

LEARNING_RATE = re.compile(r"(^|[._])lrs?($|[._])")  # stages.unet_hi.lr, text_encoder_lr, model.study_lrs.hi
# (branch, choice text) -> job label -> the job's checkpoint for that choice (None: it has none)
Picked = dict[tuple[str, str], dict[str, Checkpoint | None]]


@dataclass(frozen=True)
class ValueAxis:
    """Where each job (by label) stands on x, and which line group it belongs to."""

    title: str
    x: dict[str, float]
    groups: dict[str, str]  # job label -> the other swept keys' values ("" when there are none)
    log: bool
    ticks: tuple[tuple[float, str], ...]  # each job's position and what it is called there


def value_axis(sweep: Sweep) -> ValueAxis:
    numeric = [
        number
        for number, key in enumerate(sweep.keys)
        if all(isinstance(comparable(job.values[number]), float) for job in sweep.jobs)
    ]
    if not numeric:
        return ValueAxis(
            "job (sorted by swept values)",
            {job.label: float(n) for n, job in enumerate(sweep.jobs)},
            {job.label: "" for job in sweep.jobs},
            False,
            tuple((float(n), job.label) for n, job in enumerate(sweep.jobs)),
        )
    x_key = next((number for number in numeric if is_learning_rate(sweep.keys[number])), numeric[0])
    names = short_names(sweep.keys)
    x = {job.label: comparable(job.values[x_key]) for job in sweep.jobs}
    others = [number for number in range(len(sweep.keys)) if number != x_key]
    moves_with_x = [number for number in others if follows(sweep, x_key, number)]
    groups = {
        job.label: ", ".join(f"{names[number]}={job.values[number]}" for number in others if number not in moves_with_x)
        for job in sweep.jobs
    }
    log = is_learning_rate(sweep.keys[x_key]) and min(x.values()) > 0
    ticks = dict((x[job.label], job.values[x_key]) for job in sweep.jobs)
    title = sweep.keys[x_key] + (f" (with {', '.join(sweep.keys[n] for n in moves_with_x)})" if moves_with_x else "")
    return ValueAxis(title, x, groups, log, tuple(ticks.items()))


def follows(sweep: Sweep, x_key: int, other: int) -> bool:
    """Whether a swept key's value is decided by x's (they were swept together): then it does
    not split the lines, which would hold a point each."""
    seen: dict = {}
    return all(
        seen.setdefault(comparable(job.values[x_key]), job.values[other]) == job.values[other] for job in sweep.jobs
    )


def is_learning_rate(key: str) -> bool:
    return bool(LEARNING_RATE.search(key))


def plot_metrics_by_value(
    table: MetricTable, sweep: Sweep, picked: Picked, axis: ValueAxis, folder: Path
) -> dict[str, Path]:
    """One PNG per measured metric; {metric: path}."""
    rows = {(row["run"], row["branch"], row["prompt_set"], row["index"]): row for row in table.rows}
    several_branches = len({branch for branch, _ in picked}) > 1

    lines = [(branch, choice, group) for branch, choice in picked for group in dict.fromkeys(axis.groups.values())]

    def draw(panel, prompt_set: str, metric: str) -> None:
        for number, (branch, choice, group) in enumerate(lines):
            checkpoints = picked[branch, choice]
            points: list[Point] = []
            for job in sweep.jobs:
                checkpoint = checkpoints[job.label]
                row = checkpoint and rows.get((job.label, branch, prompt_set, checkpoint.index))
                if axis.groups[job.label] == group and row and row[metric] is not None:
                    points.append((axis.x[job.label], row[metric], row["interval"].get(metric)))
            points.sort(key=lambda point: point[0])  # jobs are sorted by the first swept key, not x
            label = " ".join(part for part in (branch if several_branches else "", choice, group) if part)
            draw_line(panel, points, f"C{number}", label)
        panel.set_xlabel(axis.title)
        if axis.log:
            panel.set_xscale("log")
        panel.minorticks_off()  # the ticks are the swept values themselves
        panel.set_xticks(
            [x for x, _ in axis.ticks], [text for _, text in axis.ticks], rotation=30, ha="right", fontsize=7
        )

    return plot_each_metric(table, folder, draw)
