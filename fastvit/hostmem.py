"""Keep freed host memory mapped, so a CPU training step stops paying page faults for its activations.

glibc returns any block above its mmap threshold (128 KiB, adapting upward only to sizes it has
freed) to the kernel on free, and trims the heap top above 128 KiB. A CPU training step frees and
re-allocates hundreds of MB of activations and gradients every step, so each step faults every page
of them back in: measured 200k minor faults and ~1 s of system time per step for `vit` at batch 256
(NOTES.md, "host allocator"). Raising the thresholds once keeps those pages in the process; the
heap then stays at the step's high-water mark, as a caching allocator (tcmalloc, jemalloc, CUDA's)
would. A request above 32 MiB (glibc's largest mmap threshold) is mapped anew only when no freed heap
chunk fits it. `vit` at batch 256 (52 MB attention scores) paid 632k faults in its first step and
0-3.3k a step from the fourth, once the heap held such chunks; a 52 MB tensor made where no such free
chunk exists faults 12.7k pages each time (NOTES, session 11).
"""

from __future__ import annotations

import ctypes
import platform

# glibc <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc rejects larger values on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim in practice
TOP_PAD = 256 << 20  # grow the heap in large steps

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (idempotent). False where the C library is not glibc."""
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            # mallopt returns 1 on success
            _applied = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                           (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                           (M_TOP_PAD, TOP_PAD)))
    return _applied
