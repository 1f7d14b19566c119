"""Progression GIFs: one frame per testing-plan checkpoint, each frame a labelled 3x3 grid.

write_gif(progression_frames(images, ref, "person"), out / "person.gif")
write_gif(side_by_side_frames(images, unet_ref, te_ref, "person"), out / "person_vs.gif")
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from burnlab.analysis.grids import (
    BACKGROUND,
    Layout,
    cell_size,
    checkpoint_grid,
    draw_text,
    hstack,
)
from burnlab.analysis.images import SampleImages
from burnlab.analysis.run import BranchRef

FRAME_MS = 900
SIDE_BY_SIDE_GAP = 8


def progression_frames(images: SampleImages, ref: BranchRef, prompt_set: str, max_cell: int = 256) -> list[Image.Image]:
    """A 3x3 grid per checkpoint of the branch's plan, all frames one size."""
    cell = cell_size(images, ref.run.samples_in(ref.branch.name, prompt_set), max_cell)
    return [
        checkpoint_grid(images, ref.run.samples_of(ref.branch.name, prompt_set, c.index), c.label, cell=cell)
        for c in ref.branch.plan
    ]


def side_by_side_frames(
    images: SampleImages, left: BranchRef, right: BranchRef, prompt_set: str, max_cell: int = 256
) -> list[Image.Image]:
    """Two branches' progressions side by side, each half titled with its run/branch; a branch
    with fewer checkpoints holds its last frame."""
    halves = []
    for ref in (left, right):
        frames = progression_frames(images, ref, prompt_set, max_cell)
        rows = ref.run.samples_in(ref.branch.name, prompt_set)
        layout = Layout.for_cell(cell_size(images, rows, max_cell))
        halves.append([titled(frame, f"{ref.title} ({'+'.join(ref.branch.component)})", layout) for frame in frames])
    count = max(len(frames) for frames in halves)
    return [
        hstack([frames[min(number, len(frames) - 1)] for frames in halves], SIDE_BY_SIDE_GAP) for number in range(count)
    ]


def titled(frame: Image.Image, title: str, layout: Layout) -> Image.Image:
    canvas = Image.new("RGB", (frame.width, frame.height + layout.header_height), BACKGROUND)
    draw_text(ImageDraw.Draw(canvas), layout, title, (0, 0), (frame.width, layout.header_height))
    canvas.paste(frame, (0, layout.header_height))
    return canvas


def write_gif(frames: list[Image.Image], path: Path, frame_ms: int = FRAME_MS) -> Path:
    """An endlessly looping GIF; every frame is kept (labels differ, so none merge)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path
