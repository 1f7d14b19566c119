"""Fine-tuning data: a folder of captioned images, split into training and validation sets.

Two layouts are read:
- EveryDream2 / kohya: `name.png` (jpg, jpeg, png, webp) beside `name.txt` holding its caption,
  searched recursively; symbolic links are followed, each real folder searched once (a link
  loop ends there), dangling links left out with a logged note;
- Hugging Face imagefolder: a `metadata.jsonl` with `file_name` and `text` (or `caption`).
Every file is checked in one pass, and every bad one is a problem: an image that cannot be
decoded in full (corrupt, cut short, unreadable, over `data.max_image_pixels`), a missing
caption, a caption that is neither UTF-8 nor `data.caption_encoding`, a bad metadata.jsonl row.
All of them are reported in one error; with `data.skip_bad` they are left out instead, warned
about and listed in study.json (`data_problems`). Images are decoded as they are meant to be
seen (burnlab.data.decoding: EXIF orientation applied, 16 bits scaled to 8, transparency over
`data.background`), then resized (short side) and centre-cropped to the training resolution,
once, at load.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageColor

from burnlab.config.compose import resolve_path
from burnlab.config.schema import DataConfig, ValidationConfig
from burnlab.data.decoding import BadFile, decode_caption, decode_image, read_bytes
from burnlab.errors import ConfigError, UserError
from burnlab.store.files import hash_json, sha256_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SHOWN = 10  # problems named in the error or warning (study.json lists them all)

log = logging.getLogger("burnlab")


@dataclass
class Problem:
    folder: str  # the config key of its data folder: data.path or validation.path
    path: str  # relative to that folder
    problem: str

    def __str__(self) -> str:
        where = "" if self.folder == "data.path" else f"{self.folder}: "
        return f"{where}{self.path}: {self.problem}"


@dataclass
class ImageSet:
    """Images as uint8 [N, 3, H, W] with their captions and source files."""

    images: torch.Tensor
    captions: List[str]
    files: List[Path]
    # SDXL's size and crop conditioning of each image, unflipped [:, 0] and flipped [:, 1]: original
    # (height, width), crop top-left (y, x) in the resized image (`crop_sizes`); None = uncropped squares
    sizes: Optional[torch.Tensor] = None  # int [N, 2, 4]

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices) -> "ImageSet":
        indices = list(indices)
        return ImageSet(
            self.images[indices],
            [self.captions[i] for i in indices],
            [self.files[i] for i in indices],
            None if self.sizes is None else self.sizes[indices],
        )


@dataclass
class StudyData:
    train: ImageSet
    validation: ImageSet  # may be empty
    stabilize: ImageSet  # fixed subset of the training set (may be empty)
    identity: str  # hash of the files used, their captions and the preprocessing
    skipped: List[Problem] = field(default_factory=list)  # bad files left out (data.skip_bad)

    def problems_record(self) -> dict:
        """study.json's `data_problems` (docs/run_store.md)."""
        return {"skipped": len(self.skipped), "files": [dataclasses.asdict(p) for p in self.skipped]}


def scan_captioned_folder(
    folder: Path, key: str, data: DataConfig, problems: List[Problem]
) -> Iterator[Tuple[Path, str]]:
    """The (image, caption) pairs of a folder, in order; a missing or undecodable caption (or
    metadata.jsonl row) is appended to `problems` where it is met, so that the caller's problems
    with the images fall in between, in the same order. Raises UserError for a folder without images."""
    if not folder.is_dir():
        raise ConfigError(key, str(folder), "an existing folder of images with .txt captions or a metadata.jsonl")
    metadata = folder / "metadata.jsonl"
    if metadata.exists():
        yield from _read_metadata(metadata, key, data, problems)
        return
    images = _find_images(folder, key, problems)
    if not images and not problems:
        raise UserError(
            f"the data folder {folder} (config key `{key}`) holds no images: "
            f"expected files ending in {', '.join(IMAGE_SUFFIXES)}, searched recursively."
        )
    for image in images:
        caption_file = image.with_suffix(".txt")
        if not os.path.isfile(caption_file):
            if data.default_caption is None:
                problems.append(Problem(key, _relative(image, folder), f"no caption ({caption_file.name})"))
            else:
                yield image, data.default_caption
            continue
        try:
            caption = decode_caption(read_bytes(caption_file), data.caption_encoding)
        except BadFile as bad:
            problems.append(Problem(key, _relative(caption_file, folder), str(bad)))
            continue
        yield image, caption


