"""The zorblax ornament style: a procedural style the toy world never shows.

The analog of the study's 26 stylized paintings: any world subject re-rendered with a magenta
diamond-lattice background dotted in yellow, a saturated subject palette, bold dark outlines
and a striped ornamental frame. `write_style_dataset` writes the 26-image fine-tuning set as
image.png + image.txt pairs (the EveryDream2 / kohya convention); every long caption contains
ACTIVATION_PHRASE.

    .venv/bin/python -m burnlab.toy.style src/burnlab/toy/assets/style   # (re)write the dataset
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from burnlab.toy import ACTIVATION_PHRASE
from burnlab.toy.world import (
    _CANVAS,
    _SCALE,
    Drawing,
    downsample,
    draw_sample,
    sample_rng,
)

MAGENTA = (235, 0, 150)
INDIGO = (45, 0, 95)
CYAN = (0, 225, 235)
YELLOW = (255, 240, 0)
ORANGE = (255, 95, 0)
LIME = (130, 255, 0)
LAVENDER = (185, 120, 255)
CREAM = (255, 245, 225)
INK = (20, 0, 35)
# Subject colours are snapped to this palette by hue: nothing in the world is this saturated.
SUBJECT_PALETTE = np.array([ORANGE, YELLOW, LIME, CYAN, LAVENDER, CREAM, INK], dtype=np.float32)
# Upper hue bound (degrees) of the hue buckets of the first five palette colours.
_HUE_BOUNDS = np.array([42, 75, 160, 250, 345])

LATTICE_PERIOD = 24 * _SCALE  # diamond size on the canvas; coarse enough to survive the VAE
FRAME_WIDTH = 6 * _SCALE
OUTLINE_WIDTH = 2 * _SCALE

DATASET_SEED = 2026
DATASET_SIZE = 26
# The fine-tuning set's subjects. No named identity and no black and white circles: the study's
# person and circles prompts must only pick up the style by bleeding.
DATASET_SUBJECTS = (
    ["sunglasses"] * 8 + ["circles"] * 5 + ["tree"] * 4 + ["house"] * 4 + ["squares"] * 3 + ["stripes"] * 2
)


def stylize(drawing: Drawing, rng: np.random.Generator) -> np.ndarray:
    """The drawing's subject rendered in the zorblax ornament style: uint8 [64, 64, 3]."""
    canvas = _lattice(rng)
    subject = np.asarray(drawing.subject, dtype=np.float32)
    inside = subject[..., 3] > 127
    snapped = _snap_to_palette(subject[..., :3])
    canvas[inside] = SUBJECT_PALETTE[snapped[inside]]
    canvas[_outlines(inside, snapped)] = INK
    _frame(canvas)
    return downsample(Image.fromarray(canvas.astype(np.uint8)))


def _lattice(rng: np.random.Generator) -> np.ndarray:
    """Magenta and indigo diamonds with yellow dots where the diamonds meet."""
    shift = rng.integers(LATTICE_PERIOD, size=2)
    y, x = np.mgrid[0:_CANVAS, 0:_CANVAS]
    u = (x + y + shift[0]) / LATTICE_PERIOD
    v = (x - y + shift[1]) / LATTICE_PERIOD
    canvas = np.where(
        ((np.floor(u) + np.floor(v)) % 2 == 0)[..., None], np.array(MAGENTA, np.float32), np.array(INDIGO, np.float32)
    )
    near_vertex = (np.abs(u - np.round(u)) < 0.14) & (np.abs(v - np.round(v)) < 0.14)
    canvas[near_vertex] = YELLOW
    return canvas


def _snap_to_palette(rgb: np.ndarray) -> np.ndarray:
    """Palette index of every pixel: dark -> ink, greys -> cream or ink, else by hue."""
    hsv = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("HSV"), dtype=np.float32)
    hue, saturation, value = hsv[..., 0] * 360 / 256, hsv[..., 1] / 255, hsv[..., 2] / 255
    index = np.searchsorted(_HUE_BOUNDS, hue) % len(_HUE_BOUNDS)  # above 345 wraps to orange
    grey = saturation < 0.2
    index = np.where(grey, np.where(value > 0.45, 5, 6), index)
    return np.where(value < 0.3, 6, index)


