"""Benchmark: read every rank slice of step files into torch int64 tensors, against a numpy memmap.

The limit is the same tokens as one raw uint32 file per step, read through `np.memmap` and widened
to int64 into the same preallocated buffers: the least work any loader can do. Both read from the page
cache (each is read once before timing); the figure is the median of the per-round ratios over
--repeats rounds, each round running both back to back in alternating order.

    python bench/read_steps.py                    # 8 steps of 1024 x 4096 uint32, world size 8
    python bench/read_steps.py --data OUT         # an existing prepared output
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steppack.shards import (  # noqa: E402
    FileInfo, Manifest, RowBlock, SourceInfo, TokenizerInfo, open_step, rank_rows, read_manifest, step_file_name,
    write_manifest, write_step,
)


def make_steps(out: str, steps: int, rows: int, seq_len: int, compression: str | None) -> Manifest:
    rng = np.random.default_rng(0)
    infos = []
    for s in range(steps):
        tokens = rng.integers(0, 100_002, (rows, seq_len), dtype=np.uint32)
        block = RowBlock(tokens, np.arange(rows + 1, dtype=np.int64), np.full(rows, seq_len, np.int32),
                         np.arange(s * rows, (s + 1) * rows, dtype=np.uint64), np.zeros(rows, np.uint16))
        infos.append(write_step(out, step_file_name(s), block, seq_len=seq_len, dtype="uint32", step=s,
                                compression=compression))
    m = Manifest(seq_len=seq_len, rows_per_step=rows, dtype="uint32", compression=compression, packing="concat", seed=0,
                 tokenizer=TokenizerInfo(name="random", sha256="0" * 64, vocab_size=100_002, bos_id=None,
                                         eos_id=None, pad_id=0, add_bos=False, add_eos=False),
                 sources=[SourceInfo(name="random", documents=steps * rows, tokens=steps * rows * seq_len)],
                 steps=infos)
    write_manifest(out, m)
    return m


def read_steppack(out: str, m: Manifest, world: int, bufs) -> int:
    """Every rank slice of every step into int64 torch tensors, as the trainer's data path does."""
    total = 0
    for info in m.steps:
        with open_step(os.path.join(out, info.file)) as f:
            for r in range(world):
                rows = rank_rows(m.rows_per_step, r, world)
                t = torch.from_numpy(f.read_tokens_into(rows, bufs[r]))
                total += t.numel()
    return total


def read_memmap(raws: list[str], m: Manifest, world: int, bufs) -> int:
    """The limit: each step's tokens as one flat uint32 file, memory-mapped per step, widened to int64."""
    total = 0
    for raw in raws:
        mm = np.memmap(raw, dtype=np.uint32, mode="r").reshape(-1, m.seq_len)
        for r in range(world):
            rows = rank_rows(m.rows_per_step, r, world)
            np.copyto(bufs[r], mm[rows.start: rows.stop])
            total += torch.from_numpy(bufs[r]).numel()
        del mm
    return total


def timed_pair(a, b, repeats: int) -> tuple[list[float], list[float], int, int]:
    """Seconds of `a` and of `b` per round. Each round runs both back to back, the order swapped
    every round, so that noise from other work on the machine falls on both alike."""
    a(), b()  # warm the page cache
    ta, tb = [], []
    for i in range(repeats):
        for f, ts in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            n = f()
            ts.append(time.perf_counter() - t0)
            if f is a:
                na = n
            else:
                nb = n
    return ta, tb, na, nb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="An existing output directory (default: write random steps to a temp dir).")
    ap.add_argument("--steps", type=int, default=8, help="Steps to write when --data is not given.")
    ap.add_argument("--rows", type=int, default=1024, help="Rows per step when writing.")
    ap.add_argument("--seq-len", type=int, default=4096, help="Tokens per row when writing.")
    ap.add_argument("--world", type=int, default=8, help="Ranks whose slices are read.")
    ap.add_argument("--repeats", type=int, default=21, help="Timed rounds; the median of per-round ratios is reported.")
    ap.add_argument("--compression", choices=["zstd"], default=None, help="Write zstd-compressed steps.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.data or os.path.join(tmp, "out")
        m = read_manifest(out) if args.data else make_steps(out, args.steps, args.rows, args.seq_len, args.compression)
        raws = []
        for i, info in enumerate(m.steps):  # the same token bytes, one flat file per step
            raws.append(os.path.join(tmp, f"step-{i}.u32"))
            with open_step(os.path.join(out, info.file)) as s, open(raws[-1], "wb") as f:
                f.write(np.ascontiguousarray(s.read_tokens()).astype(np.uint32).tobytes())
        n = m.rows_per_step // args.world
        bufs = [np.empty((n, m.seq_len), np.int64) for _ in range(args.world)]
        t_sp, t_mm, tokens, tokens_mm = timed_pair(
            lambda: read_steppack(out, m, args.world, bufs), lambda: read_memmap(raws, m, args.world, bufs), args.repeats
        )
        assert tokens == tokens_mm
        sp, mm = tokens / statistics.median(t_sp), tokens / statistics.median(t_mm)
        ratios = sorted(b / a for a, b in zip(t_sp, t_mm))
        print(f"{m.num_steps} steps x {m.rows_per_step} rows x {m.seq_len} tokens ({m.dtype}, "
              f"compression {m.compression}), world {args.world}, {args.repeats} interleaved rounds")
        print(f"steppack open_step + read_tokens_into -> torch int64: {sp / 1e6:8.1f} M tokens/s (median)")
        print(f"numpy memmap -> int64 (limit):                      {mm / 1e6:8.1f} M tokens/s (median)")
        print(f"ratio: {statistics.median(ratios):.3f} of the limit (median of per-round ratios; "
              f"quartiles {ratios[len(ratios) // 4]:.3f}..{ratios[3 * len(ratios) // 4]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
