"""Write and read FFCV .beton files, each with a JSON sidecar describing it.

Layout of a fastvit .beton: two FFCV fields, `image` then `label` (IntField, int64).
- `image` is an `NDArrayField` of uint8 (H, W, C) when every image is at most 64 px on its longer
  side and all have one size ("raw" storage: bytes exactly as read, C = 1 or 3);
- otherwise an `RGBImageField` in JPEG mode ("jpeg" storage, variable sizes, C = 3).
The sidecar `<name>.beton.json` holds dataset, split, classes, count, height, width, channels,
per-channel pixel mean/std on the 0-255 scale, storage and `format_version`. It is written last, so a
.beton without a matching sidecar is an unfinished write; both files are renamed into place only
when complete.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastvit
from fastvit.errors import UserError

from .sources.common import RAW_MAX_SIDE, Split
from .sources.images import load_image

FORMAT_VERSION = 1
IMAGE_FIELD, LABEL_FIELD = "image", "label"
PAGE_SIZE = 1 << 21  # FFCV's smallest page: a tiny split stays a small file
READ_BATCH = 4096  # samples per chunk when streaming a file back


def sidecar_path(beton: Path) -> Path:
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def _import_ffcv():
    """Import ffcv, undoing its side effect of setting torch's thread count to 1."""
    import torch

    threads = torch.get_num_threads()
    import ffcv.reader
    import ffcv.writer

    torch.set_num_threads(threads)
    return ffcv


# ---------------------------------------------------------------- pixel statistics


class PixelStats:
    """Exact per-channel mean/std of uint8 pixels, from a 256-bin histogram per channel."""

    def __init__(self, channels: int):
        self.hist = np.zeros((channels, 256), dtype=np.int64)

    def update(self, images: np.ndarray) -> None:
        flat = images.reshape(-1, self.hist.shape[0])  # (pixels, C)
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(flat[:, c], minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]]:
        values = np.arange(256, dtype=np.float64)
        n = self.hist.sum(axis=1)
        mean = self.hist @ values / n
        var = self.hist @ (values**2) / n - mean**2
        return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()


# ---------------------------------------------------------------- writing


class _Samples:
    """Indexable (image, label) view of a Split for FFCV's writer; file images decode in its workers."""

    def __init__(self, split: Split, storage: str, short_side: int, shape: tuple[int, ...]):
        self.split, self.storage, self.short_side, self.shape = split, storage, short_side, shape

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        label = int(self.split.labels[i])
        if self.split.images is not None:
            return self.split.images[i], label
        path = self.split.files[i]
        resize = self.short_side if self.storage == "jpeg" else None
        image = load_image(path, crop_bottom=self.split.crop_bottom, short_side=resize)
        if self.storage == "raw" and image.shape != self.shape:
            raise UserError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]}, "
                f"the others are {self.shape[1]}x{self.shape[0]} (mixed image sizes)"
            )
        return image, label


def _worker(errors, *args) -> None:
    """FFCV's writer job, reporting the first error to the parent instead of a traceback."""
    from ffcv.writer import worker_job_indexed_dataset

    try:
        worker_job_indexed_dataset(*args)
    except Exception as e:  # any failure must reach the parent, which turns it into one line
        message = f"cannot write: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
        errors.put((isinstance(e, UserError), message or type(e).__name__))
        raise SystemExit(1) from None


def _raise_worker_error(errors, workers, name: str) -> None:
    """The first writer process's error as a UserError, if one failed."""
    failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
    if not failed:
        return
    try:
        names_file, message = errors.get(timeout=2)
    except queue.Empty:
        names_file, message = False, f"a writer process died (exit code {failed[0]})"
    raise UserError(message if names_file else f"{name}: {message}")


