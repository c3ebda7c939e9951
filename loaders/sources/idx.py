"""IDX files (MNIST family): Fashion-MNIST.

IDX layout: a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), one big-endian
uint32 per dimension, then the values in C order, big-endian. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fastvit.errors import UserError

from .common import Source, Split, check_count, check_labels, require_file

# IDX dtype codes -> numpy dtypes (big-endian as stored).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# The Debian package dataset-fashion-mnist installs the four files here.
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzip or plain), in native byte order."""
    require_file(path, "IDX file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot decompress ({e}); the file is damaged or truncated") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"{path}: IDX header promises shape {list(shape)} ({expected} bytes) "
            f"but holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(f"{root / (stem + '.gz')}: missing (Fashion-MNIST IDX file)")


def _read_split(root: Path, prefix: str) -> Split:
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}"
        raise UserError(f"{images_path}: expected uint8 images [N, H, W], got {got}")
    if labels.ndim != 1:
        raise UserError(f"{labels_path}: expected labels [N], got shape {list(labels.shape)}")
    labels = check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)
    check_count(images, labels, images_path)
    return Split(labels=labels, images=images[..., None])  # (N, 28, 28, 1)


def read_fashion_mnist(root: Path) -> Source:
    """Fashion-MNIST from {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in `root`."""
    return Source(
        name="fashion-mnist",
        classes=list(FASHION_MNIST_CLASSES),
        train=_read_split(root, "train"),
        test=_read_split(root, "t10k"),
    )