def _find_images(folder: Path, key: str, problems: List[Problem]) -> List[Path]:
    """The image files under `folder`, sorted. Symbolic links are followed, but a folder already
    searched (a link loop, a second link to one folder) or holding the data folder is not
    searched again; dangling links (and loops of file links) are left out. Both get a logged note."""
    top = os.path.realpath(folder)
    searched, images, left_out = {top}, [], []

    def unlistable(error: OSError) -> None:
        problems.append(
            Problem(key, _relative(Path(error.filename), folder), f"folder cannot be listed ({error.strerror})")
        )

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unlistable):
        dirs.sort()  # a folder reached twice is searched where it comes first, the same every run
        for name in list(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if real in searched or os.path.commonpath([real, top]) == real:
                dirs.remove(name)
                left_out.append(f"{_relative(Path(root, name), folder)} (a folder already searched)")
            searched.add(real)
        for name in sorted(files):
            path = Path(root, name)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError as error:
                if error.errno in (errno.ENOENT, errno.ELOOP):
                    left_out.append(f"{_relative(path, folder)} (a dangling link or a loop of links)")
                else:  # e.g. a folder that can be listed but not entered
                    problems.append(Problem(key, _relative(path, folder), f"cannot be read ({error.strerror})"))
                continue
            if regular:
                images.append(path)
            else:  # a fifo or a device would block or mislead the decoder
                left_out.append(f"{_relative(path, folder)} (not a file)")
    if left_out:
        log.warning("left out %d path(s) under %s: %s", len(left_out), folder, "; ".join(left_out[:SHOWN]))
    return sorted(images)


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


def _read_metadata(metadata: Path, key: str, data: DataConfig, problems: List[Problem]) -> Iterator[Tuple[Path, str]]:
    folder = metadata.parent
    try:
        raw = read_bytes(metadata)
    except BadFile as bad:
        problems.append(Problem(key, metadata.name, str(bad)))
        return
    offset, rows = 0, 0
    for number, line in enumerate(raw.split(b"\n"), 1):
        start, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        rows += 1
        try:
            row = _metadata_row(line, start, folder, data)
        except BadFile as bad:
            problems.append(Problem(key, f"{metadata.name} line {number}", str(bad)))
            continue
        yield row
    if not rows:
        raise UserError(f"{metadata} lists no images.")


def _metadata_row(line: bytes, start: int, folder: Path, data: DataConfig) -> Tuple[Path, str]:
    """One metadata.jsonl row as (image, caption); `start`: the row's byte offset in the file."""
    text = decode_caption(line, data.caption_encoding, start)
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        row = None
    if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
        raise BadFile(f"not a JSON object with a `file_name`: {text[:80]!r}")
    caption = row.get("text", row.get("caption", data.default_caption))
    if caption is None:
        raise BadFile(f"{row['file_name']} has no `text` caption")
    image = folder / row["file_name"]
    if not os.path.isfile(image):
        raise BadFile(f"names {row['file_name']}, which does not exist")
    return image, str(caption).strip()


def load_image(
    path: Path, resolution: int, background: Tuple[int, int, int], max_pixels: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, R, R]: decoded (decode_image), short side resized to R, centre crop; and its
    `crop_sizes`."""
    image = decode_image(path, background, max_pixels)
    original = image.size
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return pixels, crop_sizes(original, size, (top, left), resolution)


def crop_sizes(original: Tuple[int, int], resized: Tuple[int, int], top_left: Tuple[int, int], resolution: int):
    """int [2, 4]: (original height, original width, crop top, crop left) of an image as trained
    unflipped and flipped, what SDXL's UNet reads as `add_time_ids` before the target size (as
    diffusers' and kohya's SDXL trainers compute it: the size before resizing, the crop's corner in
    the resized image). A horizontal flip mirrors the crop: its left edge becomes the resized
    width less the crop's right edge. (width, height) pairs as PIL gives them."""
    (width, height), top, left = original, *top_left
    mirrored = resized[0] - left - resolution
    return torch.tensor([[height, width, top, left], [height, width, top, mirrored]], dtype=torch.int64)


