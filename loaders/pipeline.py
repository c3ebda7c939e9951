"""Loaders that yield uint8 NCHW batches on the training device: `resident`, `ffcv`, `make_loader`.

Both loaders share one iteration contract, so the augmentation stage (`fastvit.loaders.augment`) does
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

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fastvit.errors import UserError

__all__ = ["ResidentLoader"]

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
    """The (epoch, next batch) bookkeeping both loaders share, with its checkpoint format.

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

    def __len__(self) -> int:
        raise NotImplementedError


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
        repeats: repeated-augmentation factor r (DeiT's RASampler, paper A's x3): every sample appears
            r times per epoch and the epoch is r times longer.

    Sample order of one epoch. Take the permutation P of 0..N-1 and repeat every entry r times in
    place (P0 P0 P0 P1 P1 P1 ...); rank k takes every world_size-th entry starting at k, so the r
    copies of one image land on r different ranks when world_size >= r (with one rank they share a
    batch, as in RASampler). All ranks get the same number of batches:
    - drop_last=True trims the tail of the repeated permutation to a multiple of world_size *
      batch_size, so every rank yields only full batches and no sample appears more than r times;
      the trimmed samples change every epoch with the permutation.
    - drop_last=False pads the repeated permutation by wrapping around to its start until its length
      is a multiple of world_size (as torch's DistributedSampler does), so up to world_size - 1
      samples appear once more; the last batch of every rank may be short.
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
        self.device = torch.device(device)
        # Stored NCHW-contiguous once, so a batch is one contiguous gather with no per-step permute.
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)  # (N, C, H, W)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.num_samples = int(images.shape[0])
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
        if self.shuffle:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        # Copies of one sample are adjacent, so the strided rank split sends them to different ranks.
        order = order.repeat_interleave(self.repeats)  # (N * r,)
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
            yield self.images.index_select(0, batch), self.labels.index_select(0, batch)
        self.epoch, self.next_batch = epoch + 1, 0
