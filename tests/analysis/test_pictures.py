"""Grids, GIFs and the loss overlay over the tiny synthetic store (16x16 samples, 9 seeds,
8 checkpoints per branch).

    .venv/bin/python -m pytest tests/analysis/test_pictures.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from burnlab.analysis.gifs import progression_frames, side_by_side_frames, write_gif
from burnlab.analysis.grids import Layout, checkpoint_grid, comparison_grid
from burnlab.analysis.images import SampleImages
from burnlab.analysis.losses import (
    STABILIZED,
    TRAIN,
    TRAIN_EMA,
    VALIDATION,
    ema,
    loss_series,
    plot_losses,
)
from burnlab.analysis.run import BranchRef
from burnlab.analysis.sources import LocalRun


def branch_ref(store, study: str) -> BranchRef:
    run = LocalRun(store / study).load()
    return BranchRef(run, next(iter(run.branches.values())))


@pytest.fixture(scope="module")
def refs(shared_store) -> list[BranchRef]:
    return [branch_ref(shared_store, "burn_unet"), branch_ref(shared_store, "burn_te")]


def test_layout_numbers():
    assert Layout.for_cell((16, 16)) == Layout((16, 16), 10, 120, 20)
    assert Layout.for_cell((64, 64)) == Layout((64, 64), 12, 144, 24)
    assert Layout.for_cell((512, 512)) == Layout((512, 512), 28, 336, 56)


def test_comparison_grid_is_rows_of_checkpoints_by_columns_of_seeds(refs):
    grid = comparison_grid(SampleImages(), refs[0], "person")
    # label column 120 + 9 seeds x 16 px; header 20 + 8 checkpoints x 16 px
    assert grid.size == (120 + 9 * 16, 20 + 8 * 16)
    images = SampleImages()
    first_sample = images.get(refs[0].run.samples_of("unet_hi", "person", 0)[0])
    assert np.array_equal(np.asarray(grid)[20:36, 120:136], first_sample)


def test_large_samples_shrink_to_max_cell(refs):
    grid = comparison_grid(SampleImages(), refs[0], "person", max_cell=8)
    assert grid.size == (120 + 9 * 8, 20 + 8 * 8)


def test_checkpoint_grid_is_three_by_three_under_a_title(refs):
    rows = refs[0].run.samples_of("unet_hi", "sunglasses", 3)
    assert checkpoint_grid(SampleImages(), rows, "3 unet_lo e6").size == (3 * 16, 20 + 3 * 16)
    # fewer than 9 samples: still 3x3, blank cells where samples are missing
    assert checkpoint_grid(SampleImages(), rows[:4], "3 unet_lo e6").size == (48, 68)


def test_gif_has_one_frame_per_checkpoint(refs, tmp_path):
    path = write_gif(progression_frames(SampleImages(), refs[1], "person"), tmp_path / "te.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == len(refs[1].branch.plan) == 8
        assert gif.size == (48, 68)


def test_side_by_side_gif_pairs_the_branches_frame_by_frame(refs, tmp_path):
    frames = side_by_side_frames(SampleImages(), refs[0], refs[1], "person")
    path = write_gif(frames, tmp_path / "vs.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 8
        # two titled 3x3 frames (title 20 + grid 68) with an 8 px gap
        assert gif.size == (48 + 8 + 48, 20 + 68)


def test_undecodable_png_becomes_a_blank_cell_and_a_problem(store):
    ref = branch_ref(store, "burn_unet")
    broken = ref.run.samples_of("unet_hi", "person", 2)[0].image
    broken.write_bytes(broken.read_bytes()[:30])  # a half-written PNG
    images = SampleImages()
    grid = np.asarray(comparison_grid(images, ref, "person"))
    assert grid.shape == (20 + 8 * 16, 120 + 9 * 16, 3)
    cell = grid[20 + 2 * 16 : 20 + 3 * 16, 120:136]
    assert (cell == (200, 200, 200)).all(axis=-1).mean() > 0.5  # mostly placeholder grey
    assert len(images.problems) == 1 and str(broken) in images.problems[0]
    assert "cannot be decoded" in images.problems[0]


def test_ema_is_bias_corrected():
    assert ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert ema([0.0, 1.0], 0.0) == [0.0, 1.0]


def test_loss_overlay_series_come_from_both_runs(refs, tmp_path):
    series = plot_losses(refs, tmp_path / "losses.png", log_scale=True)
    assert (tmp_path / "losses.png").stat().st_size > 0
    by_key = {(line.branch, line.kind): line for line in series}
    assert set(by_key) == {
        (branch, kind)
        for branch in ("burn_unet/unet_hi", "burn_te/te_hi")
        for kind in (TRAIN, TRAIN_EMA, VALIDATION, STABILIZED)
    }
    for ref in refs:
        rows = ref.run.branch_losses(ref.branch.name)
        train = by_key[(ref.title, TRAIN)]
        assert sorted(train.y) == sorted(r.train_loss for r in rows if r.kind == "train")
        assert train.x == tuple(sorted(train.x)) and train.x[-1] == 25.0
        stabilized = by_key[(ref.title, STABILIZED)]
        assert len(stabilized.x) == len([r for r in rows if r.kind == "val"])
    # the burns differ after the shared baseline: the TE run's loss rows are its own
    assert by_key[("burn_unet/unet_hi", TRAIN)].y[-1] != by_key[("burn_te/te_hi", TRAIN)].y[-1]
    assert loss_series(refs) == series


def test_relative_losses_start_every_stage_at_0(refs, tmp_path):
    series = plot_losses(refs, tmp_path / "relative.png", log_scale=True, relative=True)
    assert (tmp_path / "relative.png").stat().st_size > 0
    for ref in refs:
        rows = ref.run.branch_losses(ref.branch.name)
        for kind, attribute in ((VALIDATION, "val_loss"), (STABILIZED, "stabilized_loss")):
            pieces = [line for line in series if (line.branch, line.kind) == (ref.title, kind)]
            assert [line.stage for line in pieces] == list(ref.branch.stages)
            for line in pieces:
                values = [getattr(row, attribute) for row in rows if row.kind == "val" and row.stage == line.stage]
                assert line.y[0] == 0.0
                assert line.y == pytest.approx([value - values[0] for value in values])
        # the train loss is drawn as it was logged
        assert [line for line in series if line.branch == ref.title and line.kind in (TRAIN, TRAIN_EMA)] == [
            line for line in loss_series([ref]) if line.kind in (TRAIN, TRAIN_EMA)
        ]