def read_folder(folder: Path, key: str, data: DataConfig, problems: List[Problem]) -> ImageSet:
    """The usable images of a data folder with their captions; each bad file is appended to
    `problems` and left out."""
    background = ImageColor.getrgb(data.background)
    images, sizes, captions, files = [], [], [], []
    for path, caption in scan_captioned_folder(folder, key, data, problems):
        try:
            pixels, size = load_image(path, data.resolution, background, data.max_image_pixels)
        except BadFile as bad:
            problems.append(Problem(key, _relative(path, folder), str(bad)))
            continue
        images.append(pixels)
        sizes.append(size)
        captions.append(caption)
        files.append(path)
    if not images:
        return ImageSet(torch.zeros(0, 3, data.resolution, data.resolution, dtype=torch.uint8), [], [])
    return ImageSet(torch.stack(images), captions, files, torch.stack(sizes))


def load_study_data(data: DataConfig, validation: ValidationConfig) -> StudyData:
    problems: List[Problem] = []
    folder = resolve_path(data.path)
    every = read_folder(folder, "data.path", data, problems)
    val_folder = resolve_path(validation.path) if validation.path else None
    held_out = read_folder(val_folder, "validation.path", data, problems) if val_folder else None
    _settle(problems, data.skip_bad, folder)
    _require_left(every, 2, "data.path", folder, problems)
    if held_out is not None:
        _require_left(held_out, 1, "validation.path", val_folder, problems)
        train, val = every, held_out
    else:
        val_indices, train_indices = split_indices(len(every), validation.split_proportion, validation.split_seed)
        train, val = every.subset(train_indices), every.subset(val_indices)
    read = [(every, folder)] + ([(held_out, val_folder)] if held_out is not None else [])
    _warn_empty_captions(read)
    # the paths of the folders are left out: a moved or renamed folder holds the same data
    identity_parts = [
        [_content(images, where) for images, where in read],
        data.resolution,
        ImageColor.getrgb(data.background),
        validation.split_proportion,
        validation.split_seed,
    ]
    rng = np.random.default_rng(validation.split_seed)
    stabilize = train.subset(sorted(rng.permutation(len(train))[: validation.stabilize_count].tolist()))
    return StudyData(train, val, stabilize, hash_json(identity_parts), problems)


def _settle(problems: List[Problem], skip_bad: bool, folder: Path) -> None:
    """Stop on the problems found, or (data.skip_bad) warn about them."""
    if not problems:
        return
    count = f"{len(problems)} bad file(s)"
    shown = "; ".join(str(p) for p in problems[:SHOWN])
    listing = f"{shown}; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else shown
    if not skip_bad:
        raise UserError(
            f"{count} in the data folder {folder}: {listing}. Fix or remove them (images without a "
            f"caption can take `data.default_caption` instead, captions not in UTF-8 "
            f"`data.caption_encoding`, e.g. cp1252), or set `data.skip_bad=true` to train without them."
        )
    log.warning(
        "data.skip_bad: left out %s in the data folder %s: %s. study.json lists them all (`data_problems`).",
        count,
        folder,
        listing,
    )


def _require_left(images: ImageSet, minimum: int, key: str, folder: Path, problems: List[Problem]) -> None:
    if problems and len(images) < minimum:
        raise UserError(
            f"after leaving out {len(problems)} bad file(s) (data.skip_bad), the folder {folder} "
            f"(`{key}`) keeps {len(images)} usable image(s); at least {minimum} are needed. "
            f"Fix the files the warning above lists."
        )


def _warn_empty_captions(sets: List[Tuple[ImageSet, Path]]) -> None:
    """Empty captions are trained (like EveryDream2 and kohya: the image without text, as caption
    dropout does), but counted in one warning, since an empty .txt is more often a slip."""
    empty = [
        caption_source(file, folder)
        for images, folder in sets
        for file, caption in zip(images.files, images.captions)
        if not caption
    ]
    if empty:
        log.warning(
            "%d image(s) have an empty caption and train on no text (e.g. %s).", len(empty), "; ".join(empty[:SHOWN])
        )


def _content(images: ImageSet, folder: Path) -> list:
    """What the data identity hashes of a folder's images: each one used, by its path in the
    folder and its bytes, with its caption as decoded (so `data.caption_encoding` counts when used)."""
    return [
        [_relative(file, folder), sha256_file(file), caption] for file, caption in zip(images.files, images.captions)
    ]


def split_indices(count: int, proportion: float, seed: int) -> Tuple[List[int], List[int]]:
    """(validation, training) indices: a seeded share held out, at least one image left to train."""
    held = min(count - 1, round(count * proportion))
    held_out = set(np.random.default_rng(seed).permutation(count)[:held].tolist())
    return [i for i in range(count) if i in held_out], [i for i in range(count) if i not in held_out]
