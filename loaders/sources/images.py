"""Image files (JPEG, PNG, ...): decoding to RGB arrays and reading sizes from headers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastvit.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    return height, width


def load_image(path: Path, *, crop_bottom: int = 0, short_side: int | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3]: bottom `crop_bottom` rows removed, then the shorter side scaled down
    to `short_side` (never up; antialiased bicubic) when given.

    A large JPEG is decoded directly at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT, still at
    least the size needed), which makes decoding several times faster."""
    try:
        with Image.open(path) as im:
            full_height = im.height
            if crop_bottom and full_height <= crop_bottom:
                raise UserError(f"{path}: image is {full_height} px high, cannot crop {crop_bottom} px")
            if short_side is not None and im.format == "JPEG":
                # 2 spare rows for the crop below, so the result still reaches short_side
                r = (short_side + 2) / min(im.width, full_height - crop_bottom)
                if r < 1:
                    im.draft("RGB", (math.ceil(im.width * r), math.ceil(full_height * r)))
            im = im.convert("RGB")
            if crop_bottom:
                # at a reduced decode scale, one more row: the scaled IDCT blurs the banner's edge
                scaled = crop_bottom * im.height / full_height
                rows = crop_bottom if im.height == full_height else math.ceil(scaled) + 1
                im = im.crop((0, 0, im.width, im.height - rows))
            if short_side is not None and min(im.size) > short_side:
                scale = short_side / min(im.size)
                new_size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(new_size, Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot decode image ({e})") from None
