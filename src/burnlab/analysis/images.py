"""Decoding sample PNGs once, for every product that shows or measures them.

    images = SampleImages()
    pixels = images.get(row)      # uint8 [H, W, 3], or None (missing / undecodable: see .problems)

A PNG that is missing or fails to decode (a half-written file) is reported once in `problems`;
grids draw a placeholder in its place and metrics are computed over the images that remain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from burnlab.analysis.run import SampleRow


class SampleImages:
    def __init__(self):
        self.cache: dict[Path, np.ndarray | None] = {}
        self.problems: list[str] = []

    def get(self, row: SampleRow) -> np.ndarray | None:
        if row.image not in self.cache:
            self.cache[row.image] = self.decode(row)
        return self.cache[row.image]

    def stack(self, rows: list[SampleRow]) -> tuple[list[SampleRow], np.ndarray | None]:
        """The rows whose image decodes, and those images as uint8 [N, H, W, 3] (resized to the
        first one's size where sizes differ); ([], None) when none decodes."""
        decoded = [(row, image) for row in rows if (image := self.get(row)) is not None]
        if not decoded:
            return [], None
        height, width = decoded[0][1].shape[:2]
        return ([row for row, _ in decoded], np.stack([resize(image, (width, height)) for _, image in decoded]))

    def decode(self, row: SampleRow) -> np.ndarray | None:
        if not row.image.is_file():
            return None  # already listed by the run source as a missing sample image
        try:
            return load_rgb(row.image)
        except (OSError, UnidentifiedImageError) as error:
            self.problems.append(
                f"sample image {row.image} (checkpoint '{row.label}', "
                f"{row.prompt_set}, seed {row.seed}) cannot be decoded "
                f"({error}); expected a complete PNG. Shown as a blank cell."
            )
            return None


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] resized to size = (width, height); unchanged when it already fits."""
    if pixels.shape[1::-1] == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
