"""Loss statistics with known answers: synthetic loss rows with set slopes and step noise, and
the tiny synthetic store, whose validation rows rise and stabilized rows fall at set rates.

    .venv/bin/python -m pytest tests/analysis/test_loss_stats.py -q
"""

from __future__ import annotations

import random

import pytest

from burnlab.analysis.loss_stats import (
    branch_statistics,
    loss_statistics,
    roughness,
    slope,
)
from burnlab.analysis.run import BranchRef, LossRow, Stage
from burnlab.analysis.sources import LocalRun


def stage(name: str, offset: int, epochs: int, train: tuple[str, ...] = ("unet",)) -> Stage:
    return Stage(
        name, parent="base", train=train, epochs=epochs, save_epochs=(epochs,), epoch_offset=offset, status="complete"
    )


def validation_rows(name: str, offset: int, epochs: int, val, stabilized) -> list[LossRow]:
    """A validation pass every 10 epochs, from the stage's epoch 0 to its last."""
    return [
        LossRow("val", name, offset + epoch, val_loss=val(epoch), stabilized_loss=stabilized(epoch))
        for epoch in range(0, epochs + 1, 10)
    ]


def train_rows(name: str, offset: int, losses: list[float]) -> list[LossRow]:
    """Two steps per epoch."""
    return [LossRow("train", name, offset + (step + 1) / 2, train_loss=loss) for step, loss in enumerate(losses)]


def zigzag(amplitude: float, steps: int, trend: float = 0.0) -> list[float]:
    """0.1 +- amplitude alternately, plus `trend` per step: every step-to-step difference is
    +-2 x amplitude (+ trend), so their standard deviation is 2 x amplitude exactly."""
    return [0.1 + trend * step + amplitude * (-1) ** step for step in range(steps)]


def test_slopes_changes_and_roughness_of_a_lo_and_hi_stage():
    lo, hi = stage("unet_lo", 50, 500), stage("unet_hi", 550, 500)
    rows = (
        validation_rows("unet_lo", 50, 500, lambda e: 0.1 + 0.0002 * e, lambda e: 0.12 - 0.0001 * e)
        + train_rows("unet_lo", 50, zigzag(0.01, 1001))
        + validation_rows("unet_hi", 550, 500, lambda e: 0.2 + 0.0005 * e, lambda e: 0.07)
        + train_rows("unet_hi", 550, zigzag(0.03, 1001, trend=0.001))
    )
    random.Random(0).shuffle(rows)  # the statistics sort by epoch themselves
    lo_stats, hi_stats = branch_statistics("burn/unet_hi", [lo, hi], rows)
    assert (lo_stats.branch, lo_stats.stage, lo_stats.trains, lo_stats.val_passes) == (
        "burn/unet_hi",
        "unet_lo",
        "unet",
        51,
    )
    assert lo_stats.val_slope == pytest.approx(0.02)  # 0.0002 per epoch, per 100 epochs
    assert lo_stats.val_change == pytest.approx(0.1)  # 500 epochs x 0.0002
    assert lo_stats.stabilized_slope == pytest.approx(-0.01)
    assert lo_stats.stabilized_change == pytest.approx(-0.05)
    assert hi_stats.val_slope == pytest.approx(0.05) and hi_stats.val_change == pytest.approx(0.25)
    assert hi_stats.stabilized_slope == pytest.approx(0.0, abs=1e-12)
    assert lo_stats.train_roughness == pytest.approx(0.02)
    # the hi stage's trend shifts every difference alike: its roughness is the zigzag's alone
    assert hi_stats.train_roughness == pytest.approx(0.06)
    assert lo_stats.roughness_vs_previous is None
    assert hi_stats.roughness_vs_previous == pytest.approx(3.0)


def test_too_few_points_give_none_not_a_number():
    only = stage("baseline", 0, 50, ("unet", "text_encoder"))
    rows = [
        LossRow("val", "baseline", 0, val_loss=0.2, stabilized_loss=None),
        LossRow("train", "baseline", 0.5, train_loss=0.3),
        LossRow("train", "baseline", 1.0, train_loss=0.2),
    ]
    (stats,) = branch_statistics("run/baseline", [only], rows)
    assert stats.trains == "unet+text_encoder" and stats.val_passes == 1
    assert (
        stats.val_slope,
        stats.val_change,
        stats.stabilized_slope,
        stats.stabilized_change,
        stats.train_roughness,
        stats.roughness_vs_previous,
    ) == (None,) * 6
    assert slope([5.0, 5.0], [0.1, 0.2]) is None
    assert roughness([0.1, 0.3, 0.2]) == pytest.approx(0.15)


def test_loss_statistics_of_the_tiny_store(shared_store):
    """conftest.stage_rows: validation loss rises 0.002 and stabilized loss falls 0.001 per
    epoch in every stage."""
    run = LocalRun(shared_store / "burn_te").load()
    stats = loss_statistics([BranchRef(run, run.branches["te_hi"])])
    assert [(s.branch, s.stage) for s in stats] == [("burn_te/te_hi", name) for name in ("baseline", "te_lo", "te_hi")]
    for stage_stats in stats:
        assert stage_stats.val_slope == pytest.approx(0.2)
        assert stage_stats.stabilized_slope == pytest.approx(-0.1)
    assert stats[1].val_change == pytest.approx(0.02)  # 10 epochs
    assert stats[2].roughness_vs_previous == pytest.approx(1.0)  # te_lo and te_hi rows alike
