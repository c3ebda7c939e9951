"""fastvit.hostmem: after retain_freed_memory(), a freed block stays mapped in the process and the next
allocation of its size reuses those pages, where glibc's defaults map and unmap it per allocation.

The mechanism is read from glibc itself (mallinfo2: bytes in mmapped blocks, bytes of heap) and from the
page-fault counter, not from a fault ratio of a training step (that ratio depends on the CPU, the kernel's
transparent huge pages and the BLAS in use). Each side runs in its own process: malloc settings are
process-wide, and the default side must start from glibc's initial thresholds."""

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, resource, sys
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
applied = None
if sys.argv[1] == "retain":
    from fastvit import hostmem
    applied = hostmem.retain_freed_memory()
SIZE = int(sys.argv[2])
def state():
    info = libc.mallinfo2()
    return {"mmapped": info.hblkhd, "heap": info.arena,
            "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}
start = state()
block = libc.malloc(SIZE)
libc.memset(block, 1, SIZE)  # touch every page, as an activation's first write does
live = state()
libc.free(block)
freed = state()
block = libc.malloc(SIZE)
libc.memset(block, 2, SIZE)
again = state()
libc.free(block)
print(json.dumps({"applied": applied, "start": start, "live": live, "freed": freed, "again": again,
                  "pages": SIZE // resource.getpagesize()}))
"""

# Above glibc's initial mmap threshold (128 KiB), below the retained one (hostmem.MMAP_THRESHOLD = 32 MiB):
# the size of a training step's activations and gradients.
BLOCK = 8 << 20


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(BLOCK)], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")


@glibc_only
def test_default_malloc_maps_and_unmaps_the_block_per_allocation():
    """The cost hostmem removes: glibc serves the block by mmap and hands it back to the kernel on free."""
    r = probe("default")
    assert r["live"]["mmapped"] - r["start"]["mmapped"] >= BLOCK, r
    assert r["freed"]["mmapped"] == r["start"]["mmapped"], r


@glibc_only
def test_retained_memory_keeps_freed_blocks_mapped():
    r = probe("retain")
    assert r["applied"] is True  # every mallopt call returned 1
    assert r["live"]["mmapped"] == r["start"]["mmapped"], r  # served from the heap, not by mmap
    assert r["freed"]["heap"] == r["live"]["heap"], r  # free did not trim the heap: the pages stay mapped
    assert r["again"]["heap"] == r["live"]["heap"], r  # the same size again reuses the freed block
    # ... whose pages are already backed: re-touching them faults (almost) none of them in again
    assert r["again"]["faults"] - r["freed"]["faults"] < r["pages"] // 16, r


def test_retain_is_idempotent():
    from fastvit import hostmem

    first = hostmem.retain_freed_memory()
    assert hostmem.retain_freed_memory() is first
    assert first is (platform.libc_ver()[0] == "glibc")
