"""Count host syncs: calls that read device data back to the host or whose output shape depends on it.

    with count_host_syncs() as c:
        step()
    assert c.total == 0, c.by_name

Two layers, because some syncs never reach the dispatcher and others never pass through Python:
- a TorchDispatchMode sees every aten op below autograd (also the ones torch calls internally):
  `_local_scalar_dense` (what .item() and friends run), `nonzero`, `masked_select`, the `unique`
  family, `bincount`, `repeat_interleave` without `output_size`, `index` / `index_put_` with a
  boolean mask, and a copy from a non-CPU device to the CPU;
- patched Tensor methods count the Python-level reads that copy without dispatching (`tolist`,
  `numpy`) and name the scalar conversions (`item`, `__bool__`, `__int__`, `__float__`, `__index__`).
  While one of these runs, the aten ops it calls are not counted again: one call, one count.

On a CPU tensor these calls cost nothing much, but they are exactly the ones that stall the host on a
GPU, so counting them on the CPU tells whether a step would sync there.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# aten overload packets whose every call syncs (output shape or value read from the data)
_ALWAYS = {
    aten._local_scalar_dense: "_local_scalar_dense",
    aten.nonzero: "nonzero",
    aten.masked_select: "masked_select",
    aten.bincount: "bincount",
    aten._unique: "unique",
    aten._unique2: "unique",
    aten.unique_dim: "unique",
    aten.unique_consecutive: "unique",
    aten.unique_dim_consecutive: "unique",
}
_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@dataclasses.dataclass
class HostSyncs:
    """What `count_host_syncs` counted: by_name maps a kind ("nonzero", "item", ...) to its count."""

    by_name: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


def _has_bool_index(indices) -> bool:
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _is_sync(func, args, kwargs) -> str | None:
    """The kind of host sync an aten call is, or None."""
    packet = func.overloadpacket
    if packet in _ALWAYS:
        return _ALWAYS[packet]
    if packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) and _has_bool_index(args[1]):
        return "boolean-mask index"
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "repeat_interleave"  # the output length is the sum of the repeats
    if packet in (aten._to_copy, aten.copy_):
        src = args[0] if packet is aten._to_copy else args[1]
        dst_cpu = (kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
                   if packet is aten._to_copy else args[0].device.type == "cpu")
        if isinstance(src, torch.Tensor) and src.device.type not in ("cpu", "meta") and dst_cpu:
            return "copy to host"
    return None


class _Counter(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs, muted: threading.local):
        super().__init__()
        self.syncs, self.muted = syncs, muted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not getattr(self.muted, "depth", 0):
            kind = _is_sync(func, args, kwargs)
            if kind is not None:
                self.syncs.by_name[kind] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs():
    """Count host syncs in this thread while the block runs; yields a `HostSyncs` (read it after)."""
    syncs, muted, owner = HostSyncs(), threading.local(), threading.get_ident()
    originals = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def counted(name, original):
        def method(self, *args, **kwargs):
            if threading.get_ident() != owner:
                return original(self, *args, **kwargs)
            if not getattr(muted, "depth", 0):
                syncs.by_name[name] += 1
            muted.depth = getattr(muted, "depth", 0) + 1
            try:
                return original(self, *args, **kwargs)
            finally:
                muted.depth -= 1
        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        with _Counter(syncs, muted):
            yield syncs
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
