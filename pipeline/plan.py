"""Stable keys and the step plan: pure functions of small data.

doc_id = blake2b-64(source name, file key, record number): provenance that survives a re-run with
another seed. The shuffle key = blake2b-64(seed, doc_id); bucket = key % buckets, and a bucket is
ordered by (key, doc_id). Never Python's `hash()`, which differs per process.

The plan turns per-bucket row counts into steps. Global rows are numbered bucket after bucket
(then the `concat` tail rows); step s holds global rows [s*R, (s+1)*R), i.e. one or a few
contiguous (bucket file, row range) slices::

    bucket rows   b0: 5   b1: 4   tail: 2        R = rows_per_step = 4
    global rows   0 1 2 3 | 4 5 6 7 | 8 9 10
    step 0        b0[0:4]
    step 1        b0[4:5] + b1[0:3]
    remainder     b1[3:4] + tail[0:2]  (+ the final padded row, if any)
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple, Sequence


def doc_id(source: str, key: str, record: int) -> int:
    h = hashlib.blake2b(f"{source}\0{key}\0{record}".encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def shuffle_key(seed: int, did: int) -> int:
    h = hashlib.blake2b(struct.pack("<QQ", seed, did), digest_size=8, person=b"steppack-shuffle")
    return int.from_bytes(h.digest(), "little")


class Slice(NamedTuple):
    file: str
    start: int
    stop: int


def make_plan(counts: Sequence[tuple[str, int]], rows_per_step: int) -> tuple[list[list[Slice]], list[Slice]]:
    """(slices of each step, slices of the remainder) from (file, rows) in global order."""
    if rows_per_step <= 0:
        raise ValueError(f"rows_per_step must be positive, got {rows_per_step}")
    total = sum(n for _, n in counts)
    n_steps = total // rows_per_step
    steps: list[list[Slice]] = [[] for _ in range(n_steps)]
    remainder: list[Slice] = []
    g = 0  # global row number of the first row of the current file
    for file, n in counts:
        row = 0
        while row < n:
            s = (g + row) // rows_per_step
            end_of_step = (s + 1) * rows_per_step - g
            stop = min(n, end_of_step) if s < n_steps else n
            (steps[s] if s < n_steps else remainder).append(Slice(file, row, stop))
            row = stop
        g += n
    return steps, remainder
