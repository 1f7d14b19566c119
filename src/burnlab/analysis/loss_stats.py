"""The loss curves' behaviour as numbers: per branch and stage, how validation and stabilized
loss move through the stage and how rough the training loss is.

    stats = loss_statistics(refs)       # one StageLossStats per stage of each branch
    stats[-1].val_slope                 # the leaf stage's validation-loss trend per 100 epochs

A validation loss that climbs through a burn stage while the stabilized loss (the same fixed
noise on a fixed subset of the training set) keeps falling is the overfitting signature the
study's loss charts show; a training loss that jumps more from step to step in the hi stage
than in the lo stage is the hi learning rate's instability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from burnlab.analysis.run import BranchRef, LossRow, Stage

SLOPE_EPOCHS = 100  # slopes are per this many epochs: the testing plan's checkpoint spacing


@dataclass(frozen=True)
class StageLossStats:
    """One stage on one branch. None where the stage has too few points for the number."""

    branch: str  # BranchRef.title
    stage: str
    trains: str  # e.g. "unet", "unet+text_encoder"
    val_passes: int  # validation passes logged in the stage
    val_slope: float | None  # least-squares slope of val_loss, per SLOPE_EPOCHS epochs
    val_change: float | None  # val_loss at the stage's last pass minus its first
    stabilized_slope: float | None  # the same for stabilized_loss
    stabilized_change: float | None
    train_roughness: float | None  # std of step-to-step differences of train_loss
    roughness_vs_previous: float | None  # train_roughness over the previous stage's on the branch


def slope(epochs: list[float], values: list[float]) -> float | None:
    """Least-squares slope of `values` against `epochs`, per SLOPE_EPOCHS epochs; None for fewer
    than two distinct epochs."""
    if len(set(epochs)) < 2:
        return None
    return float(np.polyfit(epochs, values, 1)[0] * SLOPE_EPOCHS)


def change(values: list[float]) -> float | None:
    """Last value minus first; None for fewer than two values."""
    return float(values[-1] - values[0]) if len(values) >= 2 else None


def roughness(values: list[float]) -> float | None:
    """Standard deviation of the step-to-step differences: a trend barely moves it, step noise
    does. None for fewer than three values (one difference has no spread)."""
    return float(np.std(np.diff(values))) if len(values) >= 3 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def stage_statistics(
    branch: str, stage: Stage, rows: list[LossRow], previous_roughness: float | None
) -> StageLossStats:
    """The numbers of one stage from its loss rows (any order; sorted by study_epoch here)."""
    rows = sorted(rows, key=lambda row: row.study_epoch)

    def points(kind: str, attribute: str) -> tuple[list[float], list[float]]:
        pairs = [
            (row.study_epoch, getattr(row, attribute))
            for row in rows
            if row.kind == kind and getattr(row, attribute) is not None
        ]
        return [epoch for epoch, _ in pairs], [value for _, value in pairs]

    val_epochs, val = points("val", "val_loss")
    stabilized_epochs, stabilized = points("val", "stabilized_loss")
    _, train = points("train", "train_loss")
    train_roughness = roughness(train)
    return StageLossStats(
        branch=branch,
        stage=stage.name,
        trains="+".join(stage.train),
        val_passes=len([row for row in rows if row.kind == "val"]),
        val_slope=slope(val_epochs, val),
        val_change=change(val),
        stabilized_slope=slope(stabilized_epochs, stabilized),
        stabilized_change=change(stabilized),
        train_roughness=train_roughness,
        roughness_vs_previous=ratio(train_roughness, previous_roughness),
    )


def branch_statistics(branch: str, stages: list[Stage], rows: list[LossRow]) -> list[StageLossStats]:
    """Every stage of a branch, in branch order; each stage's roughness is also compared with
    the stage before it (hi against lo)."""
    statistics: list[StageLossStats] = []
    for stage in stages:
        previous = statistics[-1].train_roughness if statistics else None
        statistics.append(stage_statistics(branch, stage, [row for row in rows if row.stage == stage.name], previous))
    return statistics


def loss_statistics(refs: list[BranchRef]) -> list[StageLossStats]:
    """branch_statistics of every branch in `refs`."""
    return [
        stats
        for ref in refs
        for stats in branch_statistics(
            ref.title, [ref.run.stages[name] for name in ref.branch.stages], ref.run.branch_losses(ref.branch.name)
        )
    ]


def statistics_json(statistics: list[StageLossStats]) -> dict:
    return {"slope_epochs": SLOPE_EPOCHS, "rows": [asdict(stats) for stats in statistics]}
