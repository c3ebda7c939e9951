"""CIFAR-10 / CIFAR-100 "python version": pickled dicts, read with a restricted unpickler.

Each batch is a dict with `data` (uint8 [N, 3072]: the red, green and blue 32x32 planes, row-major)
and `labels` (CIFAR-10) or `fine_labels` (CIFAR-100). The original files are Python 2 pickles whose
only globals are numpy's array reconstructors. Unpickling anything else is refused before it runs,
so a crafted file cannot execute code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from fastvit.errors import UserError

from .common import Source, Split, check_count, check_labels, find_dir, require_file


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 pickles of bytes at protocol <= 2 go through _codecs.encode(str, "latin1")
    if encoding != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict:
    """(module, name) -> object: what a CIFAR (or any numpy array) pickle needs, nothing else."""
    from numpy._core import multiarray, numeric

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise _Refused(f"refusing to load {module}.{name}")
        return self.allowed[(module, name)]


def load_pickle(path: Path) -> dict:
    """A CIFAR batch as a dict with str keys; only builtin containers and numpy arrays can be built."""
    require_file(path, "CIFAR pickle batch")
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise UserError(f"{path}: unsafe pickle ({e}); only numpy arrays and builtin containers load") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(f"{path}: damaged or truncated pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _read_batches(paths: list[Path], label_key: str, num_classes: int) -> Split:
    for path in paths:  # all present before reading any
        require_file(path, "CIFAR pickle batch")
    images, labels = [], []
    for path in paths:
        batch = load_pickle(path)
        for key in ("data", label_key):
            if key not in batch:
                raise UserError(f"{path}: no {key!r} entry (keys: {', '.join(map(str, batch))})")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{path}: 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
        batch_labels = check_labels(np.asarray(batch[label_key]), num_classes, path)
        check_count(data, batch_labels, path)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> (N, 32, 32, 3)
        labels.append(batch_labels)
    return Split(labels=np.concatenate(labels), images=np.ascontiguousarray(np.concatenate(images)))


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_cifar10(root: Path) -> Source:
    """`cifar-10-batches-py/` (or its contents): data_batch_1..5, test_batch, batches.meta."""
    d = find_dir(root, ["cifar-10-batches-py"], "data_batch_1")
    classes = list(CIFAR10_CLASSES)
    if (d / "batches.meta").is_file():
        classes = _names(load_pickle(d / "batches.meta").get("label_names", classes))
    train = _read_batches([d / f"data_batch_{i}" for i in range(1, 6)], "labels", len(classes))
    test = _read_batches([d / "test_batch"], "labels", len(classes))
    return Source("cifar10", classes, train, test)


def read_cifar100(root: Path) -> Source:
    """`cifar-100-python/` (or its contents): train, test, meta (fine labels)."""
    d = find_dir(root, ["cifar-100-python"], "train")
    classes = [f"class_{i:02d}" for i in range(100)]
    if (d / "meta").is_file():
        classes = _names(load_pickle(d / "meta").get("fine_label_names", classes))
    if len(classes) != 100:
        raise UserError(f"{d / 'meta'}: {len(classes)} fine label names, expected 100")
    train = _read_batches([d / "train"], "fine_labels", 100)
    test = _read_batches([d / "test"], "fine_labels", 100)
    return Source("cifar100", classes, train, test)
