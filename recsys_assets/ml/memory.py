"""Heap policy of the processes that train and evaluate (the run process with the in-process launcher, data-parallel
workers, Spark Python workers that score).

glibc's malloc serves a request above its mmap threshold with its own mapping, returned to the system when freed,
and smaller ones from its heaps (arenas), which keep freed memory. The threshold is dynamic: each freed mapping
raises it to that mapping's size, up to 32 MiB. After a few large temporaries are freed, every allocation up to
32 MiB (per-row top-k buffers, [256 x catalogue] score chunks, encoded blocks) comes from the heaps, and a loop
that interleaves them with small long-lived arrays fragments them: measured on the 16x synthetic world
(docs/scale.md), ranking 50,000 evaluation users against 32k items left 3.5 GB of freed-but-held heap behind (RSS
4.2 GB; malloc_trim gave it all back). A fixed threshold (which also turns off the dynamic one) keeps every
temporary of HEAP_MMAP_THRESHOLD or more in its own mapping: the same evaluation then peaks at 0.75 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

HEAP_MMAP_THRESHOLD = 4 << 20  # bytes: allocations at least this large get their own mapping
# A fixed mmap threshold also fixes the trim threshold (free memory at the heap's top handed back at once) at its
# 128 KiB default. A loop whose temporaries are each just under the mmap threshold then shrinks and regrows the heap
# every iteration, paying the page faults each time: feed scoring (ranker sub-batches of ~2-4 MB tensors) ran at
# 582 users/s per core against 942 with the heap top kept up to this size (docs/scale.md). Scoring workers set it.
SCORING_TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_applied: tuple[int, int | None] | None = None


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None  # glibc; musl has no mallopt
    except OSError:
        return None


def bound_heap_growth(threshold: int = HEAP_MMAP_THRESHOLD, trim_threshold: int | None = None) -> bool:
    """Fix this process's mmap threshold at `threshold` and, when given, its trim threshold at `trim_threshold`
    (glibc; a no-op returning False elsewhere). Idempotent."""
    global _applied
    if _applied == (threshold, trim_threshold):
        return True
    libc = _libc()
    if libc is None or libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
        return False
    if trim_threshold is not None and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) != 1:
        return False
    _applied = (threshold, trim_threshold)
    return True


def release_free_heap() -> None:
    """Hand freed heap pages back to the system now (glibc malloc_trim; no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def release_memory() -> None:
    """Between the phases of a training process (after an epoch's batches, after a model step): collect reference
    cycles, then hand back what the two allocators keep of freed memory, glibc's heaps (`release_free_heap`) and
    Arrow's pool (mimalloc by default; it keeps freed Parquet decode buffers for reuse). Measured on the 16x
    synthetic world (docs/scale.md): after the ranker step the run process held 769 MB anonymous, 572 MB after the
    collection and the trim and 506 MB after Arrow's release; without it the retrieval step that follows in the same
    process started ~260 MB higher and its peak was that much higher too."""
    import gc

    import pyarrow as pa

    gc.collect()
    release_free_heap()
    pa.default_memory_pool().release_unused()
