"""Allocator settings for the local worker processes: memory freed goes back to the system.

A worker allocates and frees tens of MB at a time (a bucket's tokens, spill buffers, the
tokenizer's output for a batch), and two allocators kept what it freed, so a worker's size crept
up with the work it had done instead of staying at one bucket's worth:

- pyarrow's default memory pool is mimalloc, which keeps freed pages for reuse. With the system
  pool (ARROW_DEFAULT_MEMORY_POOL=system) the job's peak on the bench corpus x16 fell from 959 to
  775 MiB (single runs; x4: 735 -> 614).
- glibc malloc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB),
  after which blocks of up to that size come from its heaps and stay there. With the threshold
  fixed (at 128 KiB), x16 fell again, to 677 MiB (x4: 588). At 1 MiB the fresh mappings (3x the
  page faults) made the job ~10% slower; at 8 MiB it was not slower than without (faster in 3 of
  4 alternating pairs), hence MMAP_THRESHOLD.

`lean()` applies both, first thing in the zygote and in a cold worker: before pyarrow chooses its
pool and before the big allocations. A user's own setting of either is kept. docs/benchmarks.md
has the figures with the streamed row files (shards.writer.write_step).
"""

from __future__ import annotations

import ctypes
import os

ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"
MMAP_THRESHOLD = 8 << 20
"""Bytes from which glibc serves a block with its own mmap (glibc's starting value is 128 KiB)."""
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def lean() -> list[str]:
    """Set the allocators of this process as above; returns what it set (for tests and logs)."""
    done = []
    if ARROW_POOL not in os.environ:  # read by pyarrow once, when it first needs its pool
        os.environ[ARROW_POOL] = "system"
        done.append(f"{ARROW_POOL}=system")
    if not any(k in os.environ for k in MALLOC_ENV):
        mallopt = _mallopt()
        # Setting either threshold also turns off glibc's dynamic adjustment of both.
        if mallopt and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD):
            done.append(f"mallopt mmap/trim threshold {MMAP_THRESHOLD}")
    return done


def _mallopt():
    """glibc's mallopt, or None on another C library (musl, macOS), where this is left alone."""
    try:
        fn = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn
