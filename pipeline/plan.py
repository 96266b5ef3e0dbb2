"""Stable keys, per-step quotas and the step plan: pure functions of small data.

doc_id = blake2b-64(source name, file key, record number): provenance that survives a re-run with
another seed. The shuffle key = blake2b-64(seed, doc_id); bucket = key % buckets, and a bucket is
ordered by (key, doc_id). Never Python's `hash()`, which differs per process.

The plan turns the packed row files into steps. A *stream* is the row files of one packing group
in order (the whole job without weights; one source each with weights): its rows numbered file
after file make one *pass*. Step s takes q_i(s) rows from stream i (`quotas`; without weights one
stream gives every row), the next rows of the stream: one or a few contiguous (row file, row
range) slices. R = rows_per_step = 4, one stream::

    stream rows   b0: 5   b1: 4   tail: 2
    row numbers   0 1 2 3 | 4 5 6 7 | 8 9 10
    step 0        b0[0:4]
    step 1        b0[4:5] + b1[0:3]
    remainder     b1[3:4] + tail[0:2]

A stream asked for more rows than a pass holds is repeated: pass p >= 1 visits its files in a
seeded order and each file's rows in a seeded order (`Slice.order`), so every pass is a fresh
shuffle, and a step still reads at most a few files. Rows a stream never gave to a step (of its
first pass) go to the remainder.
"""

from __future__ import annotations

import hashlib
import math
import struct
from fractions import Fraction
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from steppack.shards.errors import InternalError


