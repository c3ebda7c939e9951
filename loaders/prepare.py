"""`fastvit data prepare | info`: standard dataset files -> `DATASET-{train,test}.beton` (+ sidecars).

    prepare("cifar10", Path("~/data"), Path("data"))        # reads the files of SPEC section 5
    prepare("svhn", None, Path("data"), download=True)      # fetches them first (into out/downloads)
    ensure_prepared("fashion-mnist", data_dir=None, cache_dir=Path("~/.cache/fastvit"))
"""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fastvit.errors import UserError

from . import beton
from .sources.common import Source


@dataclass(frozen=True)
class _Entry:
    reader: str  # "module:function" under fastvit.loaders.sources, imported on use
    default_dir: Path | None = None  # where a system package installs the files, if any


_REGISTRY = {
    "cifar10": _Entry("cifar:read_cifar10"),
    "cifar100": _Entry("cifar:read_cifar100"),
    "svhn": _Entry("matlab:read_svhn"),
    "cinic10": _Entry("folders:read_cinic10"),
    "tiny-imagenet": _Entry("folders:read_tiny_imagenet"),
    "aircraft": _Entry("fine_grained:read_aircraft"),
    "cars": _Entry("fine_grained:read_cars"),
    "flowers102": _Entry("fine_grained:read_flowers102"),
    "fashion-mnist": _Entry("idx:read_fashion_mnist", Path("/usr/share/datasets/fashion-mnist")),
    "imagefolder": _Entry("folders:read_imagefolder"),
}
DATASETS = tuple(_REGISTRY)


def _entry(dataset: str) -> _Entry:
    if dataset not in _REGISTRY:
        raise UserError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    return _REGISTRY[dataset]


def read_source(dataset: str, src: Path) -> Source:
    """Read a dataset's standard files under `src` (no writing)."""
    module, function = _entry(dataset).reader.split(":")
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"{src}: not a directory (the {dataset} source files)")
    reader = getattr(importlib.import_module(f"fastvit.loaders.sources.{module}"), function)
    return reader(src)


def beton_paths(dataset: str, out: Path) -> tuple[Path, Path]:
    out = Path(out)
    return out / f"{dataset}-train.beton", out / f"{dataset}-test.beton"


def prepare(
    dataset: str,
    src: Path | None,
    out: Path,
    *,
    download: bool = False,
    jpeg_quality: int = 90,
    short_side: int = 256,
    progress: bool = True,
    num_workers: int | None = None,
    checksums: dict[str, str] | None = None,
) -> list[Path]:
    """Write `out/DATASET-train.beton` and `out/DATASET-test.beton` (+ `.json` sidecars).

    src: the directory holding the standard files, or an archive of them (.tar[.gz], .tgz, .zip:
    extracted safely into `out/downloads/DATASET`), or, with `download`, where to put them
    (default `out/downloads/DATASET`). Images up to 64 px are stored raw, larger ones as JPEG of
    `jpeg_quality` with the shorter side scaled down to `short_side`. `checksums` {filename: md5 or
    sha256 hex} verifies downloads that have no published checksum in the code (see download.py).
    `num_workers`: FFCV writer processes (default: 1 for in-memory arrays, all cores for image files).
    Returns the written paths.
    """
    entry = _entry(dataset)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if download:
        from .download import download as fetch

        target = Path(src) if src is not None else out / "downloads" / dataset
        src = fetch(dataset, target, checksums=checksums, progress=progress)
    if short_side < 1:
        raise UserError(f"short side {short_side} must be a positive number of pixels")
    if src is None:
        if entry.default_dir is not None and entry.default_dir.is_dir():
            src = entry.default_dir
        else:
            raise UserError(f"no source for {dataset}: pass --src DIR (its standard files) or --download")
    src = Path(src).expanduser()
    if src.is_file():
        from .download import extract_once

        src = extract_once(src, out / "downloads" / dataset)
    source = read_source(dataset, src)
    # all or nothing: both splits are written into a staging folder, moved into `out` only when both
    # are complete (a bad image in test/ must not leave a new train.beton behind)
    _remove_stale_staging(out, dataset)
    staging = out / f".{dataset}.prepare.tmp{os.getpid()}"
    made_out, written = not out.exists(), None
    try:
        staging.mkdir(parents=True, exist_ok=True)
        staged = beton_paths(dataset, staging)
        for path, (split_name, split) in zip(staged, source.splits().items(), strict=True):
            beton.write_split(
                path,
                split,
                dataset=dataset,
                split_name=split_name,
                classes=source.classes,
                jpeg_quality=jpeg_quality,
                short_side=short_side,
                num_workers=num_workers,
                progress=progress,
                extra_meta={"source": str(Path(src).resolve())},
            )
        for path in beton_paths(dataset, out):  # a sidecar last: a .beton with a stale sidecar never counts as valid
            beton.sidecar_path(path).unlink(missing_ok=True)
        for path, new in zip(beton_paths(dataset, out), staged, strict=True):
            os.replace(new, path)
            os.replace(beton.sidecar_path(new), beton.sidecar_path(path))
        written = list(beton_paths(dataset, out))
    except OSError as e:
        raise UserError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if written is None and made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed prepare leaves no folder it made
    return written


