"""The training images (the style dataset) of a run, for style distance and memorisation.

    folder, why_not = dataset_folder(run)      # from the run's config key data.path
    images = training_images(folder, (64, 64)) # uint8 [M, 64, 64, 3]

The folder holds images with same-name .txt captions, in any sub-folder (jpg, jpeg, png, webp);
every image counts. A relative data.path is looked up beside the run folder first, then from
the current directory (where the study was launched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from burnlab.analysis.images import load_rgb
from burnlab.analysis.run import AnalysisError, Run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def dataset_folder(run: Run) -> tuple[Path | None, str | None]:
    """(the training image folder, None), or (None, why it cannot be used)."""
    data = run.config.get("data")
    path = data.get("path") if isinstance(data, dict) else None
    if not path:
        return None, f"{run.name}: the config has no data.path"
    candidates = (
        [Path(path)]
        if Path(path).is_absolute()
        else [folder / path for folder in (run.local_dir, Path.cwd()) if folder is not None]
    )
    for candidate in candidates:
        if candidate.is_dir() and image_files(candidate):
            return candidate, None
    return None, (
        f"{run.name}: data.path {path!r} is not a folder of training images "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


def training_images(folder: Path, size: tuple[int, int]) -> np.ndarray:
    """Every training image, centre-cropped to the aspect of `size` = (width, height) and
    resized to it: uint8 [M, height, width, 3]."""
    return np.stack([crop_resize(decode_training_image(path), size) for path in image_files(folder)])


def decode_training_image(path: Path) -> np.ndarray:
    try:
        return load_rgb(path)
    except OSError as error:
        raise AnalysisError(
            f"training image {path} cannot be decoded ({error}); expected the "
            f"training set's images to be complete jpg/png/webp files."
        ) from None


def crop_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = pixels.shape[:2]
    aspect = size[0] / size[1]
    crop_w, crop_h = min(width, round(height * aspect)), min(height, round(width / aspect))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    image = Image.fromarray(pixels[top : top + crop_h, left : left + crop_w])
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))
