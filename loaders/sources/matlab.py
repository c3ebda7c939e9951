"""MATLAB .mat files: SVHN's cropped-digits format, and the helper the fine-grained readers share.

SVHN `{train,test}_32x32.mat` (MATLAB v5): `X` uint8 [32, 32, 3, N], `y` [N, 1] with digits 1..10,
where 10 stands for the digit 0. The optional `extra_32x32.mat` is not used (paper A trains on
`train` only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastvit.errors import UserError

from .common import Source, Split, check_count, require_file


def load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    """The named variables of a .mat file; a UserError naming the file and the missing key."""
    import scipy.io

    require_file(path, "MATLAB .mat file")
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:
        raise UserError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save as v5 (-v7)") from None
    except (ValueError, TypeError, OSError, EOFError, IndexError, KeyError, AssertionError) as e:
        raise UserError(f"{path}: damaged or truncated .mat file ({type(e).__name__}: {e})") from None
    for key in keys:
        if key not in mat:
            present = ", ".join(k for k in mat if not k.startswith("__")) or "none"
            raise UserError(f"{path}: no variable {key!r} (variables: {present})")
    return mat


def _read_svhn_split(path: Path) -> Split:
    mat = load_mat(path, ("X", "y"))
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise UserError(f"{path}: 'X' is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, N]")
    bad = np.flatnonzero((y < 1) | (y > 10) | (y != np.round(y)))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{path}: label {y[i]} at index {i} is out of range (expected 1..10)")
    digits = y.astype(np.int64)
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # (N, 32, 32, 3)
    check_count(images, digits, path)
    return Split(labels=digits % 10, images=images)  # 10 means the digit 0


def read_svhn(root: Path) -> Source:
    """SVHN from train_32x32.mat and test_32x32.mat in `root`."""
    return Source(
        name="svhn",
        classes=[str(d) for d in range(10)],
        train=_read_svhn_split(root / "train_32x32.mat"),
        test=_read_svhn_split(root / "test_32x32.mat"),
    )