def _write_ffcv(path: Path, fields: dict, samples: _Samples, num_workers: int, progress: bool) -> None:
    """FFCV's DatasetWriter, minus its flaws here: a crashed worker stops the write (FFCV waits
    forever) with its error as a UserError, and the progress bar is optional."""
    import ctypes
    import multiprocessing

    from tqdm import tqdm

    ffcv = _import_ffcv()

    writer = ffcv.writer.DatasetWriter(str(path), fields, page_size=PAGE_SIZE, num_workers=num_workers)
    n = len(samples)
    writer.num_samples = n
    writer.prepare()  # header + field descriptors; allocates the shared metadata block
    # fork: workers inherit the in-memory dataset instead of receiving a pickled copy
    mp = multiprocessing.get_context("fork")
    errors, todo, allocations = mp.Queue(), mp.Queue(), mp.Queue()
    chunk = 256
    for start in range(0, n, chunk):
        todo.put([(i, i) for i in range(start, min(n, start + chunk))])  # (destination, source) index
    for _ in range(num_workers):
        todo.put(None)
    done = mp.Value(ctypes.c_uint64, 0)
    allocator = ffcv.memory_allocator.MemoryAllocator(str(path), writer.data_region_start, PAGE_SIZE)
    args = (todo, writer.metadata_sm, writer.metadata_type, fields, allocator, done, allocations, samples)
    workers = [mp.Process(target=_worker, args=(errors, *args), daemon=True) for _ in range(num_workers)]
    try:
        for w in workers:
            w.start()
        name = path.name.split(".tmp")[0]
        bar = tqdm(total=n, disable=not progress, desc=name, unit="img")
        seen = 0
        while seen < n:
            codes = [w.exitcode for w in workers]  # read before `done`: a clean exit has counted its work
            now = done.value
            bar.update(now - seen)
            seen = now
            _raise_worker_error(errors, workers, name)
            if seen < n and all(c == 0 for c in codes):
                raise UserError(f"{name}: the writer processes stopped after {seen} of {n} samples")
            time.sleep(0.02)
        bar.close()
        allocation_list, reported = [], 0
        while reported < num_workers:  # each worker flushes its last page after counting: it may fail there
            try:
                allocation_list.extend(allocations.get(timeout=0.05))
                reported += 1
            except queue.Empty:
                _raise_worker_error(errors, workers, name)
        for w in workers:
            w.join()
        writer.finalize(allocation_list)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join()
        for q in (todo, errors, allocations):
            # a stopped write leaves work in `todo` that no worker will read: without this, the queue's
            # feeder thread blocks on the full pipe and the interpreter hangs at exit
            q.cancel_join_thread()
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()


def write_split(
    path: Path,
    split: Split,
    *,
    dataset: str,
    split_name: str,
    classes: list[str],
    jpeg_quality: int = 90,
    short_side: int = 256,
    num_workers: int | None = None,
    progress: bool = True,
    extra_meta: dict | None = None,
) -> dict:
    """Write `split` to the .beton `path` and its sidecar; return the sidecar dict.

    Atomic: everything goes to temporary names in the same directory and is renamed into place
    only when complete (the old sidecar is removed first), so an interrupted write leaves either
    the previous valid pair or no valid pair, never a file that passes `is_valid`.
    """
    path = Path(path)
    if len(split) == 0:
        raise UserError(f"{path}: nothing to write (the {split_name} split is empty)")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"jpeg quality {jpeg_quality} is out of range (expected 1..100)")
    ffcv = _import_ffcv()
    fields_mod = ffcv.fields
    if split.images is not None:
        shape = tuple(split.images.shape[1:])  # (H, W, C)
        storage = "raw" if max(shape[:2]) <= RAW_MAX_SIDE else "jpeg"
    elif split.size is not None:
        shape = (*split.size, 3)
        storage = "raw" if max(split.size) <= RAW_MAX_SIDE else "jpeg"
    else:
        shape, storage = None, "jpeg"
    if storage == "raw":
        image_field = fields_mod.NDArrayField(np.dtype(np.uint8), shape)
    else:
        image_field = fields_mod.RGBImageField(write_mode="jpg", jpeg_quality=jpeg_quality)
    fields = {IMAGE_FIELD: image_field, LABEL_FIELD: fields_mod.IntField()}
    samples = _Samples(split, storage, short_side, shape)
    if num_workers is None:
        # in-memory samples are a memcpy each; file images are decoded, so use every core
        num_workers = 1 if split.images is not None else max(1, min(8, os.cpu_count() or 1))

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp_meta = path.with_name(f"{sidecar_path(path).name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_ffcv(tmp, fields, samples, num_workers, progress)
        meta = _describe(tmp, split, storage, shape, progress)
        meta.update(
            dataset=dataset,
            split=split_name,
            num_classes=len(classes),
            classes=list(classes),
            jpeg_quality=jpeg_quality if storage == "jpeg" else None,
            short_side=short_side if storage == "jpeg" else None,
            file_bytes=tmp.stat().st_size,
            fastvit_version=fastvit.__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra_meta or {}),
        )
        meta["class_counts"] = np.bincount(split.labels, minlength=len(classes)).tolist()
        tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
        sidecar_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        os.replace(tmp_meta, sidecar_path(path))
    except OSError as e:  # e.g. disk full while the parent writes the header, tables or sidecar
        raise UserError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    return meta


