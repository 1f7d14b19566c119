"""Decoding the data's files: a caption's text and an image's pixels, as they are meant to be
read and seen. Whatever makes a file unusable (a byte that is not UTF-8, a file cut short, an
image too large, one PIL cannot read) raises BadFile saying why, for burnlab.data.dataset to list.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# "I" (32-bit) is how older Pillows open a 16-bit grey PNG
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class BadFile(Exception):
    """A file of the data that cannot be used; the message says why."""


def read_bytes(path: Path) -> bytes:
    """The file's bytes; BadFile when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise BadFile(f"cannot be read ({error.strerror})") from None


def decode_caption(raw: bytes, fallback: Optional[str], offset: int = 0) -> str:
    """A caption's text, stripped: UTF-8 (a leading BOM dropped), else the `fallback` encoding.
    BadFile names the first byte that fails, at its offset (`offset` = where `raw` starts in its file)."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff").strip()
    except UnicodeDecodeError as error:
        if fallback is None:
            raise BadFile(f"not UTF-8 ({_bad_byte(raw, error, offset)})") from None
    try:
        return raw.decode(fallback).strip()
    except UnicodeDecodeError as error:
        raise BadFile(f"neither UTF-8 nor {fallback} ({_bad_byte(raw, error, offset)})") from None


def _bad_byte(raw: bytes, error: UnicodeDecodeError, offset: int) -> str:
    return f"byte 0x{raw[error.start]:02x} at offset {offset + error.start}"


@contextmanager
def _strict_pil():
    """PIL's process-wide switches, set for decoding the data: no decompression-bomb check of
    its own (decode_image checks `data.max_image_pixels` from the header, before decoding), and a
    file cut short fails instead of being padded with grey."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image(path: Path, background: Tuple[int, int, int], max_pixels: int) -> Image.Image:
    """The image as 8-bit RGB, as it is meant to be seen: EXIF orientation applied, 16 bits scaled
    to 8, transparency composited onto `background`. BadFile says why it cannot be used."""
    try:
        with _strict_pil(), Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise BadFile(f"{image.width}x{image.height} pixels, over data.max_image_pixels ({max_pixels})")
            image.load()  # decodes it all: a file cut short fails here
            image = ImageOps.exif_transpose(image)
    except BadFile:
        raise
    except UnidentifiedImageError:
        raise BadFile("not an image (unknown format or corrupt header)") from None
    except OSError as error:
        raise BadFile(f"cannot be read ({error.strerror or error})") from None
    except Exception as error:
        # PIL raises what its format plugin meets on a corrupt file (SyntaxError, struct.error,
        # ValueError, ...): a bad file of the user's, not a bug here
        raise BadFile(f"cannot be decoded ({type(error).__name__}: {error})") from None
    try:
        return _to_rgb(image, background)
    except ValueError as error:  # a mode PIL cannot convert (LAB, HSV: a TIFF under an image suffix)
        raise BadFile(f"colour mode {image.mode} cannot be converted to RGB ({error})") from None


def _to_rgb(image: Image.Image, background: Tuple[int, int, int]) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        # keep the high byte: PIL's own conversion clips every value above 255 to white
        high = np.clip(np.asarray(image), 0, 65535).astype(np.uint16) >> 8
        image = Image.fromarray(high.astype(np.uint8))  # mode L
    if image.mode in ALPHA_MODES or "transparency" in image.info:  # P and L/RGB with a transparent colour too
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # palette, grey, CMYK, YCbCr
