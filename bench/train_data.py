"""Benchmark: the trainer's data path against the memmap limit, and data wait with the `tiny` model.

1. Rows/s that `steppack.trainer.data.StepStream.load` delivers (open step s -> every rank's slice ->
   micro-batch int64 torch tensors, exactly what the training loop consumes), against the least
   work any loader can do: the same tokens as one flat uint32 file read with `np.memmap` and widened
   into the same int64 micro-batch buffers. Same run, same page cache (each is read once before
   timing), median of --repeats rounds. With --attention doc the path also reads doc_lens.
2. The share of step time the training loop waited for data, training `tiny` for --train-steps
   steps with the background prefetch on (the first step is read while the model is built);
   reported over all steps and over the steps after the first.

    python bench/train_data.py                  # 4 steps of 1024 x 4096 uint32, worlds 1 and 8, micro-batch 4
    python bench/train_data.py --data OUT       # prepared shards instead of random ones (part 1)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steppack.shards import (  # noqa: E402
    Manifest, RowBlock, SourceInfo, TokenizerInfo, open_step, rank_micro_batches, read_manifest, step_file_name,
    write_manifest, write_step,
)
from steppack.trainer.config import TrainConfig  # noqa: E402
from steppack.trainer.data import StepStream  # noqa: E402
from steppack.trainer.train import run  # noqa: E402


def make_steps(out: str, steps: int, rows: int, seq_len: int, vocab: int, seed: int = 0) -> Manifest:
    """Random tokens, each row cut into a few document pieces (as packing makes them); no padding."""
    rng = np.random.default_rng(seed)
    infos = []
    for s in range(steps):
        tokens = rng.integers(0, vocab, (rows, seq_len), dtype=np.uint32)
        lens, counts = [], []
        for _ in range(rows):
            cuts = np.sort(rng.choice(np.arange(1, seq_len), size=int(rng.integers(0, 6)), replace=False))
            piece = np.diff(np.concatenate([[0], cuts, [seq_len]]))
            lens.append(piece)
            counts.append(len(piece))
        doc_lens = np.concatenate(lens).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        block = RowBlock(tokens, offsets, doc_lens, np.arange(len(doc_lens), dtype=np.uint64),
                         np.zeros(len(doc_lens), np.uint16))
        infos.append(write_step(out, step_file_name(s), block, seq_len=seq_len, dtype="uint32", step=s))
    m = Manifest(seq_len=seq_len, rows_per_step=rows, dtype="uint32", packing="concat", seed=seed,
                 tokenizer=TokenizerInfo(name="random", sha256="0" * 64, vocab_size=vocab, bos_id=None,
                                         eos_id=None, pad_id=0, add_bos=False, add_eos=False),
                 sources=[SourceInfo(name="random", documents=0, tokens=steps * rows * seq_len)], steps=infos)
    write_manifest(out, m)
    return m


def make_streams(out: str, m: Manifest, world: int, micro: int, doc: bool) -> list[StepStream]:
    # Made once, as the trainer makes its one stream: their buffers are allocated and reused.
    return [StepStream(out, m, rank=r, world_size=world, micro_batch=micro, start=0, stop=m.num_steps,
                       doc_lens=doc, prefetch=0) for r in range(world)]


def trainer_path(m: Manifest, streams: list[StepStream]) -> int:
    """Every rank's micro-batch tensors of every step, through the trainer's own loader."""
    rows = 0
    for s in range(m.num_steps):
        for stream in streams:
            batch = stream.load(s)
            rows += sum(mb.tokens.shape[0] for mb in batch.micro)
    return rows


def memmap_path(raw: str, m: Manifest, world: int, micro: int, bufs: np.ndarray) -> int:
    mm = np.memmap(raw, dtype=np.uint32, mode="r").reshape(-1, m.seq_len)
    rows = 0
    for s in range(m.num_steps):
        base = s * m.rows_per_step
        for r in range(world):
            for j, mb in enumerate(rank_micro_batches(m.rows_per_step, r, world, micro)):
                np.copyto(bufs[r, j], mm[base + mb.start: base + mb.stop])
                rows += torch.from_numpy(bufs[r, j]).shape[0]
    return rows


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per round of each function, the functions interleaved in every round so that load
    from other processes on a shared machine hits them alike (each is run once before timing)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def data_path(args, tmp: str, world: int) -> None:
    out = args.data or os.path.join(tmp, "big")
    if args.data or os.path.exists(os.path.join(out, "manifest.json")):
        m = read_manifest(out)
    else:
        m = make_steps(out, args.steps, args.rows, args.seq_len, 100_002)
    raw = os.path.join(tmp, "tokens.u32")
    with open(raw, "wb") as f:  # the same token bytes as one flat file
        for info in m.steps:
            with open_step(os.path.join(out, info.file)) as step:
                f.write(np.ascontiguousarray(step.read_tokens()).astype(np.uint32).tobytes())
    n_micro = m.rows_per_step // (world * args.micro_batch)
    # One buffer set per rank, as each rank's process has its own (a shared one would stay in cache).
    bufs = np.empty((world, n_micro, args.micro_batch, m.seq_len), np.int64)
    rows = m.num_steps * m.rows_per_step
    streams = {doc: make_streams(out, m, world, args.micro_batch, doc) for doc in (False, True)}
    assert trainer_path(m, streams[False]) == memmap_path(raw, m, world, args.micro_batch, bufs) == rows
    times = interleaved({
        "memmap": lambda: memmap_path(raw, m, world, args.micro_batch, bufs),
        "trainer": lambda: trainer_path(m, streams[False]),
        "trainer_doc": lambda: trainer_path(m, streams[True]),
    }, args.repeats)
    print(f"part 1: {m.num_steps} steps x {m.rows_per_step} rows x {m.seq_len} tokens ({m.dtype}), world "
          f"{world}, micro-batch {args.micro_batch}, median of {args.repeats} interleaved rounds")
    labels = {"memmap": "numpy memmap -> int64 micro-batches (limit)", "trainer": "trainer StepStream.load",
              "trainer_doc": "trainer StepStream.load + doc_lens (attention doc)"}
    for k, ts in times.items():
        rate = rows / statistics.median(ts)
        ratio = "" if k == "memmap" else (
            f"  ratio {statistics.median(a / b for a, b in zip(times['memmap'], ts)):.3f} of the limit "
            f"(median of per-round ratios; best round {max(a / b for a, b in zip(times['memmap'], ts)):.3f})")
        print(f"  {labels[k]:<49} {rate:10,.0f} rows/s ({rate * m.seq_len / 1e6:7.1f} M tokens/s){ratio}")


def wait_share(args, tmp: str) -> None:
    out = os.path.join(tmp, "small")
    make_steps(out, args.train_steps, args.train_rows, args.train_seq_len, 100_002, seed=1)
    cfg = TrainConfig(data=out, model="tiny", context=args.train_seq_len, micro_batch=args.train_micro_batch,
                      warmup_steps=2, quiet=True, prefetch=1, device="cpu")
    s = run(cfg)
    print(f"part 2: tiny, {args.train_steps} steps of {args.train_rows} rows x {args.train_seq_len} tokens, "
          f"micro-batch {args.train_micro_batch}, prefetch 1, {torch.get_num_threads()} torch threads")
    print(f"  data wait: {100 * s['data_wait_share']:.3f}% of step time (all steps); "
          f"{100 * s['data_wait_share_after_first']:.4f}% after the first step; "
          f"{s['data_wait_ms']:.1f} ms in {s['wall_s']:.1f} s; {s['tokens_per_s']:,.0f} tokens/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="A prepared output for part 1 (default: random steps in a temp dir).")
    ap.add_argument("--steps", type=int, default=4, help="Steps to write for part 1.")
    ap.add_argument("--rows", type=int, default=1024, help="Rows per step for part 1 (DeepSeekMath 1.3B: 1024).")
    ap.add_argument("--seq-len", type=int, default=4096, help="Tokens per row for part 1.")
    ap.add_argument("--world", default="1,8", help="World sizes for part 1, comma-separated; each reads every "
                                                   "rank's slices in this process.")
    ap.add_argument("--micro-batch", type=int, default=4, help="Rows per micro-batch tensor in part 1.")
    ap.add_argument("--repeats", type=int, default=5, help="Timed rounds of part 1; the median is reported.")
    ap.add_argument("--train-steps", type=int, default=6, help="Steps of tiny in part 2 (0 skips part 2).")
    ap.add_argument("--train-rows", type=int, default=8, help="Rows per step in part 2.")
    ap.add_argument("--train-seq-len", type=int, default=256, help="Tokens per row in part 2.")
    ap.add_argument("--train-micro-batch", type=int, default=4, help="Micro-batch in part 2.")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for world in map(int, args.world.split(",")):
            data_path(args, tmp, world)
        if args.train_steps:
            wait_share(args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