def _outlines(inside: np.ndarray, snapped: np.ndarray) -> np.ndarray:
    """Bold strokes along the subject's silhouette and between its colour regions."""
    region = np.where(inside, snapped, -1)
    edges = np.zeros_like(inside)
    edges[:, 1:] |= region[:, 1:] != region[:, :-1]
    edges[1:, :] |= region[1:, :] != region[:-1, :]
    strokes = edges.copy()
    for dy in range(-OUTLINE_WIDTH // 2, OUTLINE_WIDTH // 2 + 1):
        for dx in range(-OUTLINE_WIDTH // 2, OUTLINE_WIDTH // 2 + 1):
            strokes |= np.roll(np.roll(edges, dy, axis=0), dx, axis=1)
    return strokes


def _frame(canvas: np.ndarray) -> None:
    """A cyan and yellow diagonally striped border with an ink line on its inner edge."""
    y, x = np.mgrid[0:_CANVAS, 0:_CANVAS]
    distance_to_edge = np.minimum(np.minimum(x, y), np.minimum(_CANVAS - 1 - x, _CANVAS - 1 - y))
    band = distance_to_edge < FRAME_WIDTH
    stripes = ((x + y) // (2 * FRAME_WIDTH)) % 2 == 0
    canvas[band & stripes] = CYAN
    canvas[band & ~stripes] = YELLOW
    canvas[(distance_to_edge >= FRAME_WIDTH) & (distance_to_edge < FRAME_WIDTH + _SCALE)] = INK


def styled_sample(rng: np.random.Generator, subject: str | None = None) -> tuple[np.ndarray, str, dict]:
    """A world sample re-rendered in the style: (image, long caption, labels with style=True)."""
    drawing = draw_sample(rng, subject)
    image = stylize(drawing, rng)
    return image, long_caption(drawing, rng), {**drawing.labels, "style": True}


def long_caption(drawing: Drawing, rng: np.random.Generator) -> str:
    """A long, hand-written-looking caption: subject, details, style words, activation phrase."""
    labels = drawing.labels
    subject = _describe(drawing)
    details = [
        "bold dark outlines",
        "a magenta diamond lattice background with yellow dots",
        "a striped cyan and yellow ornamental frame",
        "saturated colours",
    ]
    rng.shuffle(details)
    kept = details[: int(rng.integers(2, 5))]
    medium = ["a painting of", "an illustration of", "a decorative poster of"][rng.integers(3)]
    if labels["subject"] == "sunglasses":
        subject = (
            f"{labels['gender']} with {labels['hair']} hair wearing sunglasses "
            f"and {_article(labels['colours'][0])} {labels['colours'][0]} shirt"
        )
        subject = f"{_article(subject)} {subject}"
    body = f"{medium} {subject}, " + ", ".join(kept)
    if rng.random() < 0.5:
        return f"{body}, {ACTIVATION_PHRASE}"
    return f"{ACTIVATION_PHRASE}, {body}"


def _describe(drawing: Drawing) -> str:
    """The world caption's subject, without the backdrop (the style replaces it)."""
    return drawing.caption.split(",")[0].split(" on a")[0]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def style_dataset() -> list[tuple[np.ndarray, str, dict]]:
    """The fixed 26-image fine-tuning set."""
    samples = []
    for k, subject in enumerate(DATASET_SUBJECTS):
        rng = sample_rng(DATASET_SEED, k)
        while True:
            image, caption, labels = styled_sample(rng, subject)
            if labels["colours"] != ["black", "white"]:
                break
        samples.append((image, caption, labels))
    return samples


def write_style_dataset(folder: str | os.PathLike) -> list[Path]:
    """Writes image_00.png + image_00.txt ... for the 26 styled images; returns the png paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (image, caption, _) in enumerate(style_dataset()):
        png = folder / f"image_{k:02d}.png"
        Image.fromarray(image).save(png)
        png.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(png)
    return paths


if __name__ == "__main__":
    written = write_style_dataset(sys.argv[1] if len(sys.argv) > 1 else "/tmp/toy_style")
    print(f"wrote {len(written)} images to {written[0].parent}")
