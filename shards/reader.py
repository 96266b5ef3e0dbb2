"""Reading step files: a local file is memory-mapped and read with zero copies; any other URI
(`gs://`, `s3://`, fsspec schemes) is opened through pyarrow and only the record batches that
hold the requested rows are fetched.

    step = open_step("OUT/steps/step-00000017.arrow")
    rows = step.read(range(256, 512))       # RowBlock; tokens is a view into the mapped file
    step.read_tokens_into(range(256, 512), out_int64)   # one pass: uint32 file -> int64 buffer
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Iterator

import numpy as np
import pyarrow as pa

from . import fs, ipc
from .errors import FormatError
from .format import parse_metadata, parse_schema_metadata
from .rows import RowBlock


class StepFile:
    """One open step (or remainder) file.

    A local uncompressed file is memory-mapped; its metadata and the place of every record batch's
    buffers come straight from the IPC flatbuffers (`steppack.shards.ipc`), so reads build no pyarrow
    objects. pyarrow reads remote and compressed files, and `check_schema()` (which `verify` calls)
    checks the whole schema of any file."""

    # Buffers per record batch: tokens (fixed_size_list: validity; values' validity, values) and
    # three list columns (validity, offsets; values' validity, values).
    _BUFFERS = 3 + 3 * 4

    def __init__(self, uri: str):
        self.uri = uri
        self._mmap = None
        self._pa = None
        self._blocks: list[tuple[int, int, int]] | None = None
        try:
            if fs.is_local(uri):
                fd = os.open(fs.local_path(uri), os.O_RDONLY)
                try:
                    self._mmap = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if os.fstat(fd).st_size else None
                finally:
                    os.close(fd)
                self._source = pa.py_buffer(self._mmap if self._mmap is not None else b"")
                meta = self._read_layout()
            else:
                filesystem, path = fs.filesystem(uri)
                self._source = filesystem.open_input_file(path)
            if self._blocks is None:
                meta = parse_schema_metadata(self._reader.schema, uri)
        except FileNotFoundError as exc:
            raise FormatError(f"{uri} does not exist; run 'steppack shards verify' on its directory") from exc
        except OSError as exc:  # a directory, no permission, a remote read that failed
            raise FormatError(f"{uri} is not a readable Arrow IPC file ({exc}); re-run prepare") from exc
        self.version: int = meta["version"]
        self.seq_len: int = meta["seq_len"]
        self.dtype: str = meta["dtype"]
        self.step: int = meta["step"]
        self.batch_rows: int = meta["batch_rows"]
        self._np_dtype = np.dtype(self.dtype)
        # Every batch but the last holds batch_rows rows, so finding a row's batch is arithmetic and
        # opening a remote file reads only its footer and last batch, never the whole file.
        self._batches: dict[int, pa.RecordBatch] = {}
        self._views: dict[int, np.ndarray] = {}
        self._infos: dict[int, ipc.Batch | None] = {}
        nb = self._num_batches = len(self._blocks) if self._blocks is not None else self._reader.num_record_batches
        self.num_rows: int = 0 if nb == 0 else (nb - 1) * self.batch_rows + len(self._token_view(nb - 1))

    def _read_layout(self) -> dict | None:
        """The metadata of a local file, its record batches' places noted; None when the footer
        cannot be read this way: pyarrow then reads the file, and says what is wrong if anything is."""
        if self._mmap is None:
            return None
        try:
            raw = ipc.metadata(self._mmap)
            blocks = ipc.blocks(self._mmap)
        except (FormatError, struct.error, IndexError, ValueError):
            return None
        meta = parse_metadata(raw, self.uri)  # an unknown version is refused here
        self._blocks = blocks
        return meta

    def check_schema(self) -> None:
        """Check the file's whole schema (column names and types), not only its metadata: reading
        tokens and piece lists from a local file relies on the metadata and the buffer layout."""
        self._reader  # noqa: B018 (opening pyarrow's reader checks the schema)

    @property
    def _reader(self) -> pa.ipc.RecordBatchFileReader:
        """pyarrow's reader of the file, opened (and the schema checked) on first use."""
        if self._pa is None:
            try:
                reader = pa.ipc.open_file(self._source)
            except (pa.ArrowInvalid, OSError) as exc:
                raise FormatError(f"{self.uri} is not a readable Arrow IPC file ({exc}); re-run prepare") from exc
            parse_schema_metadata(reader.schema, self.uri)
            self._pa = reader
        return self._pa

    def close(self) -> None:
        """Release the file. Arrays read from a local file stay valid: they keep the mapping alive."""
        self._batches.clear()
        self._views.clear()
        self._pa = None
        if isinstance(self._source, pa.NativeFile):
            self._source.close()

    def __enter__(self) -> "StepFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_rows(self, b: int, rows: int) -> None:
        if b < self._num_batches - 1 and rows != self.batch_rows:
            raise FormatError(f"{self.uri}: record batch {b} has {rows} rows, expected "
                              f"{self.batch_rows}; re-run prepare")

    def _batch(self, b: int) -> pa.RecordBatch:
        batch = self._batches.get(b)
        if batch is None:
            batch = self._batches[b] = self._reader.get_batch(b)
            self._check_rows(b, batch.num_rows)
        return batch

    def _token_view(self, b: int) -> np.ndarray:
        """Batch b's tokens as a (rows, seq_len) view of the file's bytes."""
        view = self._views.get(b)
        if view is not None:
            return view
        info = self._batch_layout(b)
        if info is not None:
            self._check_rows(b, info.rows)
            offset, length = info.buffer(2)  # column 0's values (see shards/ipc.py)
            count = info.rows * self.seq_len
            if length < count * self._np_dtype.itemsize:
                raise FormatError(f"{self.uri}: record batch {b} holds {length} token bytes, expected "
                                  f"{count * self._np_dtype.itemsize}; re-run prepare")
            view = np.frombuffer(self._mmap, self._np_dtype, count=count, offset=offset)
            view = self._views[b] = view.reshape(info.rows, self.seq_len)
            return view
        batch = self._batch(b)
        # The fixed-size list's value buffer, viewed in place (batches read from IPC have offset 0).
        values = np.frombuffer(batch.column(0).buffers()[-1], self._np_dtype, count=batch.num_rows * self.seq_len)
        view = self._views[b] = values.reshape(batch.num_rows, self.seq_len)
        return view

    def _batch_layout(self, b: int) -> ipc.Batch | None:
        """Where batch b's buffers lie, when the flatbuffer path reads it (local, uncompressed, the
        format's buffers); None sends the batch to pyarrow."""
        if self._blocks is None:
            return None
        if b in self._infos:
            return self._infos[b]
        try:
            info = ipc.batch(self._mmap, self._blocks[b])
        except (struct.error, IndexError, ValueError) as exc:
            raise FormatError(f"{self.uri}: record batch {b} is damaged ({exc}); re-run prepare") from exc
        info = self._infos[b] = None if info.compressed or info.count != self._BUFFERS else info
        return info

    def _pieces(self, rows: range) -> Iterator[tuple[int, int, int]]:
        """(record batch index, first row in it, row count) covering `rows`, in order."""
        if rows.step != 1 or rows.start < 0 or rows.stop > self.num_rows or rows.start > rows.stop:
            raise FormatError(f"rows {rows.start}..{rows.stop} are outside {self.uri} ({self.num_rows} rows)")
        row = rows.start
        while row < rows.stop:
            b, lo = divmod(row, self.batch_rows)
            n = min(rows.stop - row, self.batch_rows - lo)
            yield b, lo, n
            row += n

    def _tokens(self, b: int, lo: int, n: int) -> np.ndarray:
        return self._token_view(b)[lo : lo + n]

    def read_tokens(self, rows: range | None = None) -> np.ndarray:
        """Token ids of `rows` as an (n, seq_len) array; a zero-copy view when they lie in one batch."""
        rows = range(self.num_rows) if rows is None else rows
        parts = [self._tokens(b, lo, n) for b, lo, n in self._pieces(rows)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.empty((0, self.seq_len), np.dtype(self.dtype))
        return np.concatenate(parts)

    def read_tokens_into(self, rows: range, out: np.ndarray) -> np.ndarray:
        """Copy (and widen) the tokens of `rows` into `out` (n, seq_len), in one pass over the bytes."""
        if out.shape != (len(rows), self.seq_len):
            raise FormatError(f"output buffer has shape {out.shape}, expected {(len(rows), self.seq_len)}")
        i = 0
        for b, lo, n in self._pieces(rows):
            np.copyto(out[i : i + n], self._tokens(b, lo, n), casting="safe")
            i += n
        return out

    def _list(self, b: int, k: int, lo: int, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(offsets rebased to 0, values) of list column `k` for rows lo..lo+n of batch b, as views."""
        dtype = np.dtype(dtype)
        info = self._batch_layout(b)
        if info is not None:
            # Column k's buffers: validity, offsets, values' validity, values (see _BUFFERS).
            (o_at, o_len), (v_at, v_len) = info.buffer(4 * k), info.buffer(4 * k + 2)
            if o_len < (info.rows + 1) * 4:
                raise FormatError(f"{self.uri}: record batch {b} column {k} has too short an offsets buffer; re-run prepare")
            all_offsets = np.frombuffer(self._mmap, np.int32, count=info.rows + 1, offset=o_at)
            if not 0 <= int(all_offsets[-1]) <= v_len // dtype.itemsize:
                raise FormatError(f"{self.uri}: record batch {b} column {k} has too short a values buffer; re-run prepare")
            values = np.frombuffer(self._mmap, dtype, count=int(all_offsets[-1]), offset=v_at)
        else:
            batch = self._batch(b)
            bufs = batch.column(k).buffers()  # [validity, offsets, child validity, child values]
            all_offsets = np.frombuffer(bufs[1], np.int32, count=batch.num_rows + 1)
            values = np.frombuffer(bufs[3], dtype)
        offsets = all_offsets[lo : lo + n + 1]
        values = values[offsets[0] : offsets[-1]] if offsets[-1] > offsets[0] else np.zeros(0, dtype)
        return offsets.astype(np.int64) - offsets[0], values

    def read_doc_lens(self, rows: range) -> tuple[np.ndarray, np.ndarray]:
        """(piece_offsets, doc_lens) of `rows` without touching the other columns: what intra-document
        attention and loss masks need besides the tokens."""
        parts = [self._list(b, 1, lo, n, np.int32) for b, lo, n in self._pieces(rows)]
        return _join_lists(parts, np.int32)

    def read_doc_ids(self, rows: range | None = None) -> np.ndarray:
        """The `doc_ids` column of `rows` (uint64 per piece) without touching the tokens."""
        rows = range(self.num_rows) if rows is None else rows
        parts = [self._list(b, 2, lo, n, np.uint64) for b, lo, n in self._pieces(rows)]
        return _join_lists(parts, np.uint64)[1]

    def read_source(self, rows: range) -> np.ndarray:
        """The `source` column of `rows` (uint16 per piece, parallel to read_doc_lens' doc_lens)."""
        parts = [self._list(b, 3, lo, n, np.uint16) for b, lo, n in self._pieces(rows)]
        return _join_lists(parts, np.uint16)[1]

    def read(self, rows: range | None = None) -> RowBlock:
        """All columns of `rows` as a RowBlock."""
        rows = range(self.num_rows) if rows is None else rows
        pieces = list(self._pieces(rows))
        lens = [self._list(b, 1, lo, n, np.int32) for b, lo, n in pieces]
        offsets, doc_lens = _join_lists(lens, np.int32)
        _, doc_ids = _join_lists([self._list(b, 2, lo, n, np.uint64) for b, lo, n in pieces], np.uint64)
        _, source = _join_lists([self._list(b, 3, lo, n, np.uint16) for b, lo, n in pieces], np.uint16)
        return RowBlock(self.read_tokens(rows), offsets, doc_lens, doc_ids, source)


def _join_lists(parts: list[tuple[np.ndarray, np.ndarray]], dtype) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(1, np.int64), np.zeros(0, dtype)
    if len(parts) == 1:
        return parts[0]
    starts = np.cumsum([0] + [len(v) for _, v in parts[:-1]])
    offsets = np.concatenate([[0]] + [o[1:] + s for (o, _), s in zip(parts, starts)]).astype(np.int64)
    return offsets, np.concatenate([v for _, v in parts])


def open_step(uri: str) -> StepFile:
    """Open a step file by local path or URI."""
    return StepFile(uri)
