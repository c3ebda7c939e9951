"""What every reader returns, and the checks they share.

A reader turns a dataset's standard files into a `Source`: class names plus a train and a test
`Split`. Small datasets are decoded into one uint8 array in memory; datasets of image files keep
the file list and are decoded while the .beton is written (in FFCV's writer processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastvit.errors import UserError

# Images whose longer side is at most this many pixels are stored raw; larger ones as JPEG.
RAW_MAX_SIDE = 64


@dataclass
class Split:
    """One split as read from the standard files; exactly one of `images` / `files` is set."""

    labels: np.ndarray  # int64 [N], values in [0, num_classes)
    images: np.ndarray | None = None  # uint8 [N, H, W, C], already decoded
    files: list[Path] | None = None  # or: one image file per label, decoded while writing
    size: tuple[int, int] | None = None  # (H, W) every file image must have; None = sizes vary
    crop_bottom: int = 0  # rows cut off the bottom of every file image (the aircraft banner)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    """A dataset read from its standard files."""

    name: str
    classes: list[str]  # index = label
    train: Split
    test: Split

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "test": self.test}


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else a one-line UserError naming it."""
    if not path.is_file():
        raise UserError(f"{path}: missing ({what})")
    return path


def find_dir(root: Path, names: Sequence[str], marker: str) -> Path:
    """The first of root, root/name... that contains `marker` (users point --src at either level)."""
    for candidate in [root, *(root / n for n in names)]:
        if (candidate / marker).exists():
            return candidate
    tried = ", ".join(str(root / n / marker) for n in ("", *names))
    raise UserError(f"{root}: cannot find {marker} (looked for {tried})")


def check_labels(labels: np.ndarray, num_classes: int, origin: Path | str) -> np.ndarray:
    """Labels as int64 [N]; a UserError naming `origin` if any is outside [0, num_classes)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise UserError(f"{origin}: labels are not integers")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{origin}: label {int(labels[i])} at index {i} is out of range (expected 0..{num_classes - 1})"
        )
    return labels


def check_images(images: np.ndarray, origin: Path | str) -> np.ndarray:
    """A uint8 [N, H, W, C] array with C in {1, 3}, or a UserError naming `origin`."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(
            f"{origin}: expected uint8 images [N, H, W, 1 or 3], got {images.dtype} {list(images.shape)}"
        )
    return np.ascontiguousarray(images)


def check_count(images_or_files: Sequence | np.ndarray, labels: np.ndarray, origin: Path | str) -> None:
    if len(images_or_files) != len(labels):
        raise UserError(f"{origin}: {len(images_or_files)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise UserError(f"{origin}: no images")
