"""Labelled image grids of the testing plan (PIL; labels in PIL's default font).

    grid = comparison_grid(images, ref, "person")         # rows = checkpoints, columns = seeds
    grid = checkpoint_grid(images, rows, "2 unet_lo e100")  # the first 9 seeds as a 3x3 grid
    grid = labelled_grid(images, "person / seed", [("lr=1e-4", rows), ...])  # any labelled rows

Sizes are exact, so that tests and the report can rely on them (cell = one sample, shrunk to at
most `max_cell` pixels a side):
  comparison grid: (label_width + seeds * cell_w,  header_height + checkpoints * cell_h)
  checkpoint grid: (3 * cell_w,                    header_height + 3 * cell_h)
with font_size = clamp(cell_h // 5, 10, 28), label_width = 12 * font_size and
header_height = 2 * font_size (a 16 px cell: 120 and 20; a 64 px cell: 144 and 24); a
labelled grid with fit_labels widens its label column to its longest label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from burnlab.analysis.images import SampleImages, resize
from burnlab.analysis.run import BranchRef, SampleRow

GRID_SIDE = 3
DEFAULT_CELL = (64, 64)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
PLACEHOLDER = (200, 200, 200)
PLACEHOLDER_MARK = (200, 40, 40)


@dataclass(frozen=True)
class Layout:
    cell: tuple[int, int]
    font_size: int
    label_width: int
    header_height: int

    @classmethod
    def for_cell(cls, cell: tuple[int, int]) -> "Layout":
        font_size = min(max(cell[1] // 5, 10), 28)
        return cls(cell, font_size, 12 * font_size, 2 * font_size)

    def fitting(self, labels: list[str]) -> "Layout":
        """This layout with a label column wide enough for every label (never narrower)."""
        draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        widest = max((draw.textlength(spaced(label), font=self.font) for label in labels), default=0)
        width = max(self.label_width, math.ceil(widest) + 2 * self.padding)
        return Layout(self.cell, self.font_size, width, self.header_height)

    @property
    def padding(self) -> int:
        return max(2, self.font_size // 4)

    @property
    def font(self) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        return ImageFont.load_default(size=self.font_size)


def cell_size(images: SampleImages, rows: list[SampleRow], max_cell: int) -> tuple[int, int]:
    """The first decodable sample's size, shrunk (keeping its aspect) to at most max_cell."""
    first = next((image for image in map(images.get, rows) if image is not None), None)
    height, width = first.shape[:2] if first is not None else DEFAULT_CELL
    scale = min(1.0, max_cell / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def comparison_grid(images: SampleImages, ref: BranchRef, prompt_set: str, max_cell: int = 256) -> Image.Image:
    """One prompt set on one branch: a row per testing-plan checkpoint, a column per seed."""
    rows = [
        (checkpoint.label, ref.run.samples_of(ref.branch.name, prompt_set, checkpoint.index))
        for checkpoint in ref.branch.plan
    ]
    return labelled_grid(images, f"{prompt_set} / seed", rows, max_cell)


def labelled_grid(
    images: SampleImages,
    corner: str,
    rows: list[tuple[str, list[SampleRow]]],
    max_cell: int = 256,
    fit_labels: bool = False,
) -> Image.Image:
    """A row per (label, samples), a column per seed found in any row; `corner` heads the label
    column. fit_labels: the label column widens to the longest label instead of cutting it."""
    samples = [sample for _, row_samples in rows for sample in row_samples]
    seeds = sorted({sample.seed for sample in samples})
    layout = Layout.for_cell(cell_size(images, samples, max_cell))
    if fit_labels:
        layout = layout.fitting([label for label, _ in rows])
    cell_w, cell_h = layout.cell
    grid = Image.new(
        "RGB", (layout.label_width + len(seeds) * cell_w, layout.header_height + len(rows) * cell_h), BACKGROUND
    )
    draw = ImageDraw.Draw(grid)
    draw_text(draw, layout, corner, (0, 0), (layout.label_width, layout.header_height))
    for column, seed in enumerate(seeds):
        draw_text(draw, layout, str(seed), (layout.label_width + column * cell_w, 0), (cell_w, layout.header_height))
    for row_number, (label, row_samples) in enumerate(rows):
        top = layout.header_height + row_number * cell_h
        draw_text(draw, layout, label, (0, top), (layout.label_width, cell_h))
        by_seed = {sample.seed: sample for sample in row_samples}
        for column, seed in enumerate(seeds):
            paste_cell(grid, images, by_seed.get(seed), layout, (layout.label_width + column * cell_w, top))
    return grid


def checkpoint_grid(
    images: SampleImages, rows: list[SampleRow], label: str, max_cell: int = 256, cell: tuple[int, int] | None = None
) -> Image.Image:
    """The first 9 samples (seed order) as a 3x3 grid under a title bar holding `label`;
    always 3x3 (blank cells for missing samples) so that GIF frames share one size."""
    layout = Layout.for_cell(cell or cell_size(images, rows, max_cell))
    cell_w, cell_h = layout.cell
    grid = Image.new("RGB", (GRID_SIDE * cell_w, layout.header_height + GRID_SIDE * cell_h), BACKGROUND)
    draw_text(ImageDraw.Draw(grid), layout, label, (0, 0), (grid.width, layout.header_height))
    first_nine = sorted(rows, key=lambda row: row.seed)[: GRID_SIDE * GRID_SIDE]
    for position in range(GRID_SIDE * GRID_SIDE):
        row = first_nine[position] if position < len(first_nine) else None
        left = (position % GRID_SIDE) * cell_w
        top = layout.header_height + (position // GRID_SIDE) * cell_h
        paste_cell(grid, images, row, layout, (left, top))
    return grid


def paste_cell(
    grid: Image.Image, images: SampleImages, row: SampleRow | None, layout: Layout, corner: tuple[int, int]
) -> None:
    """A sample at `corner`, or a grey cell crossed in red where it is missing or undecodable."""
    pixels = images.get(row) if row is not None else None
    if pixels is not None:
        grid.paste(Image.fromarray(resize(pixels, layout.cell)), corner)
        return
    left, top = corner
    right, bottom = left + layout.cell[0] - 1, top + layout.cell[1] - 1
    draw = ImageDraw.Draw(grid)
    draw.rectangle((left, top, right, bottom), fill=PLACEHOLDER)
    draw.line((left, top, right, bottom), fill=PLACEHOLDER_MARK, width=2)
    draw.line((left, bottom, right, top), fill=PLACEHOLDER_MARK, width=2)


def draw_text(
    draw: ImageDraw.ImageDraw, layout: Layout, text: str, corner: tuple[int, int], box: tuple[int, int]
) -> None:
    """`text` left-aligned and vertically centred in a box, cut with '…' when it is too wide."""
    font = layout.font
    fitted = fit_text(draw, font, spaced(text), box[0] - 2 * layout.padding)
    top = corner[1] + (box[1] - layout.font_size) // 2
    draw.text((corner[0] + layout.padding, top), fitted, fill=TEXT, font=font)


def spaced(text: str) -> str:
    """PIL's default font has a 0.2 em space: doubled, "2 unet_lo e100" does not read as 2 words."""
    return text.replace(" ", "  ")


def fit_text(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def hstack(frames: list[Image.Image], gap: int) -> Image.Image:
    """Images side by side on a white background, `gap` pixels apart, tops aligned."""
    width = sum(frame.width for frame in frames) + gap * (len(frames) - 1)
    canvas = Image.new("RGB", (width, max(frame.height for frame in frames)), BACKGROUND)
    left = 0
    for frame in frames:
        canvas.paste(frame, (left, 0))
        left += frame.width + gap
    return canvas
