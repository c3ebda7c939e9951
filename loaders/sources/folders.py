"""Trees of image files: CINIC-10, Tiny-ImageNet and a user's `root/<split>/<class>/*` folder.

Images are not decoded here: the writer decodes them in its worker processes. Splits of small
images (at most 64 px) must have one size, which the writer checks image by image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastvit.errors import UserError

from .common import RAW_MAX_SIDE, Source, Split, find_dir, require_file
from .images import image_size, is_image_file


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if is_image_file(p))


def _class_tree(split_dir: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """(classes, files, labels) of `split_dir/<class>/*`; with `classes` given, the directory's
    classes must be among them (a test split may lack some)."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: missing (a directory of class folders)")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    if classes is None:
        classes = found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise UserError(f"{split_dir / unknown[0]}: class {unknown[0]!r} is not among the training classes")
    files, labels = [], []
    for name in found:
        images = _images_in(split_dir / name)
        if not images:
            raise UserError(f"{split_dir / name}: empty class (no image files)")
        files += images
        labels += [classes.index(name)] * len(images)
    return classes, files, np.array(labels, dtype=np.int64)


def read_cinic10(root: Path) -> Source:
    """CINIC-10: train/ and test/ with one folder per class of 32x32 PNGs (valid/ is not used)."""
    d = find_dir(root, ["CINIC-10", "cinic-10"], "train")
    classes, train_files, train_labels = _class_tree(d / "train")
    if len(classes) != 10:
        raise UserError(f"{d / 'train'}: {len(classes)} class folders, CINIC-10 has 10")
    _, test_files, test_labels = _class_tree(d / "test", classes)
    return Source(
        "cinic10",
        classes,
        Split(labels=train_labels, files=train_files, size=(32, 32)),
        Split(labels=test_labels, files=test_files, size=(32, 32)),
    )


def read_tiny_imagenet(root: Path) -> Source:
    """Tiny-ImageNet-200: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt
    (the labelled validation set is the test split; the official test set has no labels)."""
    d = find_dir(root, ["tiny-imagenet-200"], "wnids.txt")
    wnids = require_file(d / "wnids.txt", "class ids").read_text().split()
    if len(set(wnids)) != len(wnids) or not wnids:
        raise UserError(f"{d / 'wnids.txt'}: empty or repeated class ids")
    index = {w: i for i, w in enumerate(wnids)}
    classes = list(wnids)
    words = d / "words.txt"
    if words.is_file():  # readable names: "n01443537<TAB>goldfish, Carassius auratus"
        names = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
        classes = [names.get(w, w).split(",")[0].strip() for w in wnids]
    train_files, train_labels = [], []
    for wnid in wnids:
        images = _images_in(d / "train" / wnid / "images") if (d / "train" / wnid / "images").is_dir() else []
        if not images:
            raise UserError(f"{d / 'train' / wnid / 'images'}: missing or empty class folder")
        train_files += images
        train_labels += [index[wnid]] * len(images)
    annotations = require_file(d / "val" / "val_annotations.txt", "validation labels")
    test_files, test_labels = [], []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise UserError(f"{annotations}:{n}: unknown class id {parts[1]!r} (not in wnids.txt)")
        test_files.append(require_file(d / "val" / "images" / parts[0], "validation image"))
        test_labels.append(index[parts[1]])
    if not test_files:
        raise UserError(f"{annotations}: no labelled images")
    return Source(
        "tiny-imagenet",
        classes,
        Split(labels=np.array(train_labels, dtype=np.int64), files=train_files, size=(64, 64)),
        Split(labels=np.array(test_labels, dtype=np.int64), files=test_files, size=(64, 64)),
    )


def _common_size(files: list[Path]) -> tuple[int, int] | None:
    """The one (H, W) of small images (stored raw), or None when any is larger than 64 px (JPEG);
    small images of several sizes are an error naming the first odd file."""
    sizes = [image_size(f) for f in files]
    if max(max(s) for s in sizes) > RAW_MAX_SIDE:
        return None
    for f, s in zip(files, sizes, strict=True):
        if s != sizes[0]:
            raise UserError(
                f"{f}: image is {s[1]}x{s[0]} but {files[0].name} is {sizes[0][1]}x{sizes[0][0]} "
                f"(mixed image sizes; images up to {RAW_MAX_SIDE} px must share one size)"
            )
    return sizes[0]


def read_imagefolder(root: Path) -> Source:
    """A user's tree: root/train/<class>/* and root/test/<class>/* (or root/val/<class>/*)."""
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise UserError(f"{root}: expected train/<class>/<image> and test/<class>/<image> (or val/) under it")
    classes, train_files, train_labels = _class_tree(root / "train")
    _, test_files, test_labels = _class_tree(test_dir, classes)
    return Source(
        "imagefolder",
        classes,
        Split(labels=train_labels, files=train_files, size=_common_size(train_files)),
        Split(labels=test_labels, files=test_files, size=_common_size(test_files)),
    )