def doc_id(source: str, key: str, record: int) -> int:
    h = hashlib.blake2b(f"{source}\0{key}\0{record}".encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def shuffle_key(seed: int, did: int) -> int:
    h = hashlib.blake2b(struct.pack("<QQ", seed, did), digest_size=8, person=b"steppack-shuffle")
    return int.from_bytes(h.digest(), "little")


def derive_seed(seed: int, *parts) -> int:
    """A 64-bit seed for one use (a bucket's rows, a pass, a step) from the job's seed."""
    text = "\0".join(str(p) for p in parts)
    h = hashlib.blake2b(struct.pack("<Q", seed) + text.encode("utf-8"), digest_size=8, person=b"steppack-derive")
    return int.from_bytes(h.digest(), "little")


def permutation(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n): rows sorted by a splitmix64 hash of (seed, row).

    Written out rather than numpy's Generator, whose streams may change between numpy versions:
    the output bytes must not depend on which numpy a worker has."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed)
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable")


# ---------------------------------------------------------------- quotas

def quotas(weights: Sequence[Fraction], rows_per_step: int) -> Iterator[list[int]]:
    """Rows of each source in steps 0, 1, 2, ...: q_i(s) with sum_i q_i(s) = rows_per_step and,
    at every prefix, |sum_{t<=s} q_i(t) - w_i * rows_per_step * (s + 1)| < 1 (exactly 0 where the
    target is a whole number). `weights` are exact and add up to 1.

    Each source's m-th row (m = 1, 2, ...) is a unit job released at the first step whose target
    T_i(s) = w_i R (s+1) exceeds m - 1 and due at the first step where T_i(s) >= m; delivering
    every job inside its window is exactly the bound above. Earliest deadline first fills each
    step with R jobs and meets every deadline whenever any schedule can, and one can: R rows a
    step is exactly the sum of the targets' growth. Among jobs due at the same step the ones whose
    exact due time comes first go first (the largest remainder method with carry, made monotone);
    then the lower source index. Integer arithmetic throughout."""
    if abs(sum(weights) - 1) > 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0 and add up to 1, got {weights}")
    den = math.lcm(*(w.denominator for w in weights))
    num = [int(w * den) for w in weights]
    R = rows_per_step
    k = len(num)
    done = [0] * k
    s = 0

    def released(i: int) -> int:  # jobs with release <= s: ceil(T_i(s))
        return -(-num[i] * R * (s + 1) // den)

    def due(i: int, d: int) -> int:  # jobs with deadline <= d: floor(T_i(d))
        return num[i] * R * (d + 1) // den

    while True:
        top = [released(i) if num[i] else 0 for i in range(k)]

        def avail(d: int) -> list[int]:
            return [max(0, min(top[i], due(i, d)) - done[i]) if num[i] else 0 for i in range(k)]

        # The smallest deadline d with R jobs available by it (binary search; at the last
        # deadline of a released job, every released job counts, and they are >= R).
        lo = s
        hi = max(-(-top[i] * den // (num[i] * R)) - 1 for i in range(k) if num[i])
        hi = max(hi, s)
        while lo < hi:
            mid = (lo + hi) // 2
            if sum(avail(mid)) >= R:
                hi = mid
            else:
                lo = mid + 1
        q = avail(lo - 1) if lo > s else [0] * k
        at = avail(lo)
        r = R - sum(q)  # rows still to choose among the jobs due at step `lo`
        if r < 0 or r > sum(at) - sum(q):
            raise InternalError(f"quotas: step {s} could not be filled ({weights}, {R})")  # never: see above
        q = [q[i] + x for i, x in enumerate(_due_first(r, [done[i] + q[i] for i in range(k)],
                                                        [at[i] - q[i] for i in range(k)], num))]
        for i in range(k):
            done[i] += q[i]
        yield q
        s += 1


def _due_first(r: int, before: list[int], count: list[int], num: list[int]) -> list[int]:
    """Of the jobs before[i]+1 .. before[i]+count[i] of each source (all due at one step), how many
    of each to take so that the r taken are those whose exact due time m / w_i comes first (ties:
    lower source index): the sources furthest behind their target. Picks r, or drops the others,
    whichever is fewer, one job at a time (r or the rest is a handful except in odd cases)."""
    k = len(num)
    take = [0] * k
    if r <= sum(count) - r:
        for _ in range(r):  # m_i / num_i smallest, compared exactly by cross-multiplication
            best = None
            for i in range(k):
                if take[i] < count[i] and (best is None or (before[i] + take[i] + 1) * num[best]
                                           < (before[best] + take[best] + 1) * num[i]):
                    best = i
            take[best] += 1
        return take
    take = list(count)
    for _ in range(sum(count) - r):  # drop the latest: m_i / num_i largest, the higher index on ties
        worst = None
        for i in range(k):
            if take[i] > 0 and (worst is None or (before[i] + take[i]) * num[worst]
                                >= (before[worst] + take[worst]) * num[i]):
                worst = i
        take[worst] -= 1
    return take


# ---------------------------------------------------------------- the plan

class Slice(NamedTuple):
    file: str
    start: int
    stop: int
    order: int = -1
    """-1: rows [start, stop) as stored; else the rows permutation(rows in file, order)[start:stop]."""


class Stream(NamedTuple):
    name: str
    """Names the stream in the seeds of its repeated passes."""
    files: list[tuple[str, int]]
    """(row file, rows) in order: one pass."""

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.files)


class Plan(NamedTuple):
    steps: list[list[Slice]]
    """Slices of each step: stream 0's rows, then stream 1's, ..."""
    step_rows: list[list[int]]
    """Rows of each stream in each step."""
    stage_steps: list[int]
    remainder: list[Slice]
    remainder_rows: list[int]
    """Rows of each stream's first pass that no step took."""
    used: list[int]
    """Rows each stream gave to the steps (over rows_per_pass: the passes)."""


def pass_files(stream: Stream, p: int, seed: int) -> list[tuple[str, int, int]]:
    """(file, rows, order) of pass p: pass 0 as stored, later passes freshly shuffled."""
    if p == 0:
        return [(f, n, -1) for f, n in stream.files]
    files = [stream.files[j] for j in permutation(len(stream.files), derive_seed(seed, "pass", stream.name, p))]
    return [(f, n, derive_seed(seed, "pass", stream.name, p, f)) for f, n in files]


def take(stream: Stream, a: int, b: int, seed: int) -> list[Slice]:
    """Slices of stream rows [a, b), counted over passes (row x is row x % rows of pass x // rows)."""
    P = stream.rows
    out: list[Slice] = []
    while a < b:
        p, r = divmod(a, P)
        stop_in_pass = min(P, r + (b - a))
        at = 0
        for f, n, order in pass_files(stream, p, seed):
            lo, hi = max(r, at), min(stop_in_pass, at + n)
            if lo < hi:
                out.append(Slice(f, lo - at, hi - at, order))
            at += n
        a += stop_in_pass - r
    return out


def make_plan(streams: Sequence[Stream], stages: Sequence[tuple[int | None, Sequence[Fraction]]],
              rows_per_step: int, seed: int) -> Plan:
    """Steps stage after stage; a stage of `None` steps runs until its next step would need a row
    that some stream (of positive weight) does not have left in its first pass: no repetition."""
    if rows_per_step <= 0:
        raise ValueError(f"rows_per_step must be positive, got {rows_per_step}")
    k = len(streams)
    used = [0] * k
    steps: list[list[Slice]] = []
    step_rows: list[list[int]] = []
    stage_steps = []
    for n_steps, weights in stages:
        if len(weights) != k:
            raise ValueError(f"{len(weights)} weights for {k} streams")
        for i in range(k):
            if weights[i] and not streams[i].rows and n_steps:
                raise EmptyStream(streams[i].name)
        made = 0
        for q in quotas(weights, rows_per_step):
            if n_steps is not None and made == n_steps:
                break
            if n_steps is None and any(used[i] + q[i] > streams[i].rows for i in range(k)):
                break
            step = []
            for i in range(k):
                if q[i]:
                    step += take(streams[i], used[i], used[i] + q[i], seed)
                    used[i] += q[i]
            steps.append(step)
            step_rows.append(q)
            made += 1
        stage_steps.append(made)
    remainder, remainder_rows = [], []
    for i, st in enumerate(streams):
        left = max(0, st.rows - used[i])
        remainder += take(st, used[i], st.rows, seed) if left else []
        remainder_rows.append(left)
    return Plan(steps, step_rows, stage_steps, remainder, remainder_rows, used)


class EmptyStream(ValueError):
    """A stream of positive weight has no full row, so no number of passes can give its share."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def stages_of(cfg, streams: Sequence[Stream]) -> list[tuple]:
    """The plan's stages for JobConfig `cfg`: its mixture, or one stream taking every row (at most
    `steps`)."""
    if cfg.is_mixture:
        return cfg.mixture()
    n = streams[0].rows // cfg.rows_per_step
    return [(min(n, cfg.steps) if cfg.steps else n, [Fraction(1)])]
