"""Fine-tuning data: a folder of captioned images, split into training and validation sets.

Two layouts are read, both searched recursively:
- EveryDream2 / kohya: `name.png` (jpg, jpeg, png, webp) beside `name.txt` holding its caption;
- Hugging Face imagefolder: a `metadata.jsonl` with `file_name` and `text` (or `caption`).
Images are resized (short side) and centre-cropped to the training resolution once, at load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from burnlab.config import DataConfig, ValidationConfig, resolve_path
from burnlab.errors import ConfigError, UserError
from burnlab.store import hash_json, hash_tree

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ImageSet:
    """Images as uint8 [N, 3, H, W] with their captions and source files."""

    images: torch.Tensor
    captions: List[str]
    files: List[Path]

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices) -> "ImageSet":
        indices = list(indices)
        return ImageSet(self.images[indices], [self.captions[i] for i in indices], [self.files[i] for i in indices])


@dataclass
class StudyData:
    train: ImageSet
    validation: ImageSet  # may be empty
    stabilize: ImageSet  # fixed subset of the training set (may be empty)
    identity: str  # hash of the files and the preprocessing


def scan_captioned_folder(folder: Path, key: str, default_caption: Optional[str]) -> List[Tuple[Path, str]]:
    """(image, caption) pairs of a folder; raises UserError naming what is wrong."""
    if not folder.is_dir():
        raise ConfigError(key, str(folder), "an existing folder of images with .txt captions or a metadata.jsonl")
    metadata = folder / "metadata.jsonl"
    if metadata.exists():
        return _read_metadata(metadata, default_caption)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UserError(f"the data folder {folder} (config key `{key}`) holds no images: "
                        f"expected files ending in {', '.join(IMAGE_SUFFIXES)}, searched recursively.")
    pairs, missing = [], []
    for image in images:
        caption_file = image.with_suffix(".txt")
        if caption_file.exists():
            pairs.append((image, caption_file.read_text(encoding="utf-8").strip()))
        elif default_caption is not None:
            pairs.append((image, default_caption))
        else:
            missing.append(image)
    if missing:
        shown = ", ".join(str(p.relative_to(folder)) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(f"{len(missing)} image(s) in {folder} have no caption file (a .txt with the same "
                        f"name): {shown}{more}. Add the captions, or set `data.default_caption` to "
                        f"train those images on one caption.")
    return pairs


def caption_source(image: Path, folder: Path) -> str:
    """Where `scan_captioned_folder(folder)` read an image's caption, relative to the folder: its
    .txt, its metadata.jsonl row, or `data.default_caption`."""
    if (folder / "metadata.jsonl").exists():
        return f"metadata.jsonl ({_relative(image, folder)})"
    caption_file = image.with_suffix(".txt")
    if caption_file.exists():
        return _relative(caption_file, folder)
    return f"{_relative(image, folder)} (data.default_caption)"


def _relative(path: Path, folder: Path) -> str:
    # a metadata.jsonl row may name an image outside its folder by an absolute path
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def _read_metadata(metadata: Path, default_caption: Optional[str]) -> List[Tuple[Path, str]]:
    pairs = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = metadata.parent / row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{metadata} line {number} is not a JSON object with a `file_name`: {line[:80]!r}.") from None
        caption = row.get("text", row.get("caption", default_caption))
        if caption is None:
            raise UserError(f"{metadata} line {number} ({row['file_name']}) has no `text` caption; add one "
                            f"or set `data.default_caption`.")
        if not image.is_file():
            raise UserError(f"{metadata} line {number} names {row['file_name']}, which does not exist.")
        pairs.append((image, str(caption).strip()))
    if not pairs:
        raise UserError(f"{metadata} lists no images.")
    return pairs


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """uint8 [3, R, R]: short side resized to R, centre crop."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"the image {path} cannot be read ({error}); fix or remove it.") from None
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def load_image_set(pairs: List[Tuple[Path, str]], resolution: int) -> ImageSet:
    images = torch.stack([load_image(path, resolution) for path, _ in pairs]) if pairs else \
        torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return ImageSet(images, [caption for _, caption in pairs], [path for path, _ in pairs])


def load_study_data(data: DataConfig, validation: ValidationConfig) -> StudyData:
    folder = resolve_path(data.path)
    pairs = scan_captioned_folder(folder, "data.path", data.default_caption)
    files = [p for p, _ in pairs] + [p.with_suffix(".txt") for p, _ in pairs if p.with_suffix(".txt").exists()]
    if (folder / "metadata.jsonl").exists():
        files.append(folder / "metadata.jsonl")
    if validation.path:
        val_folder = resolve_path(validation.path)
        val_pairs = scan_captioned_folder(val_folder, "validation.path", data.default_caption)
        train_pairs = pairs
    else:
        val_folder, val_pairs, train_pairs = None, *split_pairs(pairs, validation.split_proportion, validation.split_seed)
    identity_parts = [hash_tree(folder, set(files)), data.resolution, validation.path and hash_tree(
        val_folder, {p for p, _ in val_pairs}), validation.split_proportion, validation.split_seed]
    train = load_image_set(train_pairs, data.resolution)
    rng = np.random.default_rng(validation.split_seed)
    stabilize = train.subset(sorted(rng.permutation(len(train))[: validation.stabilize_count].tolist()))
    return StudyData(train, load_image_set(val_pairs, data.resolution), stabilize, hash_json(identity_parts))


def split_pairs(pairs, proportion: float, seed: int):
    """(validation, training) pairs: a seeded share held out, at least one image left to train."""
    count = min(len(pairs) - 1, round(len(pairs) * proportion))
    held_out = set(np.random.default_rng(seed).permutation(len(pairs))[:count].tolist())
    return [p for i, p in enumerate(pairs) if i in held_out], [p for i, p in enumerate(pairs) if i not in held_out]