def _describe(tmp: Path, split: Split, storage: str, shape: tuple[int, ...] | None, progress: bool) -> dict:
    """Sizes and pixel statistics of what was stored (read back from the file unless in memory)."""
    from tqdm import tqdm

    channels = shape[2] if shape else 3
    stats = PixelStats(channels)
    if storage == "raw":
        if split.images is not None:
            batches = (split.images[i : i + READ_BATCH] for i in range(0, len(split), READ_BATCH))
        else:  # decoded by the writer processes: read what they stored
            batches = (images for images, _ in iter_batches(tmp))
        for images in batches:
            stats.update(images)
        height, width = shape[:2]
        variable = False
    else:
        heights, widths = [], []
        stored = iter_images(tmp)
        for image, _ in tqdm(stored, total=len(split), disable=not progress, desc="pixel statistics", unit="img"):
            stats.update(image)
            heights.append(image.shape[0])
            widths.append(image.shape[1])
        height, width = max(heights), max(widths)
        variable = len(set(heights)) > 1 or len(set(widths)) > 1
    mean, std = stats.mean_std()
    return {
        "format_version": FORMAT_VERSION,
        "count": len(split),
        "height": int(height),  # the largest height when sizes vary
        "width": int(width),
        "channels": int(channels),
        "variable_size": variable,
        "storage": storage,
        "mean": mean,  # per channel, 0-255 scale
        "std": std,
        "stats_scale": "0-255",
    }


# ---------------------------------------------------------------- reading


def read_meta(beton_path: Path) -> dict:
    """The sidecar of a .beton, once the file is checked to agree with it (`check_against_sidecar`):
    dataset, split, num_classes, classes, count, height, width, channels, mean, std (per channel,
    0-255 scale), storage ("raw" | "jpeg"), format_version, ..."""
    return check_against_sidecar(open_beton(beton_path))


def _read_sidecar(beton_path: Path) -> dict:
    side = sidecar_path(beton_path)
    if not side.is_file():
        raise UserError(f"{side}: missing (the .beton's description; re-run `fastvit data prepare`)")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{side}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{side}: format_version {meta.get('format_version') if isinstance(meta, dict) else None} "
            f"is not {FORMAT_VERSION}; re-run `fastvit data prepare`"
        )
    return meta


def check_against_sidecar(beton: BetonFile) -> dict:
    """The sidecar, after checking that the file holds what it describes: size, sample count, image
    field and shape, labels in range and per-class counts. A damaged or replaced file is a UserError
    naming the first disagreement (reading on would train on misaligned pixels or wrong labels)."""
    path, meta = beton.path, _read_sidecar(beton.path)
    redo = "the file is damaged or not the one described; re-run `fastvit data prepare`"
    try:
        size, count, classes = int(meta["file_bytes"]), int(meta["count"]), int(meta["num_classes"])
        stored = (int(meta["height"]), int(meta["width"]), int(meta["channels"]))
        storage, class_counts = meta["storage"], meta.get("class_counts")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{sidecar_path(path)}: lacks or mangles {e} (re-run `fastvit data prepare`)") from None
    if beton.data.size != size:
        raise UserError(f"{path}: {beton.data.size} bytes, its sidecar says {size} (truncated or replaced); {redo}")
    if len(beton) != count:
        raise UserError(f"{path}: {len(beton)} samples, its sidecar says {count}; {redo}")
    if (beton.shape is None) != (storage == "jpeg"):
        field = "raw NDArrayField" if beton.shape is not None else "RGBImageField"
        raise UserError(f"{path}: image field is a {field}, its sidecar says {storage} storage; {redo}")
    if beton.shape is not None and beton.shape != stored:
        raise UserError(f"{path}: images are {'x'.join(map(str, beton.shape))} (H x W x C), its sidecar says "
                        f"{'x'.join(map(str, stored))}; {redo}")
    if beton.shape is None and count:
        h, w = int(beton.image_meta["height"].max()), int(beton.image_meta["width"].max())
        if h > stored[0] or w > stored[1]:
            raise UserError(f"{path}: holds a {h}x{w} image, its sidecar says at most {stored[0]}x{stored[1]}; {redo}")
    outside = np.flatnonzero((beton.labels < 0) | (beton.labels >= classes))
    if outside.size:
        i = int(outside[0])
        raise UserError(f"{path}: sample {i} has label {int(beton.labels[i])}, outside 0..{classes - 1} "
                        f"(its sidecar's {classes} classes); {redo}")
    if class_counts is not None and np.bincount(beton.labels, minlength=classes).tolist() != class_counts:
        raise UserError(f"{path}: per-class label counts differ from its sidecar's; {redo}")
    return meta


