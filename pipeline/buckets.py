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

import numpy as np
import pyarrow as pa

from shards import RowBlock, fs

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
    table = pa.table([
        pa.array(np.array(keys, np.uint64)),
        pa.array(np.fromiter((d.doc_id for d in docs), np.uint64, len(docs))),
        pa.array(np.fromiter((d.source for d in docs), np.uint16, len(docs))),
        pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)),
    ], schema=SPILL_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SPILL_SCHEMA) as w:
        w.write_table(table)
    fs.write_bytes(path, sink.getvalue().to_pybytes())


def read_spills(paths: list[str], dtype) -> list[tuple[int, Doc]]:
    """Every (key, doc) of the given spill files, ordered by (key, doc_id): the bucket's order."""
    out: list[tuple[int, Doc]] = []
    for p in paths:
        table = pa.ipc.open_file(pa.py_buffer(fs.read_bytes(p))).read_all().combine_chunks()
        keys = table.column("key").to_numpy()
        ids = table.column("doc_id").to_numpy()
        srcs = table.column("source").to_numpy()
        col = table.column("tokens").chunk(0) if table.num_rows else None
        if col is None:
            continue
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy().astype(dtype, copy=False)
        for i in range(table.num_rows):
            out.append((int(keys[i]), Doc(values[offsets[i]:offsets[i + 1]], int(ids[i]), int(srcs[i]))))
    out.sort(key=lambda kd: (kd[0], kd[1].doc_id))
    return out


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
