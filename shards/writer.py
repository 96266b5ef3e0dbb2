"""Writing one step file: a `RowBlock` becomes an Arrow IPC file, checked against the format.

The bytes depend only on the rows, seq_len, dtype, step and compression, so a retried write
produces an identical file. `write_step` streams the file to its destination (atomically),
hashing it on the way: the rows are never held twice (a bucket's row file in the prepare job is
tens of MB). `write_blocks` does the same for rows that come in several blocks, holding one record
batch at a time; `encode_step` gives the same bytes in memory.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa

from . import fs
from .errors import FormatError
from .format import COMPRESSIONS, arrow_array, default_batch_rows, numpy_dtype, step_schema
from .manifest import FileInfo
from .rows import RowBlock


def check_rows(rows: RowBlock, seq_len: int, dtype: str) -> None:
    """Refuse rows that would make a file `verify` rejects."""
    if rows.tokens.ndim != 2 or rows.tokens.shape[1] != seq_len:
        raise FormatError(f"rows have shape {rows.tokens.shape}, expected (n, {seq_len})")
    if rows.tokens.dtype != numpy_dtype(dtype):
        raise FormatError(f"rows have dtype {rows.tokens.dtype}, expected {dtype}")
    n = rows.num_rows
    if rows.piece_offsets.shape != (n + 1,) or rows.piece_offsets[0] != 0:
        raise FormatError("piece_offsets must have n + 1 entries starting at 0")
    p = int(rows.piece_offsets[-1])
    if not (len(rows.doc_lens) == len(rows.doc_ids) == len(rows.source) == p):
        raise FormatError("doc_lens, doc_ids and source must have one entry per piece")
    if p and int(rows.doc_lens.min()) <= 0:
        raise FormatError("every document piece must hold at least one token")
    if n and int(rows.row_used().max()) > seq_len:
        raise FormatError(f"a row's doc_lens add up to more than seq_len {seq_len}")


def to_table(rows: RowBlock, seq_len: int, dtype: str, step: int | None = None,
             batch_rows: int | None = None) -> pa.Table:
    schema = step_schema(seq_len, dtype, step, batch_rows)
    offsets = arrow_array(rows.piece_offsets.astype(np.int32))
    tokens = pa.FixedSizeListArray.from_arrays(arrow_array(rows.tokens.reshape(-1)), seq_len)
    cols = [
        tokens,
        pa.ListArray.from_arrays(offsets, arrow_array(rows.doc_lens.astype(np.int32, copy=False))),
        pa.ListArray.from_arrays(offsets, arrow_array(rows.doc_ids.astype(np.uint64, copy=False))),
        pa.ListArray.from_arrays(offsets, arrow_array(rows.source.astype(np.uint16, copy=False))),
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _encode(sink, blocks: Iterable[RowBlock], *, seq_len: int, dtype: str, step: int | None = None,
            compression: str | None = None, batch_rows: int | None = None) -> tuple[int, int, int, list]:
    """Write the blocks' rows to `sink` as one step file, a record batch of `batch_rows` rows at a
    time (the last one shorter), each checked first; returns (rows, document tokens, pieces, the
    distinct doc ids of each batch)."""
    if compression not in COMPRESSIONS:
        raise FormatError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    batch_rows = default_batch_rows(seq_len, dtype) if batch_rows is None else batch_rows
    if batch_rows <= 0:
        raise FormatError(f"batch_rows must be >= 1, got {batch_rows}")
    rows = tokens = pieces = 0
    ids: list[np.ndarray] = []
    with pa.ipc.new_file(sink, step_schema(seq_len, dtype, step, batch_rows),
                         options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        def put(block: RowBlock) -> None:
            nonlocal rows, tokens, pieces
            # One table per record batch: pyarrow's own chunking of a larger table writes sliced
            # list columns with other padding, so the bytes would depend on how the rows arrived.
            for lo in range(0, max(1, block.num_rows), batch_rows):
                w.write_table(to_table(block.slice(lo, min(lo + batch_rows, block.num_rows)), seq_len, dtype, step,
                                       batch_rows))
            rows, tokens, pieces = rows + block.num_rows, tokens + int(block.row_used().sum()), pieces + len(block.doc_lens)
            ids.append(np.unique(block.doc_ids))

        pending = None
        for block in blocks:
            check_rows(block, seq_len, dtype)
            pending = block if pending is None else RowBlock.concat([pending, block])
            full = pending.num_rows - pending.num_rows % batch_rows
            if full:
                put(pending.slice(0, full))
                pending = pending.slice(full, pending.num_rows)
        if pending is not None and (pending.num_rows or not rows):
            put(pending)  # the last, shorter batch; or an empty file's empty table
    return rows, tokens, pieces, ids


def encode_step(rows: RowBlock, **kwargs) -> bytes:
    """The bytes `write_step` writes, in memory. kwargs: seq_len, dtype, step (None for the
    remainder file), compression, batch_rows."""
    sink = pa.BufferOutputStream()
    _encode(sink, [rows], **kwargs)
    return sink.getvalue().to_pybytes()


def file_info(rel: str, rows: RowBlock, data: bytes | pa.Buffer) -> FileInfo:
    return _info(rel, rows, len(data), hashlib.sha256(data))


def _info(rel: str, rows: RowBlock, size: int, digest) -> FileInfo:
    used = int(rows.row_used().sum())
    return FileInfo(
        file=rel,
        rows=rows.num_rows,
        tokens=used,
        padding=rows.num_rows * rows.seq_len - used,
        documents=int(len(np.unique(rows.doc_ids))),
        pieces=int(len(rows.doc_lens)),
        bytes=size,
        sha256=digest.hexdigest(),
    )


class _Hashing:
    """A write-only file object that hashes and counts what passes through to `sink`."""

    def __init__(self, sink):
        self.sink, self.digest, self.size, self.closed = sink, hashlib.sha256(), 0, False

    def write(self, data) -> int:
        self.digest.update(data)  # releases the GIL for large buffers
        self.sink.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def write_blocks(out: str, rel: str, blocks: Iterable[RowBlock], *, seq_len: int, **kwargs) -> FileInfo:
    """Write rows that come in blocks to `out/rel` (atomically), streamed and hashed on the way, and
    return what the manifest records of the file. Only one record batch and the block being read
    are held: the prepare job's remainder can hold any number of rows. kwargs: dtype, step (None
    for the remainder file), compression, batch_rows."""
    with fs.atomic_output(fs.join(out, rel)) as f:
        sink = _Hashing(f)
        rows, tokens, pieces, ids = _encode(pa.PythonFile(sink, mode="w"), blocks, seq_len=seq_len, **kwargs)
    return FileInfo(file=rel, rows=rows, tokens=tokens, padding=rows * seq_len - tokens,
                    documents=len(np.unique(np.concatenate(ids))) if ids else 0, pieces=pieces,
                    bytes=sink.size, sha256=sink.digest.hexdigest())


def write_step(out: str, rel: str, rows: RowBlock, **kwargs) -> FileInfo:
    """Write rows to `out/rel` (atomically) and return what the manifest records of the file.
    A refused row block never opens the destination. kwargs as for `encode_step`."""
    check_rows(rows, kwargs["seq_len"], kwargs["dtype"])
    return write_blocks(out, rel, [rows], **kwargs)
