"""Image files (JPEG, PNG, ...): decoding to RGB arrays and reading sizes from headers."""

from __future__ import annotations

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
    to `short_side` (never up; antialiased bicubic) when given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if crop_bottom:
                if im.height <= crop_bottom:
                    raise UserError(f"{path}: image is {im.height} px high, cannot crop {crop_bottom} px")
                im = im.crop((0, 0, im.width, im.height - crop_bottom))
            if short_side is not None and min(im.size) > short_side:
                scale = short_side / min(im.size)
                new_size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(new_size, Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot decode image ({e})") from None
