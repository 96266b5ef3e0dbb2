"""Writing one step file: a `RowBlock` becomes an Arrow IPC file, checked against the format.

The bytes depend only on the rows, seq_len, dtype, step and compression, so a retried write
produces an identical file. `write_step` streams the file to its destination (atomically),
hashing it on the way: the rows are never held twice (a bucket's row file in the prepare job is
tens of MB). `encode_step` gives the same bytes in memory.
"""

from __future__ import annotations

import hashlib

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


class _Encoding:
    """A checked step file to be written: its table, write options and batch size."""

    def __init__(self, rows: RowBlock, *, seq_len: int, dtype: str, step: int | None,
                 compression: str | None = None, batch_rows: int | None = None):
        if compression not in COMPRESSIONS:
            raise FormatError(f"compression {compression!r} is not one of {COMPRESSIONS}")
        self.batch_rows = default_batch_rows(seq_len, dtype) if batch_rows is None else batch_rows
        if self.batch_rows <= 0:
            raise FormatError(f"batch_rows must be >= 1, got {self.batch_rows}")
        check_rows(rows, seq_len, dtype)
        self.table = to_table(rows, seq_len, dtype, step, self.batch_rows)
        self.options = pa.ipc.IpcWriteOptions(compression=compression)

    def write(self, sink) -> None:
        with pa.ipc.new_file(sink, self.table.schema, options=self.options) as w:
            w.write_table(self.table, max_chunksize=self.batch_rows)


def encode_step(rows: RowBlock, **kwargs) -> bytes:
    """The bytes `write_step` writes, in memory. kwargs: seq_len, dtype, step (None for the
    remainder file), compression, batch_rows."""
    sink = pa.BufferOutputStream()
    _Encoding(rows, **kwargs).write(sink)
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


def write_step(out: str, rel: str, rows: RowBlock, **kwargs) -> FileInfo:
    """Write rows to `out/rel` (atomically) and return what the manifest records of the file.

    kwargs as for `encode_step`.
    """
    encoding = _Encoding(rows, **kwargs)  # refused rows never open the destination
    with fs.atomic_output(fs.join(out, rel)) as f:
        sink = _Hashing(f)
        encoding.write(pa.PythonFile(sink, mode="w"))
    return _info(rel, rows, sink.size, sink.digest)
