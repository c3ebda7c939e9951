"""Loaders that yield uint8 NCHW batches on the training device: `resident`, `ffcv`, `make_loader`.

Both loaders share one iteration contract, so the augmentation stage (`fastvit.augment`) does
not care where a batch came from:

    loader = make_loader("auto", "cifar10-train.beton", batch_size=256, device="cuda", seed=0)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # uint8 [B, C, H, W] and int64 [B], both on `device`
            ...
        save({"loader": loader.state_dict(), ...})   # exact mid-epoch position, for resume

- `ResidentLoader` decodes the whole dataset once into one uint8 tensor on the device; a batch is an
  `index_select` there, so no host work or host-device copy is left in the step. The default when the
  decoded dataset fits the memory budget (`make_loader("auto", ...)`).
- `FFCVLoader` wraps FFCV's `Loader` (numba-compiled decode, crop and flip in worker threads) for
  JPEG-stored or large datasets.

`import ffcv` sets torch's thread count to 1 as a side effect (and FFCV's loader sets it to its worker
count): ffcv is imported lazily and torch's thread count is restored after every call into it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fastvit.errors import UserError

__all__ = ["ResidentLoader", "FFCVLoader", "make_loader"]

# A batch as every loader yields it: uint8 images [B, C, H, W] and int64 labels [B], on the device.
Batch = tuple[torch.Tensor, torch.Tensor]


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends only on (seed, epoch), with no collisions between
    neighbouring pairs (unlike e.g. `seed + epoch`, where (0, 1) and (1, 0) would share an order)."""
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _check_common(batch_size: int, seed: int, rank: int, world_size: int, repeats: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise UserError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise UserError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"repeats must be a positive integer, got {repeats!r}")


