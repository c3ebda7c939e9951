"""Fine-grained sets of large JPEGs with label lists: FGVC-Aircraft, Stanford Cars, Oxford Flowers-102.

These images are stored as JPEG (scaled so the shorter side is at most `short_side`).
- Aircraft: the 100 variants; train = trainval, test = test; the bottom 20 px banner is cut off.
- Cars: labels from the devkit annotation structs (`class`, 1-based); bounding boxes are ignored
  (whole images, as in paper A's fine-tuning); class names from devkit/cars_meta.mat if present.
- Flowers-102: train = trnid + valid, test = tstid (paper B), labels from imagelabels.mat (1-based).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastvit.errors import UserError

from .common import Source, Split, check_count, check_labels, find_dir, require_file
from .matlab import load_mat

AIRCRAFT_BANNER_PX = 20


def _aircraft_list(path: Path, images: Path, index: dict[str, int]) -> Split:
    files, labels = [], []
    for n, line in enumerate(require_file(path, "image list").read_text().splitlines(), 1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in index:
            raise UserError(f"{path}:{n}: unknown variant {variant!r} (not in variants.txt)")
        files.append(require_file(images / f"{image_id}.jpg", "aircraft image"))
        labels.append(index[variant])
    if not files:
        raise UserError(f"{path}: no images listed")
    return Split(labels=np.array(labels, dtype=np.int64), files=files, crop_bottom=AIRCRAFT_BANNER_PX)


def read_aircraft(root: Path) -> Source:
    """fgvc-aircraft-2013b/data: variants.txt, images_variant_{trainval,test}.txt, images/*.jpg."""
    d = find_dir(root, ["fgvc-aircraft-2013b/data", "data"], "images_variant_trainval.txt")
    variants_file = d / "variants.txt"
    if variants_file.is_file():
        classes = [v.strip() for v in variants_file.read_text().splitlines() if v.strip()]
    else:  # variants in order of first appearance would depend on the list: sort them
        lines = require_file(d / "images_variant_trainval.txt", "image list").read_text().splitlines()
        classes = sorted({line.strip().partition(" ")[2] for line in lines if line.strip()})
    index = {v: i for i, v in enumerate(classes)}
    return Source(
        "aircraft",
        classes,
        _aircraft_list(d / "images_variant_trainval.txt", d / "images", index),
        _aircraft_list(d / "images_variant_test.txt", d / "images", index),
    )


def _struct_column(annotations: np.ndarray, field: str, path: Path) -> list:
    """One field of a MATLAB struct array, as a flat Python list."""
    if annotations.dtype.names is None or field not in annotations.dtype.names:
        raise UserError(f"{path}: annotations have no field {field!r} (fields: {annotations.dtype.names})")
    values = []
    for i, v in enumerate(annotations[field].reshape(-1)):
        v = np.asarray(v).reshape(-1)
        if v.size != 1:
            raise UserError(f"{path}: annotation {i} has {v.size} values for {field!r}, expected 1")
        values.append(v[0].item() if isinstance(v[0], np.generic) else v[0])
    return values


def _cars_split(annos: Path, images: Path, num_classes: int) -> Split:
    annotations = load_mat(annos, ("annotations",))["annotations"]
    names = _struct_column(annotations, "fname", annos)
    classes = np.array(_struct_column(annotations, "class", annos), dtype=np.int64)
    labels = check_labels(classes - 1, num_classes, annos)  # 1-based in the devkit
    files = [require_file(images / str(n), "car image") for n in names]
    check_count(files, labels, annos)
    return Split(labels=labels, files=files)


def read_cars(root: Path) -> Source:
    """cars_train/, cars_test/, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat
    (in root or devkit/), devkit/cars_meta.mat (class names)."""
    devkit = root / "devkit"
    meta = devkit / "cars_meta.mat"
    if meta.is_file():
        raw_names = load_mat(meta, ("class_names",))["class_names"].reshape(-1)
        classes = [str(np.asarray(n).reshape(-1)[0]) for n in raw_names]
    else:
        classes = [f"car_{i + 1:03d}" for i in range(196)]
    test_annos = next(
        (p for p in (root / "cars_test_annos_withlabels.mat", devkit / "cars_test_annos_withlabels.mat")
         if p.is_file()),
        root / "cars_test_annos_withlabels.mat",
    )  # fmt: skip
    return Source(
        "cars",
        classes,
        _cars_split(devkit / "cars_train_annos.mat", root / "cars_train", len(classes)),
        _cars_split(test_annos, root / "cars_test", len(classes)),
    )


def read_flowers102(root: Path) -> Source:
    """jpg/image_%05d.jpg, imagelabels.mat (`labels`, 1..102), setid.mat (trnid, valid, tstid)."""
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    all_labels = check_labels(
        np.asarray(load_mat(labels_path, ("labels",))["labels"]).reshape(-1).astype(np.int64) - 1,
        102,
        labels_path,
    )
    sets = load_mat(setid_path, ("trnid", "valid", "tstid"))

    def split(keys: tuple[str, ...]) -> Split:
        ids = np.concatenate([np.asarray(sets[k]).reshape(-1) for k in keys]).astype(np.int64)
        bad = np.flatnonzero((ids < 1) | (ids > len(all_labels)))
        if bad.size:
            raise UserError(f"{setid_path}: image id {ids[bad[0]]} is outside 1..{len(all_labels)}")
        files = [require_file(root / "jpg" / f"image_{i:05d}.jpg", "flower image") for i in ids]
        return Split(labels=all_labels[ids - 1], files=files)

    classes = [f"flower_{i + 1:03d}" for i in range(102)]
    return Source("flowers102", classes, split(("trnid", "valid")), split(("tstid",)))
