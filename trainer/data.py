"""The step stream: global step s -> shard s -> this rank's rows -> micro-batch int64 tensors.

The loader is a pure function of (step, rank, world_size, micro_batch): no sampler state, no index
to build at start-up, nothing to checkpoint but the step. Which rows a rank reads comes from
`steppack.shards.slicing.rank_micro_batches`, the function `verify` uses too, so a step is made of the same
rows whatever the world size; resuming on a different number of ranks changes who reads a row,
never which rows make up the step.

A background thread reads the next step(s) while the current one trains (`prefetch`); pyarrow's
reads and numpy's copies release the GIL. Tokens are copied and widened (uint16/uint32 -> int64,
the dtype `nn.Embedding` takes) in one pass into preallocated buffers: 1024 x 4096 tokens = 32 MiB
of int64 per step at world size 1. Buffers are recycled round-robin over `prefetch + 2` slots, so a
step's tensors stay valid until the consumer asks for the step after it.

Only the small per-row facts are read besides the tokens: `used` (document tokens, the rest of the
row is padding) when the step has padding, `doc_lens` for intra-document attention, and `doc_lens`
with `source` for the per-source loss of a mixture. These are per piece, not per token (a 1024-row
step of 4096-token rows holds a few thousand pieces: tens of KiB against the tokens' 16 MiB). Labels,
positions, masks and per-position sources are built from them where the model runs
(`steppack.trainer.targets`).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from steppack.shards import fs
from steppack.shards.errors import ConfigError, FormatError
from steppack.shards.manifest import FileInfo, Manifest
from steppack.shards.reader import StepFile, open_step
from steppack.shards.rows import row_used
from steppack.shards.slicing import rank_micro_batches


@dataclass
class MicroBatch:
    rows: range
    """Rows of the step (global row numbers within the step) this micro-batch holds."""
    tokens: torch.Tensor
    """(m, seq_len) int64, a view of the stream's preallocated buffer."""
    used: np.ndarray | None
    """(m,) document tokens per row (positions from `used` on are padding); None: no padding."""
    doc_lens: tuple[np.ndarray, np.ndarray] | None
    """(piece_offsets, doc_lens): row i of the micro-batch has the pieces
    doc_lens[piece_offsets[i]:piece_offsets[i + 1]]; views of the step's arrays, so the offsets
    need not start at 0 (only for attention='doc' or the per-source loss)."""
    source: np.ndarray | None = None
    """The step's per-piece source indices (manifest order), parallel to doc_lens and indexed by the
    same piece_offsets (only for the per-source loss)."""


@dataclass
class StepBatch:
    step: int
    shard: int
    """The shard read: step mod num_shards (they differ only when --epochs > 1)."""
    micro: list[MicroBatch]
    read_ms: float
    """Time the reading took (in the background thread when prefetching)."""