class _Position:
    """The (epoch, next batch) bookkeeping both loaders share, with its checkpoint format (subclasses
    define `__len__`, the batches per epoch).

    `order_keys` are the settings that fix the sample order: a state saved under other values would
    point into a different order, so loading it is refused rather than silently resuming elsewhere.
    """

    order_keys: tuple[str, ...] = ()

    epoch: int = 0
    next_batch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration runs. Setting the epoch the loader is already in keeps
        the mid-epoch position (so a loop that calls `set_epoch(e)` right after `load_state_dict`
        resumes where the checkpoint left off); any other epoch starts at its first batch."""
        if not isinstance(epoch, int) or epoch < 0:
            raise UserError(f"epoch must be a non-negative integer, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch, self.next_batch = epoch, 0

    def state_dict(self) -> dict:
        """The exact position: iterating after `load_state_dict` of this yields the remaining batches
        of `epoch`, starting at batch index `batch`."""
        state = {"epoch": self.epoch, "batch": self.next_batch}
        state.update({key: getattr(self, key) for key in self.order_keys})
        return state

    def load_state_dict(self, state: dict) -> None:
        missing = [key for key in ("epoch", "batch", *self.order_keys) if key not in state]
        if missing:
            raise UserError(f"loader state is missing {', '.join(missing)} (not a loader state_dict?)")
        for key in self.order_keys:
            if state[key] != getattr(self, key):
                raise UserError(
                    f"loader state was saved with {key}={state[key]!r} but this loader has "
                    f"{key}={getattr(self, key)!r}; resume with the same data and loader settings"
                )
        if not 0 <= state["batch"] <= len(self):
            raise UserError(f"loader state batch {state['batch']} is outside 0..{len(self)}")
        self.epoch, self.next_batch = int(state["epoch"]), int(state["batch"])


# ---------------------------------------------------------------------------------------------------
# resident: the whole uint8 dataset on the device
# ---------------------------------------------------------------------------------------------------


class ResidentLoader(_Position):
    """The whole uint8 dataset held on `device`; batches are gathered there with `index_select`.

    Args:
        images: uint8 tensor (or array) [N, H, W, C], or the path of a .beton file (decoded once with
            `fastvit.loaders.load_arrays`; `labels` must then be None).
        labels: int64 [N] class indices (None with a .beton path).
        batch_size: images per batch on this rank.
        device: where the dataset and every batch live.
        shuffle: a fresh permutation each epoch; otherwise file order.
        drop_last: yield only full batches.
        seed: the permutation of epoch e depends only on (seed, e): a fresh `torch.Generator` seeded
            from both, so any epoch can be replayed or resumed without replaying earlier ones.
        rank, world_size: this process's shard under `torchrun` (`torch.distributed` ranks).
        repeats: repeated-augmentation factor r (paper A's x3 epochs): every sample appears r times
            per epoch and the epoch is r times longer.

    Sample order of one epoch, from one generator seeded by (seed, epoch):
    - one rank: r independent permutations of 0..N-1 back to back, i.e. r shuffled passes, as paper
      A's sampler does it (its RASampler with len_factor r, one repetition), so the copies of an image
      fall in different batches;
    - world_size ranks: the permutation P with every entry repeated r times in place (P0 P0 P0 P1 P1
      P1 ...), of which rank k takes every world_size-th entry starting at k, as DeiT's RASampler: the
      r copies of one image land on r different ranks when world_size >= r.
    All ranks get the same number of batches:
    - drop_last=True trims the tail of that order to a multiple of world_size * batch_size, so every
      rank yields only full batches and no sample appears more than r times; the trimmed samples
      change every epoch with the permutation.
    - drop_last=False pads the order by wrapping around to its start until its length is a multiple
      of world_size (as torch's DistributedSampler does), so up to world_size - 1 samples appear once
      more; the last batch of every rank may be short.
    """

    order_keys = ("seed", "num_samples", "batch_size", "world_size", "repeats", "shuffle", "drop_last")

    def __init__(
        self,
        images: torch.Tensor | np.ndarray | str | os.PathLike,
        labels: torch.Tensor | np.ndarray | None = None,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeats: int = 1,
    ):
        _check_common(batch_size, seed, rank, world_size, repeats)
        if isinstance(images, (str, os.PathLike)):
            if labels is not None:
                raise UserError("pass labels=None with a .beton path: the labels are read from the file")
            from fastvit.loaders.beton import load_arrays

            images, labels = load_arrays(Path(images))
        if labels is None:
            raise UserError("labels are required when images is an array (int64 [N] class indices)")
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise UserError(
                f"images must be uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise UserError(
                f"labels must be integer [N] with N = {images.shape[0]} images, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if images.shape[0] == 0:
            raise UserError("the dataset is empty (0 images)")
        self.device = torch.device(device)
        # Stored NCHW-contiguous once, so a batch is one contiguous gather with no per-step permute.
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)  # (N, C, H, W)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.num_samples = int(images.shape[0])
        # Gather whole rows as the widest integer words that tile them: a uint8 index_select moves one
        # byte per element and is ~6x slower on the CPU than the same bytes as int64.
        row_bytes = math.prod(self.images.shape[1:])
        word = next(d for d in (torch.int64, torch.int32, torch.int16, torch.uint8) if row_bytes % d.itemsize == 0)
        self._rows = self.images.view(self.num_samples, row_bytes).view(word)  # (N, row_bytes / itemsize)
        self.batch_size, self.shuffle, self.drop_last = batch_size, bool(shuffle), bool(drop_last)
        self.seed, self.rank, self.world_size, self.repeats = seed, rank, world_size, repeats
        self.epoch, self.next_batch = 0, 0
        if len(self) == 0:
            raise UserError(
                f"{self.num_samples} samples x {repeats} repeats give no full batch of {batch_size} "
                f"on each of {world_size} ranks; lower batch_size or pass drop_last=False"
            )

    def __len__(self) -> int:
        total = self.num_samples * self.repeats
        if self.drop_last:
            return total // (self.world_size * self.batch_size)
        return math.ceil(math.ceil(total / self.world_size) / self.batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch` in yield order (int64 on the CPU), per the class
        docstring."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        n, r = self.num_samples, self.repeats
        if self.world_size == 1:
            passes = [torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n) for _ in range(r)]
            order = torch.cat(passes)  # (r * N,)
        else:
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            # Copies of one sample are adjacent, so the strided rank split sends them to different ranks.
            order = order.repeat_interleave(r)  # (N * r,)
        total = order.numel()
        if self.drop_last:
            order = order[: total - total % (self.world_size * self.batch_size)]
        else:
            pad = -total % self.world_size
            order = torch.cat([order, order.repeat(math.ceil(pad / total))[:pad]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        indices = self.epoch_indices(epoch).to(self.device)
        for b in range(self.next_batch, len(self)):
            batch = indices[b * self.batch_size : (b + 1) * self.batch_size]
            # Advance before yielding: a checkpoint taken after this batch's step resumes at the next.
            self.next_batch = b + 1
            images = self._rows.index_select(0, batch).view(torch.uint8).view(-1, *self.images.shape[1:])
            yield images, self.labels.index_select(0, batch)  # (B, C, H, W), (B,)
        self.epoch, self.next_batch = epoch + 1, 0


# ---------------------------------------------------------------------------------------------------
# ffcv: FFCV's Loader (numba pipelines in worker threads)
# ---------------------------------------------------------------------------------------------------

ORDERS = ("random", "quasi_random", "sequential")


@contextlib.contextmanager
def _torch_threads_kept():
    """Undo FFCV's side effect on torch's thread count (its import sets 1, its loader sets its
    worker count) for whatever runs inside."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _resumable_loader_class():
    """FFCV's Loader, able to start an epoch at a given batch (FFCV itself always starts at 0).

    Built on first use so that importing this module does not import ffcv."""
    with _torch_threads_kept():
        from ffcv.loader import Loader
        from ffcv.loader.epoch_iterator import EpochIterator
        from ffcv.pipeline.compiler import Compiler
        from ffcv.traversal_order import QuasiRandom

    class ResumableLoader(Loader):
        skip_batches = 0
        pristine_pages = None

        def __iter__(self):
            # As Loader.__iter__, but the epoch's order starts `skip_batches` batches in; exact because
            # the order of an epoch depends only on (seed, epoch) (see below for quasi-random).
            Compiler.set_num_threads(self.num_workers)
            if isinstance(self.traversal_order, QuasiRandom):
                # QuasiRandom shuffles its page table in place when it draws an order, so an epoch's
                # order would depend on the epochs drawn before it: draw every epoch from the same table.
                if self.pristine_pages is None:
                    self.traversal_order.prepare_data_structures()
                    self.pristine_pages = self.traversal_order.page_to_samples_array.copy()
                self.traversal_order.page_to_samples_array = self.pristine_pages.copy()
            order = self.next_traversal_order()
            selected = order[: len(self) * self.batch_size][self.skip_batches * self.batch_size :]
            self.next_epoch += 1
            if self.code is None or self.recompile:
                self.generate_code()
            return EpochIterator(self, selected)

    return ResumableLoader


class FFCVLoader(_Position):
    """FFCV's `Loader` over a .beton file, yielding the same batches as `ResidentLoader`: uint8
    [B, C, H, W] images and int64 [B] labels on `device`.

    Args:
        path: the .beton file (an image field stored as RGBImageField or uint8 NDArrayField (H, W, C),
            and an IntField label).
        batch_size, device, drop_last, seed: as for `ResidentLoader`.
        shuffle: False forces `order="sequential"`.
        rank, world_size: with world_size > 1 FFCV's `distributed=True` mode is used, which shards with
            torch's DistributedSampler over the initialized process group (run under `torchrun`
            after `torch.distributed.init_process_group`); rank and world_size must match it.
            Ranks are padded to equal length by wrapping, as DistributedSampler does.
        img_size: output side in pixels; None keeps the stored size (all images must share it).
        random_resized_crop: RandomResizedCrop to img_size with `rrc_scale` / `rrc_ratio` at decode
            time (torchvision's sampling rule); otherwise, with img_size, a center crop of
            `center_crop_ratio` x the short side resized to img_size. JPEG images are resized by
            FFCV's decoder (OpenCV); raw arrays bilinearly (pixel centres, no antialiasing).
        flip: random horizontal flip with probability 0.5.
        os_cache: let the OS page cache hold the file (shared between processes); False reads it
            into this process's memory.
        order: "random" (a permutation per epoch, from seed + epoch), "quasi_random" (random within
            a window of pages: fewer disk reads when the file does not fit in memory; single process
            only) or "sequential"; None means "random" when shuffle else "sequential".
        num_workers: FFCV's decode threads.
        repeats: repeated-augmentation factor r, as for `ResidentLoader`: every sample appears r
            times per epoch (FFCV shuffles the r copies together, so ranks are not guaranteed to
            differ per copy and a batch may hold two copies of an image).

    The sample order of an epoch depends only on (seed, epoch), so `state_dict` / `load_state_dict`
    resume mid-epoch exactly; the random crops and flips come from numba's global generator and are
    not reproducible. FFCV reuses its output buffers `batches_ahead + 2` batches later: consume a
    batch (or clone it) before then.
    """

    order_keys = ("seed", "num_samples", "batch_size", "world_size", "repeats", "order", "drop_last")

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        img_size: int | None = None,
        random_resized_crop: bool = False,
        flip: bool = False,
        os_cache: bool = True,
        order: str | None = None,
        num_workers: int = 2,
        repeats: int = 1,
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        center_crop_ratio: float = 224 / 256,
        batches_ahead: int = 3,
    ):
        _check_common(batch_size, seed, rank, world_size, repeats)
        order = order if order is not None else ("random" if shuffle else "sequential")
        if order not in ORDERS:
            raise UserError(f"unknown loader order {order!r}; choose one of {', '.join(ORDERS)}")
        if not shuffle and order != "sequential":
            raise UserError(f"shuffle=False needs order='sequential', got order={order!r}")
        if order == "quasi_random" and (world_size > 1 or repeats > 1):
            raise UserError("order 'quasi_random' works on a single process without repeats; use 'random'")
        if img_size is not None and (not isinstance(img_size, int) or img_size < 1):
            raise UserError(f"img_size must be a positive integer or None, got {img_size!r}")
        if random_resized_crop and img_size is None:
            raise UserError("random_resized_crop needs img_size (the output side in pixels)")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise UserError(f"num_workers must be a positive integer, got {num_workers!r}")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no such .beton file: {path}")
        if world_size > 1:
            _check_process_group(rank, world_size)

        self.path, self.device = path, torch.device(device)
        self.batch_size, self.drop_last, self.order = batch_size, bool(drop_last), order
        self.seed, self.rank, self.world_size, self.repeats = seed, rank, world_size, repeats
        self.epoch, self.next_batch = 0, 0

        with _torch_threads_kept():
            from ffcv.loader import OrderOption
            from ffcv.reader import Reader

            try:
                reader = Reader(str(path))
            except (AssertionError, ValueError, KeyError, IndexError, OSError) as error:  # FFCV's, on junk
                raise UserError(f"{path} is not a readable FFCV .beton file ({error})") from error
            self.num_samples = int(reader.num_samples)
            image_field, label_field = _find_fields(path, reader)
            pipelines = {
                image_field: _image_pipeline(
                    reader, image_field, self.device, img_size, random_resized_crop, flip,
                    rrc_scale, rrc_ratio, center_crop_ratio,
                ),
                label_field: _label_pipeline(self.device),
            }
            # Fields other than image and label are not decoded.
            pipelines.update({name: None for name in reader.handlers if name not in pipelines})
            indices = np.repeat(np.arange(self.num_samples), repeats) if repeats > 1 else None
            self._loader = _resumable_loader_class()(
                str(path),
                batch_size=batch_size,
                num_workers=num_workers,
                os_cache=os_cache,
                order=getattr(OrderOption, order.upper()),
                distributed=world_size > 1,
                seed=seed,
                indices=indices,
                pipelines=pipelines,
                drop_last=drop_last,
                batches_ahead=batches_ahead,
            )
        self._outputs = (image_field, label_field)
        if len(self) == 0:
            raise UserError(
                f"{self.num_samples} samples x {repeats} repeats give no full batch of {batch_size} "
                f"on each of {world_size} ranks; lower batch_size or pass drop_last=False"
            )

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self._loader.next_epoch, self._loader.skip_batches = epoch, self.next_batch
        with _torch_threads_kept():
            batches = iter(self._loader)
        try:
            for b, outputs in enumerate(batches, start=self.next_batch):
                fields = dict(zip(self._loader.pipeline_specs, outputs, strict=True))
                self.next_batch = b + 1
                yield fields[self._outputs[0]], fields[self._outputs[1]]
        finally:
            batches.close()  # stops FFCV's prefetch thread when the consumer leaves early
        self.epoch, self.next_batch = epoch + 1, 0


def _check_process_group(rank: int, world_size: int) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UserError(
            f"world_size={world_size} needs torch.distributed initialized (launch with torchrun)"
        )
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise UserError(
            f"rank/world_size {rank}/{world_size} differ from the process group's "
            f"{dist.get_rank()}/{dist.get_world_size()}"
        )


def _find_fields(path: Path, reader) -> tuple[str, str]:
    """The names of the image field (RGB image, or a uint8 (H, W, C) array) and the integer label."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    images = [
        name
        for name, field in reader.handlers.items()
        if isinstance(field, RGBImageField)
        or (isinstance(field, NDArrayField) and field.dtype == np.uint8 and len(field.shape) == 3)
    ]
    labels = [name for name, field in reader.handlers.items() if isinstance(field, IntField)]
    if len(images) != 1 or len(labels) != 1:
        fields = ", ".join(f"{name}: {type(field).__name__}" for name, field in reader.handlers.items())
        raise UserError(
            f"{path} must hold one image field (RGBImageField or uint8 NDArrayField (H, W, C)) and one "
            f"IntField label; it holds {fields}"
        )
    return images[0], labels[0]


def _image_pipeline(
    reader, name, device, img_size, random_resized_crop, flip, rrc_scale, rrc_ratio, center_crop_ratio
) -> list:
    """decode (+ crop) -> flip -> torch NCHW uint8 -> device."""
    from ffcv.fields import NDArrayField
    from ffcv.fields.decoders import (
        CenterCropRGBImageDecoder,
        NDArrayDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    field = reader.handlers[name]
    if isinstance(field, NDArrayField):
        ops = [NDArrayDecoder()]
        if random_resized_crop or img_size is not None:
            crop = _raw_resized_crop_class()
            ops.append(crop(img_size, random_resized_crop, rrc_scale, rrc_ratio, center_crop_ratio))
    else:
        if random_resized_crop:
            decoder = RandomResizedCropRGBImageDecoder((img_size, img_size), scale=rrc_scale, ratio=rrc_ratio)
        elif img_size is not None:
            decoder = CenterCropRGBImageDecoder((img_size, img_size), ratio=center_crop_ratio)
        else:
            sizes = reader.metadata[f"f{list(reader.handlers).index(name)}"]
            if len(np.unique(sizes["height"])) > 1 or len(np.unique(sizes["width"])) > 1:
                raise UserError(
                    f"{reader.file_name} holds images of different sizes; pass img_size to crop them"
                )
            decoder = SimpleRGBImageDecoder()
        ops = [decoder]
    if flip:
        ops.append(RandomHorizontalFlip(0.5))
    # NHWC numpy -> contiguous NCHW tensor; then one copy to the device (none on the CPU).
    ops += [ToTensor(), ToTorchImage(channels_last=False)]
    if device.type != "cpu":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


@functools.cache
def _raw_resized_crop_class():
    """An FFCV operation that crops raw uint8 [H, W, C] arrays (any C) and resizes the crop to a square
    with bilinear interpolation: FFCV's own crop decoders only read RGBImageField. Built on first use
    so that importing this module does not import ffcv."""
    from dataclasses import replace

    from ffcv.fields.rgb_image import get_center_crop, get_random_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class RawResizedCrop(Operation):
        def __init__(self, size: int, random: bool, scale, ratio, center_ratio: float):
            super().__init__()
            self.size, self.random = size, random
            self.scale, self.ratio, self.center_ratio = np.array(scale), np.array(ratio), center_ratio

        def declare_state_and_memory(self, previous_state):
            out_shape = (self.size, self.size, previous_state.shape[2])
            return (replace(previous_state, jit_mode=True, shape=out_shape),
                    AllocationQuery(out_shape, previous_state.dtype))

        def generate_code(self):
            my_range = Compiler.get_iterator()
            get_crop = Compiler.compile(get_random_crop if self.random else get_center_crop)
            size = self.size
            scale, ratio = (self.scale, self.ratio) if self.random else (None, self.center_ratio)

            def resized_crop(images, dst):  # images (B, H, W, C) uint8 -> dst (B, size, size, C)
                height, width, channels = images.shape[1], images.shape[2], images.shape[3]
                for i in my_range(images.shape[0]):
                    top, left, h, w = get_crop(height, width, scale, ratio)
                    for y in range(size):
                        # pixel centres: source = (dest + 0.5) * h / size - 0.5, clamped to the crop
                        sy = min(max((y + 0.5) * h / size - 0.5, 0.0), h - 1.0)
                        y0 = int(sy)
                        y1, fy = min(y0 + 1, h - 1), sy - y0
                        for x in range(size):
                            sx = min(max((x + 0.5) * w / size - 0.5, 0.0), w - 1.0)
                            x0 = int(sx)
                            x1, fx = min(x0 + 1, w - 1), sx - x0
                            for c in range(channels):
                                top_row = (images[i, top + y0, left + x0, c] * (1 - fx)
                                           + images[i, top + y0, left + x1, c] * fx)
                                bottom_row = (images[i, top + y1, left + x0, c] * (1 - fx)
                                              + images[i, top + y1, left + x1, c] * fx)
                                dst[i, y, x, c] = np.uint8(top_row * (1 - fy) + bottom_row * fy + 0.5)
                return dst

            resized_crop.is_parallel = True
            return resized_crop

    return RawResizedCrop


def _label_pipeline(device) -> list:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze(1)]
    if device.type != "cpu":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


# ---------------------------------------------------------------------------------------------------
# choosing a loader
# ---------------------------------------------------------------------------------------------------

KINDS = ("resident", "ffcv", "auto")
DEFAULT_CPU_BUDGET = 4 << 30  # bytes of decoded uint8 pixels the resident loader may hold on a CPU
_RESIDENT_KEYS = {"batch_size", "device", "shuffle", "drop_last", "seed", "rank", "world_size", "repeats"}
# FFCV options that change the images: only the ffcv loader honours them.
_FFCV_IMAGE_KEYS = {"img_size", "random_resized_crop", "flip", "rrc_scale", "rrc_ratio", "center_crop_ratio"}


def resident_budget(device: torch.device | str) -> int:
    """Bytes the resident loader may use on `device`: half the free memory of a CUDA device, 4 GiB
    elsewhere (the host also holds the model, activations and the augmentation's float copies)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_CPU_BUDGET


def decoded_bytes(meta: dict) -> int | None:
    """Bytes of the whole split decoded to uint8 [N, H, W, C] plus int64 labels, from its sidecar;
    None when the images vary in size (they cannot be one resident tensor)."""
    if meta.get("variable_size"):
        return None
    return meta["count"] * (meta["height"] * meta["width"] * meta["channels"] + 8)


def make_loader(kind: str, path: str | os.PathLike, *, memory_budget: int | None = None, **kw):
    """A `ResidentLoader` or `FFCVLoader` over the .beton `path`; `kw` as their arguments.

    kind "auto" picks the resident loader when the decoded split fits `memory_budget` bytes (default
    `resident_budget(device)`) and no image-changing FFCV option (img_size, random_resized_crop, flip,
    ...) is asked for; otherwise the ffcv loader. FFCV-only performance options (os_cache, order,
    num_workers, batches_ahead) are dropped when the resident loader is picked.
    """
    if kind not in KINDS:
        raise UserError(f"unknown loader {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        from fastvit.loaders.beton import read_meta

        size = decoded_bytes(read_meta(Path(path)))
        budget = memory_budget if memory_budget is not None else resident_budget(kw.get("device", "cpu"))
        wants_ffcv_images = any(kw.get(key) not in (None, False) for key in _FFCV_IMAGE_KEYS)
        kind = "resident" if size is not None and size <= budget and not wants_ffcv_images else "ffcv"
        if kind == "resident":
            kw = {key: value for key, value in kw.items() if key in _RESIDENT_KEYS}
    if kind == "ffcv":
        return FFCVLoader(path, **kw)
    unsupported = sorted(set(kw) - _RESIDENT_KEYS)
    if unsupported:
        raise UserError(
            f"the resident loader does not take {', '.join(unsupported)}; use the ffcv loader or "
            f"drop them (crops and flips run in the augmentation stage)"
        )
    return ResidentLoader(path, **kw)