# The .beton layout (FFCV 1.0, format version 2): a header, one descriptor per field, one metadata
# record per sample, page-aligned data, then the allocation table (sample_id, ptr, size per blob).
# Parsed with numpy rather than `ffcv.reader.Reader` because importing ffcv compiles numba code
# (10-30 s on this machine) and reading raw pixels needs none of it; tests check both agree on every
# field, and that FFCV's Loader decodes our files to the same arrays.
_FFCV_VERSION = 2
_HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
     ("alloc_table_ptr", "<u8")],
    align=True,
)  # fmt: skip
_FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", "<u1", 16), ("arguments", "<u1", 1024)], align=True)
_ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
_INT_FIELD, _RGB_FIELD, _NDARRAY_FIELD = 1, 2, 4  # FFCV type ids
_RGB_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
_RGB_RAW = 1  # RGBImageField mode: 0 = JPEG, 1 = raw pixels


@dataclass
class BetonFile:
    """A parsed fastvit .beton: per-sample labels and image locations, and the mapped bytes."""

    path: Path
    data: np.ndarray  # uint8 memmap of the whole file
    labels: np.ndarray  # int64 [N]
    image_meta: np.ndarray  # uint64 ptr [N] (raw) or _RGB_META [N] (jpeg)
    shape: tuple[int, ...] | None  # (H, W, C) for raw storage, None for RGBImageField
    blob_sizes: dict[int, int]  # data ptr -> bytes, from the allocation table

    def __len__(self) -> int:
        return len(self.labels)


def open_beton(path: Path) -> BetonFile:
    """Parse `path`; a UserError naming it if it is missing, truncated or not a fastvit .beton."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing (.beton file)")
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    if data.size < _HEADER.itemsize:
        raise UserError(f"{path}: too short to be an FFCV .beton ({data.size} bytes)")
    header = data[: _HEADER.itemsize].view(_HEADER)[0]
    if header["version"] != _FFCV_VERSION or header["num_fields"] != 2:
        raise UserError(f"{path}: not a fastvit .beton (FFCV version {header['version']}, "
                        f"{header['num_fields']} fields; expected version {_FFCV_VERSION}, 2 fields)")
    n = int(header["num_samples"])
    desc_end = _HEADER.itemsize + 2 * _FIELD_DESC.itemsize
    descs = data[_HEADER.itemsize : desc_end].view(_FIELD_DESC)
    names = [bytes(d["name"]).split(b"\0")[0].decode("ascii", "replace") for d in descs]
    types = [int(d["type_id"]) for d in descs]
    image_ok = types[0] in (_NDARRAY_FIELD, _RGB_FIELD)
    if names != [IMAGE_FIELD, LABEL_FIELD] or not image_ok or types[1] != _INT_FIELD:
        raise UserError(f"{path}: not a fastvit .beton (fields {names}, type ids {types})")
    image_type = _RGB_META if types[0] == _RGB_FIELD else np.dtype("<u8")
    record = np.dtype([("image", image_type), ("label", "<i8")], align=True)
    table_ptr = int(header["alloc_table_ptr"])
    if desc_end + n * record.itemsize > data.size or table_ptr > data.size or table_ptr < desc_end:
        raise UserError(f"{path}: truncated ({data.size} bytes; the header promises {n} samples)")
    meta = data[desc_end : desc_end + n * record.itemsize].view(record)
    table_end = table_ptr + (data.size - table_ptr) // _ALLOC.itemsize * _ALLOC.itemsize
    table = data[table_ptr:table_end].view(_ALLOC)
    shape = _ndarray_shape(descs[0]["arguments"], path) if types[0] == _NDARRAY_FIELD else None
    return BetonFile(
        path=path,
        data=data,
        labels=meta["label"].astype(np.int64),
        image_meta=meta["image"],
        shape=shape,
        blob_sizes=dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True)),
    )


def _ndarray_shape(arguments: np.ndarray, path: Path) -> tuple[int, ...]:
    """(H, W, C) from an NDArrayField descriptor: 32 uint64 dims (zero-padded), a dtype length,
    then the dtype as JSON; fastvit stores uint8 only."""
    dims = arguments[: 32 * 8].view("<u8")
    type_length = int(arguments[32 * 8 : 33 * 8].view("<u8")[0])
    dtype_json = bytes(arguments[33 * 8 : 33 * 8 + type_length]).decode("ascii", "replace")
    shape = tuple(int(d) for d in dims[dims > 0])
    try:
        dtype = json.loads(dtype_json)
    except ValueError:
        dtype = None
    if len(shape) != 3 or dtype != [["", "|u1"]]:
        raise UserError(f"{path}: image field is {dtype_json} {list(shape)}, expected uint8 [H, W, C]")
    return shape


def is_valid(path: Path) -> bool:
    """True if `path` and its sidecar exist, agree with each other and are of this format version."""
    try:
        read_meta(path)
        return True
    except (UserError, OSError):
        return False


def iter_batches(path: Path, batch_size: int = READ_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images uint8 [b, H, W, C], labels int64 [b]) chunks in file order (one image size only)."""
    beton = open_beton(path)
    if beton.shape is None:  # JPEG: decode one by one, then stack
        images: list[np.ndarray] = []
        for i, (image, _) in enumerate(iter_images(path)):
            images.append(image)
            if len(images) == batch_size or i == len(beton) - 1:
                yield _stack(images, path), beton.labels[i + 1 - len(images) : i + 1]
                images = []
        return
    size = int(np.prod(beton.shape))
    ptrs = beton.image_meta.astype(np.int64)
    if ptrs.size and int(ptrs.max()) + size > beton.data.size:
        raise UserError(f"{path}: truncated (data ends at byte {beton.data.size})")
    for start in range(0, len(ptrs), batch_size):
        p = ptrs[start : start + batch_size]
        out = np.empty((len(p), size), dtype=np.uint8)
        # samples lie back to back within a page: copy each contiguous run with one slice
        breaks = np.flatnonzero(np.diff(p) != size) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(p)], strict=True):
            out[a:b] = beton.data[p[a] : p[a] + (b - a) * size].reshape(b - a, size)
        yield out.reshape(len(p), *beton.shape), beton.labels[start : start + batch_size]


