import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Triton runs on CPU tensors only through its interpreter, and only if this is set before import.
os.environ.setdefault("TRITON_INTERPRET", "1")
# OpenMP threads that spin while waiting collapse throughput when test processes share the 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Measured speed choices (fastvit.choices) go to a fresh cache per session: none read from or left in ~/.cache.
os.environ.setdefault("FASTVIT_CACHE", tempfile.mkdtemp(prefix="fastvit-choices-"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format: big-endian magic 0x0000 08 <ndim>, dims, then uint8 data), gzipped."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def easy_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class is their grey level (20 + 22 c) plus noise: learnable in a few steps, and
    unchanged in kind by flips and shifted crops (a position-coded class would not be)."""
    noise = rng.integers(-8, 9, size=(len(labels), 28, 28))
    return np.clip(20 + 22 * labels.astype(np.int64)[:, None, None] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A small Fashion-MNIST-format dataset (1,024 train / 256 test) in the real IDX .gz files."""
    root = tmp_path_factory.mktemp("fashion-mnist-src")
    rng = np.random.default_rng(0)
    for split, n in (("train", 1024), ("t10k", 256)):
        labels = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(labels)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", easy_images(labels, rng))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, fmnist_dir) -> Path:
    """One .beton cache for the session, holding the small Fashion-MNIST set prepared once."""
    from fastvit import loaders

    cache = tmp_path_factory.mktemp("fastvit-cache")
    loaders.ensure_prepared("fashion-mnist", data_dir=fmnist_dir, cache_dir=cache)
    return cache


@pytest.fixture
def tiny_checkpoint(tmp_path, fmnist_dir, cache_dir) -> Path:
    """A checkpoint as `fastvit train` writes it (untrained vit_tiny on the small Fashion-MNIST set),
    for the commands that read one; no training needed."""
    import torch

    from fastvit import checkpoint, models
    from fastvit.config import Config

    torch.manual_seed(0)
    model = models.create("vit_tiny", img_size=32, num_classes=10, in_chans=1)
    cfg = Config(arch="vit_tiny", dataset="fashion-mnist", data_dir=str(fmnist_dir), cache_dir=str(cache_dir))
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    checkpoint.save({"model": model.state_dict(), "ema": None, "config": cfg.to_dict(), "img_size": 32,
                     "num_classes": 10, "in_chans": 1, "mean": [0.3], "std": [0.3]}, path)
    return path


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs (smaller than one 2 MiB .beton page): writes there fail with ENOSPC. Needs root
    and a kernel that lets this process mount; skipped otherwise."""
    import subprocess

    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
