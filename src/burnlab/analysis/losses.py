"""Loss overlay: UNet burn vs TE burn on shared axes (matplotlib, Agg).

    series = plot_losses([unet_ref, te_ref], Path("losses.png"), log_scale=True)

Three panels over the branch's shared epoch axis (study_epoch = epoch_offset + epoch): train
loss (raw, faint, and its exponential moving average), validation loss, stabilized loss (fixed
seeds on a fixed training subset). Dashed grey lines mark where stages end; stage names head their spans.
`loss_series` returns the plotted data, so callers (and tests) can check what was drawn.

    plot_losses(refs, Path("losses.png"), relative=True)   # as EveryDream2 logs them

relative=True draws validation and stabilized loss minus the first pass of their stage: EveryDream2
logs the stabilized loss (and, with use_relative_loss, the validation loss) relative to its
training run's first pass, and each stage of the study was a training run of its own, so its
charts show every stage starting at 0, going negative as the loss falls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from burnlab.analysis.defaults import DEFAULT_SMOOTHING  # noqa: E402
from burnlab.analysis.run import BranchRef  # noqa: E402

TRAIN, TRAIN_EMA, VALIDATION, STABILIZED = "train", "train (EMA)", "validation", "stabilized"
PANEL_TITLES = ("train loss", "validation loss", "stabilized loss")
RELATIVE_PANEL_TITLES = (
    "train loss",
    "validation loss\nminus its stage's first pass",
    "stabilized loss\nminus its stage's first pass",
)
PANEL_OF = {TRAIN: 0, TRAIN_EMA: 0, VALIDATION: 1, STABILIZED: 2}
LINE_STYLE = {
    TRAIN: {"alpha": 0.3, "linewidth": 0.8},
    TRAIN_EMA: {"linewidth": 1.8},
    VALIDATION: {"marker": "o", "markersize": 3},
    STABILIZED: {"marker": "o", "markersize": 3},
}


@dataclass(frozen=True)
class Series:
    branch: str
    kind: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    stage: str | None = None  # relative losses: the stage this piece is relative to


def ema(values: list[float], smoothing: float) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing): early values are
    not pulled towards 0. smoothing in [0, 1): 0 returns the values unchanged."""
    smoothed, average = [], 0.0
    for step, value in enumerate(values, 1):
        average = smoothing * average + (1 - smoothing) * value
        smoothed.append(average / (1 - smoothing**step))
    return smoothed


def loss_series(refs: list[BranchRef], smoothing: float = DEFAULT_SMOOTHING, relative: bool = False) -> list[Series]:
    """Per branch: train (raw and EMA), validation and stabilized loss against study_epoch.
    A kind with no values on a branch (e.g. an empty validation split) is left out. relative:
    validation and stabilized loss become a series per stage, minus the stage's first pass."""
    series = []
    for ref in refs:
        rows = sorted(ref.run.branch_losses(ref.branch.name), key=lambda row: row.study_epoch)
        for kind, attribute, row_kind in (
            (TRAIN, "train_loss", "train"),
            (VALIDATION, "val_loss", "val"),
            (STABILIZED, "stabilized_loss", "val"),
        ):
            points = [
                (row.stage, row.study_epoch, getattr(row, attribute))
                for row in rows
                if row.kind == row_kind and getattr(row, attribute) is not None
            ]
            if not points:
                continue
            if relative and kind != TRAIN:
                for stage in dict.fromkeys(stage for stage, _, _ in points):
                    x, y = zip(*[(epoch, value) for of, epoch, value in points if of == stage])
                    series.append(Series(ref.title, kind, x, tuple(value - y[0] for value in y), stage))
                continue
            _, x, y = zip(*points)
            series.append(Series(ref.title, kind, x, y))
            if kind == TRAIN:
                series.append(Series(ref.title, TRAIN_EMA, x, tuple(ema(list(y), smoothing))))
    return series


def stage_spans(refs: list[BranchRef]) -> dict[tuple[float, float], list[str]]:
    """(start, end) study_epoch of each stage -> the stages spanning it, over all branches (a
    baseline shared by two branches is one span; unet_lo and te_lo share theirs)."""
    spans: dict[tuple[float, float], list[str]] = {}
    for ref in refs:
        for name in ref.branch.stages:
            stage = ref.run.stages[name]
            names = spans.setdefault((stage.epoch_offset, stage.study_epoch_end), [])
            if name not in names:
                names.append(name)
    return spans


def plot_losses(
    refs: list[BranchRef],
    path: Path,
    *,
    log_scale: bool = False,
    smoothing: float = DEFAULT_SMOOTHING,
    relative: bool = False,
) -> list[Series]:
    """Write the overlay PNG to `path`; return the plotted series. With `relative`, log_scale
    applies to the train loss only (relative losses go below 0)."""
    series = loss_series(refs, smoothing, relative)
    colours = {ref.title: f"C{number}" for number, ref in enumerate(refs)}
    figure, axes = plt.subplots(len(PANEL_TITLES), 1, figsize=(10, 9), sharex=True)
    labelled = set()  # relative losses come in a piece per stage: one legend entry for them all
    for line in series:
        label = f"{line.branch} {line.kind}"
        axes[PANEL_OF[line.kind]].plot(
            line.x,
            line.y,
            color=colours[line.branch],
            label=None if label in labelled else label,
            **LINE_STYLE[line.kind],
        )
        labelled.add(label)
    for (start, end), stages in stage_spans(refs).items():
        for axis in axes:
            axis.axvline(end, color="grey", linestyle="--", linewidth=0.8)
        axes[0].annotate(
            " / ".join(stages),
            ((start + end) / 2, 1.02),
            ha="center",
            va="bottom",
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="dimgrey",
        )
    titles = RELATIVE_PANEL_TITLES if relative else PANEL_TITLES
    for number, (axis, title) in enumerate(zip(axes, titles)):
        axis.set_ylabel(title)
        if relative and number != PANEL_OF[TRAIN]:
            axis.axhline(0, color="black", linewidth=0.6)  # every stage's first pass
        elif log_scale:
            axis.set_yscale("log")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="upper right")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("study epoch (epochs since base, along each branch)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return series
