"""Intermediate files of the job, under OUT/_work/ (deleted once the manifest is written).

    _work/spill/b00003-<uuid>.arrow    tokenized documents of bucket 3 from one tokenize bundle
    _work/buckets/bucket-00003.arrow   bucket 3 packed into rows (the step file schema)
    _work/buckets/tail.arrow           rows packed from every bucket's `concat` tail
    _work/buckets/final.arrow          the last, padded row (`concat`), always in the remainder

A spill file's name need not be deterministic: only the files a committed bundle reports (through
the shuffle) are read, so a retried bundle's orphans are ignored. Everything the output is made
of is ordered by content hashes, so the output never depends on which bundle wrote what.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from steppack.shards import RowBlock, fs
from steppack.shards.format import arrow_array, numpy_view

from .packing import Doc, Row

WORK_DIR = "_work"

SPILL_SCHEMA = pa.schema([
    pa.field("key", pa.uint64()), pa.field("doc_id", pa.uint64()), pa.field("source", pa.uint16()),
    pa.field("tokens", pa.large_list(pa.uint32())),
])


def spill_path(out: str, bucket: int) -> str:
    return fs.join(out, WORK_DIR, "spill", f"b{bucket:05d}-{uuid.uuid4().hex}.arrow")


def bucket_file(out: str, bucket: int | str) -> str:
    name = bucket if isinstance(bucket, str) else f"bucket-{bucket:05d}"
    return fs.join(out, WORK_DIR, "buckets", f"{name}.arrow")


def write_spill(path: str, keys: list[int], docs: list[Doc]) -> None:
    lens = np.fromiter((len(d.tokens) for d in docs), np.int64, len(docs))
    offsets = np.concatenate([[0], np.cumsum(lens)])
    values = np.concatenate([d.tokens for d in docs]).astype(np.uint32, copy=False) if docs else np.zeros(0, np.uint32)
    table = pa.Table.from_arrays([
        arrow_array(np.array(keys, np.uint64)),
        arrow_array(np.fromiter((d.doc_id for d in docs), np.uint64, len(docs))),
        arrow_array(np.fromiter((d.source for d in docs), np.uint16, len(docs))),
        pa.LargeListArray.from_arrays(arrow_array(offsets), arrow_array(values)),
    ], schema=SPILL_SCHEMA)
    with fs.atomic_output(path) as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as w:
        w.write_table(table)


class BucketDocs(NamedTuple):
    """The documents of one bucket in its order, as columns and one flat token array."""

    keys: np.ndarray
    doc_ids: np.ndarray
    sources: np.ndarray
    lens: np.ndarray
    tokens: np.ndarray
    """Every document's tokens, end to end in bucket order."""

    def without(self, doc_ids) -> "BucketDocs":
        """These documents less the given ones (dedup's duplicates), in the same order."""
        if not len(doc_ids):
            return self
        keep = ~np.isin(self.doc_ids, np.fromiter(doc_ids, np.uint64))
        ends = np.cumsum(self.lens)
        tokens = np.concatenate([self.tokens[e - n:e] for e, n, k in zip(ends.tolist(), self.lens.tolist(),
                                                                          keep.tolist()) if k] or [self.tokens[:0]])
        return BucketDocs(self.keys[keep], self.doc_ids[keep], self.sources[keep], self.lens[keep], tokens)

    def docs(self) -> list[Doc]:
        ends = np.cumsum(self.lens)
        return [Doc(self.tokens[e - n:e], int(i), int(s))
                for e, n, i, s in zip(ends.tolist(), self.lens.tolist(), self.doc_ids, self.sources)]


def _open_spill(path: str) -> pa.Table:
    # Mapped, not read: the tokens are copied once, into bucket order.
    source = pa.memory_map(fs.local_path(path)) if fs.is_local(path) else pa.py_buffer(fs.read_bytes(path))
    return pa.ipc.open_file(source).read_all()


def read_bucket(paths: list[str], dtype) -> BucketDocs:
    """Every document of the given spill files, ordered by (key, doc_id): the bucket's order."""
    keys, ids, srcs, lens, starts, files, values = [], [], [], [], [], [], []
    for p in paths:
        table = _open_spill(p)
        for batch in table.to_batches():
            col = batch.column(3)
            offsets = numpy_view(col.offsets)
            keys.append(numpy_view(batch.column(0)))
            ids.append(numpy_view(batch.column(1)))
            srcs.append(numpy_view(batch.column(2)))
            lens.append(np.diff(offsets))
            starts.append(offsets[:-1])
            files.append(np.full(len(offsets) - 1, len(values)))
            values.append(numpy_view(col.values))
    if not values:
        z = np.zeros(0, np.int64)
        return BucketDocs(z.astype(np.uint64), z.astype(np.uint64), z.astype(np.uint16), z, np.zeros(0, dtype))
    keys, ids, srcs, lens, starts, files = (np.concatenate(c) for c in (keys, ids, srcs, lens, starts, files))
    order = np.lexsort((ids, keys))
    lens = lens[order]
    tokens = np.concatenate([values[f][a:a + n] for f, a, n in
                             zip(files[order].tolist(), starts[order].tolist(), lens.tolist())] or [np.zeros(0, dtype)])
    return BucketDocs(keys[order], ids[order], srcs[order], lens, tokens.astype(dtype, copy=False))


def rows_to_block(rows: list[Row], seq_len: int, dtype) -> RowBlock:
    n = len(rows)
    tokens = np.stack([r.tokens for r in rows]).astype(dtype, copy=False) if n else np.empty((0, seq_len), dtype)
    counts = np.fromiter((len(r.doc_lens) for r in rows), np.int64, n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    p = int(offsets[-1])
    return RowBlock(
        tokens, offsets,
        np.fromiter((x for r in rows for x in r.doc_lens), np.int32, p),
        np.fromiter((x for r in rows for x in r.doc_ids), np.uint64, p),
        np.fromiter((x for r in rows for x in r.sources), np.uint16, p),
    )


def pieces_to_bytes(pieces: list[Doc]) -> list[tuple[bytes, int, int]]:
    """Compact form of tail pieces for the shuffle: raw token bytes, not lists of ints."""
    return [(np.ascontiguousarray(p.tokens, np.uint32).tobytes(), p.doc_id, p.source) for p in pieces]


def pieces_from_bytes(items, dtype) -> list[Doc]:
    return [Doc(np.frombuffer(b, np.uint32).astype(dtype, copy=False), i, s) for b, i, s in items]