def _remove_stale_staging(out: Path, dataset: str) -> None:
    """Staging folders of killed prepares (their process is gone) would otherwise stay forever."""
    for folder in out.glob(f".{dataset}.prepare.tmp*"):
        pid = folder.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _valid_pair(dataset: str, directory: Path, source: Path | None = None) -> tuple[Path, Path] | None:
    """Both .beton files of `dataset` in `directory` if valid (and prepared from `source`, if given)."""
    pair = beton_paths(dataset, directory)
    for path in pair:
        if not beton.is_valid(path):
            return None
        meta = beton.read_meta(path)
        if meta.get("dataset") != dataset or (source is not None and meta.get("source") != str(source.resolve())):
            return None
    return pair


def _raise_why_invalid(dataset: str, directory: Path) -> None:
    """The UserError saying why `directory`'s prepared files of `dataset` cannot be used."""
    for path in beton_paths(dataset, directory):
        meta = beton.read_meta(path)  # raises on a missing, damaged or mismatched file
        if meta.get("dataset") != dataset:
            raise UserError(f"{path}: holds {meta.get('dataset')!r}, not {dataset!r}")


def ensure_prepared(dataset: str, *, data_dir: Path | None, cache_dir: Path) -> tuple[Path, Path]:
    """(train, test) .beton paths for `dataset`, preparing them into `cache_dir` if needed.

    data_dir: a directory of prepared `DATASET-{train,test}.beton` (used as is), or of the standard
    files; None means the dataset's default location (fashion-mnist: /usr/share/datasets/fashion-mnist,
    from the Debian package dataset-fashion-mnist). Valid files in cache_dir prepared from that same
    source are reused; otherwise the source is prepared into cache_dir. With no source at all,
    valid cached files of any origin are used, else a UserError says how to get the data.
    """
    entry = _entry(dataset)
    cache_dir = Path(cache_dir).expanduser()
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    if data_dir is not None and (pair := _valid_pair(dataset, data_dir)):
        return pair
    if data_dir is not None and beton_paths(dataset, data_dir)[0].exists():
        _raise_why_invalid(dataset, data_dir)  # prepared files, damaged: not a source to read
    src = data_dir if data_dir is not None else entry.default_dir
    have_src = src is not None and src.is_dir()
    if pair := _valid_pair(dataset, cache_dir, src if have_src else None):
        return pair
    if not have_src:
        if beton_paths(dataset, cache_dir)[0].exists():
            _raise_why_invalid(dataset, cache_dir)  # nothing to rebuild them from: say what is wrong
        hint = f" (or install the Debian package dataset-{dataset})" if entry.default_dir else ""
        where = f"{data_dir} does not exist" if data_dir is not None else "no --data-dir given"
        raise UserError(
            f"no prepared {dataset} in {cache_dir} and {where}: run "
            f"`fastvit data prepare {dataset} --src DIR --out {cache_dir}` "
            f"or `fastvit data prepare {dataset} --download --out {cache_dir}`{hint}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # several processes (e.g. torchrun ranks) may arrive together: one prepares, the others wait
    with open(cache_dir / f".{dataset}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pair := _valid_pair(dataset, cache_dir, src):
            return pair
        train, test = prepare(dataset, src, cache_dir)
    return train, test


def info(path: Path) -> str:
    """A human-readable summary of a .beton: count, shape, dtype, classes, mean/std, file size; a
    UserError if it is not a .beton or does not hold what its sidecar says."""
    path = Path(path)
    meta = beton.read_meta(path)  # parses the file first: a non-.beton is named as such
    size = os.path.getsize(path)
    shape = f"{meta['height']}x{meta['width']}x{meta['channels']}"
    if meta.get("variable_size"):
        shape = f"up to {shape} (sizes vary)"
    classes = meta["classes"]
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    storage = meta["storage"] + (f" (quality {meta['jpeg_quality']})" if meta["storage"] == "jpeg" else "")
    lines = [
        f"file      {path} ({size / 2**20:.1f} MiB, agrees with its sidecar)",
        f"dataset   {meta['dataset']} / {meta['split']}",
        f"samples   {meta['count']}",
        f"images    {shape} uint8, stored {storage}",
        f"labels    int64, {meta['num_classes']} classes: {shown}",
        f"mean      {_fmt(meta['mean'])} (0-255 scale)",
        f"std       {_fmt(meta['std'])}",
    ]
    if "class_counts" in meta:
        counts = meta["class_counts"]
        lines.append(f"per class {min(counts)}..{max(counts)} samples")
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


class _CallableModule(type(os)):
    """`fastvit.loaders.prepare` is both this module and, by the package's lazy exports, the
    function: importing the module rebinds the package attribute to the module, so the module
    forwards calls to the function to keep `loaders.prepare(...)` working in either case."""

    def __call__(self, *args, **kwargs):
        return prepare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