def manifest_identity(m: Manifest) -> str:
    """sha256 over what decides the training data: shape, dtype, tokenizer, and every step's checksum.

    Tool version and job config are left out: re-writing the manifest with a newer steppack that
    produced byte-identical steps does not change what a resumed run reads."""
    ident = {
        "seq_len": m.seq_len, "rows_per_step": m.rows_per_step, "dtype": m.dtype,
        "tokenizer": asdict(m.tokenizer),
        "steps": [(s.file, s.rows, s.sha256) for s in m.steps],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def check_model_fits_data(m: Manifest, *, vocab_size: int, context: int, model: str) -> None:
    """Refuse a model that cannot read these tokens or whose context differs from the rows."""
    if vocab_size < m.tokenizer.vocab_size:
        raise ConfigError(
            f"model {model} has a vocabulary of {vocab_size} but the data's tokenizer "
            f"({m.tokenizer.name}) has {m.tokenizer.vocab_size} ids; pass --vocab-size "
            f"{m.tokenizer.vocab_size} or larger (DeepSeek pads to 102400)")
    if context != m.seq_len:
        raise ConfigError(
            f"model {model} has a context of {context} tokens but the data's rows have seq_len "
            f"{m.seq_len}; pass --context {m.seq_len}, or re-run prepare with --seq-len {context}")


def total_steps(m: Manifest, steps: int | None, epochs: int) -> int:
    """The run's length; more steps than shards only when --epochs asks to repeat the data."""
    if m.num_steps == 0:
        raise ConfigError("the manifest lists no steps: the corpus was smaller than one step "
                          f"({m.rows_per_step} rows); prepare more data or a smaller --rows-per-step")
    available = m.num_steps * epochs
    if steps is None:
        return available
    if steps > available:
        raise ConfigError(
            f"--steps {steps} asks for more steps than the data has: {m.num_steps} step shards"
            + (f" x {epochs} epochs" if epochs > 1 else "")
            + f"; pass --steps {available} or less, or --epochs {-(-steps // m.num_steps)} to repeat the data")
    return steps


def check_step(uri: str, f: StepFile, info: FileInfo, m: Manifest, shard: int) -> None:
    """Refuse a step file that is not the one the manifest lists: its metadata (step index, seq_len,
    dtype), byte size and sha256. In the prefetch thread, before the step's rows are used; hashing
    16 MiB (1024 x 4096 uint32) takes tens of milliseconds there, not in the step."""
    what = None
    if (f.step, f.seq_len, f.dtype) != (shard, m.seq_len, m.dtype):
        what = (f"says it is step {f.step} of seq_len {f.seq_len}, {f.dtype}; the manifest lists step {shard} of "
                f"seq_len {m.seq_len}, {m.dtype}")
    else:
        data = fs.read_bytes(uri)
        if len(data) != info.bytes:
            what = f"has {len(data):,} bytes, the manifest says {info.bytes:,}"
        elif hashlib.sha256(data).hexdigest() != info.sha256:
            what = "does not match the manifest's sha256 (a byte changed, or another output's file sits here)"
    if what:
        raise FormatError(f"{uri} {what}: step {shard} is not trained on; run 'steppack shards verify' on the "
                          "output, re-run prepare, or pass --no-verify-steps to train on it anyway")


def read_source(f: StepFile, rows: range, name: str, n_sources: int) -> np.ndarray:
    """The `source` column (uint16 per piece) of `rows`, parallel to `f.read_doc_lens(rows)`,
    checked against the manifest's sources."""
    source = f.read_source(rows)
    if len(source) and int(source.max()) >= n_sources:
        raise FormatError(f"{name} has a piece of source index {int(source.max())} but the manifest lists "
                          f"{n_sources} sources; run 'steppack shards verify' on the output")
    return source


class StepStream:
    """Iterate over `StepBatch`es for steps [start, stop) of one rank."""

    def __init__(self, data: str, manifest: Manifest, *, rank: int, world_size: int, micro_batch: int,
                 start: int, stop: int, doc_lens: bool = False, sources: bool = False, prefetch: int = 1,
                 verify: bool = True):
        self.data, self.m = data, manifest
        self.verify = verify  # check_step before a step's rows are used
        # Raises ConfigError naming rows_per_step, world_size and micro_batch when they do not divide.
        self.micro_rows = rank_micro_batches(manifest.rows_per_step, rank, world_size, micro_batch)
        self.micro_batch = micro_batch
        self.doc_lens, self.prefetch = doc_lens, prefetch
        self.sources = sources  # read each piece's `source` too (per-source loss); implies doc_lens
        self.start, self.stop = start, stop
        self.rows = range(self.micro_rows[0].start, self.micro_rows[-1].stop)
        n_slots = prefetch + 2
        # One buffer per slot for the rank's whole slice, read in one call; micro-batches are views.
        self._bufs = [np.empty((len(self.rows), manifest.seq_len), np.int64) for _ in range(n_slots)]
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, step: int, slot: int = 0) -> StepBatch:
        """Read step `step` into buffer slot `slot` (synchronously)."""
        t0 = time.perf_counter()
        shard = step % self.m.num_steps
        info = self.m.steps[shard]
        buf = self._bufs[slot]
        pieces = self.doc_lens or self.sources
        need_used = pieces or info.padding > 0
        uri = fs.join(self.data, info.file)
        with open_step(uri) as f:
            if self.verify:
                check_step(uri, f, info, self.m, shard)
            elif f.seq_len != self.m.seq_len:
                raise ConfigError(f"{info.file} has seq_len {f.seq_len}, the manifest says {self.m.seq_len}; "
                                  "run 'steppack shards verify'")
            f.read_tokens_into(self.rows, buf)
            used, offsets, doc_lens, source = None, None, None, None
            if need_used:
                offsets, doc_lens = f.read_doc_lens(self.rows)
                used = row_used(offsets, doc_lens)
            if self.sources:
                source = read_source(f, self.rows, info.file, len(self.m.sources))
        tokens = torch.from_numpy(buf)
        micro = []
        for rows in self.micro_rows:
            i, j = rows.start - self.rows.start, rows.stop - self.rows.start
            micro.append(MicroBatch(rows, tokens[i:j], None if used is None else used[i:j],
                                    (offsets[i : j + 1], doc_lens) if pieces else None, source))
        return StepBatch(step, shard, micro, (time.perf_counter() - t0) * 1e3)

    def _produce(self) -> None:
        slot = 0
        try:
            for step in range(self.start, self.stop):
                batch = self.load(step, slot)
                slot = (slot + 1) % len(self._bufs)
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the training thread, which re-raises it
            self._put(exc)

    def _put(self, item) -> bool:
        """Queue `item` unless the stream is closed first (the consumer may have stopped early)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def start_prefetch(self) -> None:
        """Start reading in the background now (e.g. while the model is being built); idempotent."""
        if self.prefetch and self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._produce, name="steppack-prefetch", daemon=True)
            self._thread.start()

    def __iter__(self):
        """Yields (StepBatch, wait_ms): wait_ms is how long the training thread waited for the data."""
        if self.prefetch == 0:
            for step in range(self.start, self.stop):
                t0 = time.perf_counter()
                batch = self.load(step, step % len(self._bufs))
                yield batch, (time.perf_counter() - t0) * 1e3
            return
        self.start_prefetch()
        try:
            for _ in range(self.start, self.stop):
                t0 = time.perf_counter()
                item = self._queue.get()
                wait_ms = (time.perf_counter() - t0) * 1e3
                if isinstance(item, BaseException):
                    raise item
                yield item, wait_ms
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