def _stack(images: list[np.ndarray], path: Path) -> np.ndarray:
    if len({im.shape for im in images}) > 1:
        raise UserError(
            f"{path}: holds images of different sizes (JPEG storage); read them with "
            "fastvit.loaders.beton.iter_images or an FFCV loader with a resizing decoder"
        )
    return np.stack(images)


def iter_images(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """(image uint8 [H, W, C], label) one at a time in file order, for any storage."""
    beton = open_beton(path)
    if beton.shape is not None:
        for images, labels in iter_batches(path):
            yield from zip(images, labels.tolist(), strict=True)
        return
    _import_ffcv()
    # FFCV's own JPEG decoder (libjpeg-turbo), so pixels match its Loader; Pillow differs by a few levels
    from ffcv.libffcv import imdecode
    for i, (record, label) in enumerate(zip(beton.image_meta, beton.labels.tolist(), strict=True)):
        ptr, height, width = int(record["data_ptr"]), int(record["height"]), int(record["width"])
        size = beton.blob_sizes.get(ptr)
        if size is None or ptr + size > beton.data.size:
            raise UserError(f"{path}: sample {i} points outside the file (truncated or damaged)")
        blob = np.ascontiguousarray(beton.data[ptr : ptr + size])
        image = np.empty((height, width, 3), dtype=np.uint8)
        if record["mode"] == _RGB_RAW:
            image.reshape(-1)[:] = blob[: image.size]
        elif imdecode(blob, image, height, width, height, width, 0, 0, 1, 1, False, False) != 0:
            raise UserError(f"{path}: sample {i} is not a decodable JPEG (damaged file)")
        yield image, label


def load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of a .beton in file order: (images uint8 [N, H, W, C], labels int64 [N]).

    Raw storage comes back byte-exact, without importing ffcv; JPEG storage is decoded with FFCV's
    decoder and must hold a single image size (else UserError: use `iter_images`). The file is first
    checked against its sidecar (`check_against_sidecar`)."""
    beton = open_beton(path)
    check_against_sidecar(beton)
    n = len(beton)
    if n == 0:
        return np.empty((0, *(beton.shape or (0, 0, 3))), dtype=np.uint8), beton.labels
    images = None
    start = 0
    for batch, _ in iter_batches(path):
        if images is None:
            images = np.empty((n, *batch.shape[1:]), dtype=np.uint8)
        elif batch.shape[1:] != images.shape[1:]:
            raise UserError(f"{path}: holds images of different sizes; read them with iter_images")
        images[start : start + len(batch)] = batch
        start += len(batch)
    return images, beton.labels
