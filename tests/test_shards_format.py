"""The shard format: write -> read round trips, versions, URIs, rank slicing."""

from __future__ import annotations

import hashlib
import json
import dataclasses
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from steppack.shards import (
    ConfigError, FormatError, Manifest, RowBlock, dtype_for_vocab, encode_step, open_step, rank_micro_batches,
    rank_rows, read_manifest, step_file_name, step_schema, write_step,
)
from steppack.shards import ipc
from steppack.shards.format import META_VERSION, arrow_array, numpy_view
from tests.shardgen import make_output


@st.composite
def row_blocks(draw):
    dtype = draw(st.sampled_from(["uint16", "uint32"]))
    seq_len = draw(st.integers(1, 48))
    n = draw(st.integers(0, 20))
    hi = 2**16 - 1 if dtype == "uint16" else 2**32 - 1
    rows = []
    for _ in range(n):
        # A row's pieces: a random partition of a prefix of the row (the rest is padding).
        used = draw(st.integers(0, seq_len))
        cuts = sorted(draw(st.sets(st.integers(1, max(1, used - 1)), max_size=5))) if used > 1 else []
        bounds = [0] + [c for c in cuts if c < used] + [used]
        lens = [b - a for a, b in zip(bounds, bounds[1:]) if b > a]
        tokens = draw(st.lists(st.integers(0, hi), min_size=seq_len, max_size=seq_len))
        ids = draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(lens), max_size=len(lens)))
        src = draw(st.lists(st.integers(0, 2**16 - 1), min_size=len(lens), max_size=len(lens)))
        rows.append((tokens, lens, ids, src))
    return RowBlock.from_rows(rows, seq_len, dtype), seq_len, dtype


def assert_blocks_equal(a: RowBlock, b: RowBlock) -> None:
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.tokens.dtype == b.tokens.dtype
    np.testing.assert_array_equal(a.piece_offsets, b.piece_offsets)
    np.testing.assert_array_equal(a.doc_lens, b.doc_lens)
    np.testing.assert_array_equal(a.doc_ids, b.doc_ids)
    np.testing.assert_array_equal(a.source, b.source)


def _slice(b: RowBlock, lo: int, hi: int) -> RowBlock:
    p0, p1 = b.piece_offsets[lo], b.piece_offsets[hi]
    return RowBlock(b.tokens[lo:hi], b.piece_offsets[lo:hi + 1] - p0, b.doc_lens[p0:p1], b.doc_ids[p0:p1], b.source[p0:p1])


@settings(max_examples=60, deadline=None)
@given(row_blocks(), st.integers(1, 7), st.sampled_from([None, "zstd"]), st.data())
def test_write_then_read_gives_back_every_column(tmp_path_factory, block_seq_dtype, batch_rows, compression, data):
    block, seq_len, dtype = block_seq_dtype
    out = str(tmp_path_factory.mktemp("o"))
    info = write_step(out, step_file_name(3), block, seq_len=seq_len, dtype=dtype, step=3,
                      compression=compression, batch_rows=batch_rows)
    with open_step(os.path.join(out, info.file)) as f:
        assert (f.num_rows, f.seq_len, f.dtype, f.step) == (block.num_rows, seq_len, dtype, 3)
        assert_blocks_equal(f.read(), block)
        lo = data.draw(st.integers(0, block.num_rows))
        hi = data.draw(st.integers(lo, block.num_rows))
        assert_blocks_equal(f.read(range(lo, hi)), _slice(block, lo, hi))
        offsets, lens = f.read_doc_lens(range(lo, hi))
        np.testing.assert_array_equal(offsets, _slice(block, lo, hi).piece_offsets)
        np.testing.assert_array_equal(lens, _slice(block, lo, hi).doc_lens)
        np.testing.assert_array_equal(f.read_tokens(range(lo, hi)), block.tokens[lo:hi])
        wide = f.read_tokens_into(range(lo, hi), np.empty((hi - lo, seq_len), np.int64))
        np.testing.assert_array_equal(wide, block.tokens[lo:hi].astype(np.int64))
    assert info.rows == block.num_rows
    assert info.tokens + info.padding == block.num_rows * seq_len
    assert info.pieces == len(block.doc_lens)
    # Streamed to the file and hashed on the way: the bytes encode_step gives, and their hash.
    data = open(os.path.join(out, info.file), "rb").read()
    assert data == encode_step(block, seq_len=seq_len, dtype=dtype, step=3, compression=compression,
                               batch_rows=batch_rows)
    assert (info.bytes, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())


@settings(max_examples=30, deadline=None)
@given(row_blocks(), st.integers(1, 7), st.sampled_from([None, "zstd"]))
def test_ipc_layout_finds_the_buffers_pyarrow_finds(tmp_path_factory, block_seq_dtype, batch_rows, compression):
    block, seq_len, dtype = block_seq_dtype
    out = str(tmp_path_factory.mktemp("o"))
    info = write_step(out, step_file_name(0), block, seq_len=seq_len, dtype=dtype, step=0,
                      compression=compression, batch_rows=batch_rows)
    data = open(os.path.join(out, info.file), "rb").read()
    buf = pa.py_buffer(data)
    reader = pa.ipc.open_file(buf)
    blocks = ipc.blocks(data)
    assert len(blocks) == reader.num_record_batches
    for b, block_ in enumerate(blocks):
        got = ipc.batch(data, block_)
        rb = reader.get_batch(b)
        assert got.rows == rb.num_rows and got.compressed == (compression is not None)
        if compression:
            continue
        # Every buffer pyarrow hands out, depth-first per column, lies where the table says.
        flat = [x for col in rb.columns for x in col.buffers()]
        assert got.count == len(flat)
        for (o, n), x in zip((got.buffer(i) for i in range(got.count)), flat):
            if x is not None and x.size:
                assert (o, n) == (x.address - buf.address, x.size)


def test_reader_turns_an_unreadable_path_into_a_format_error(tmp_path):
    (tmp_path / "a-directory.arrow").mkdir()
    with pytest.raises(FormatError, match="a-directory.arrow"):
        open_step(str(tmp_path / "a-directory.arrow"))
    garbage = tmp_path / "garbage.arrow"
    garbage.write_bytes(b"ARROW1\0\0" + b"\xff" * 200 + b"ARROW1")
    with pytest.raises(FormatError, match="garbage.arrow"):
        open_step(str(garbage))


def test_ipc_layout_refuses_what_is_not_an_arrow_file():
    with pytest.raises(FormatError, match="ARROW1"):
        ipc.blocks(b"not an arrow file at all")


def test_same_rows_give_byte_identical_files(tmp_path):
    m1 = make_output(str(tmp_path / "a"), num_steps=2, rows_per_step=4, seq_len=32, seed=5)
    m2 = make_output(str(tmp_path / "b"), num_steps=2, rows_per_step=4, seq_len=32, seed=5)
    assert [s.sha256 for s in m1.steps] == [s.sha256 for s in m2.steps]


def test_local_reader_returns_a_view_of_the_mapped_file_not_a_copy(tmp_path):
    make_output(str(tmp_path), num_steps=1, rows_per_step=8, seq_len=64)
    with open_step(str(tmp_path / step_file_name(0))) as f:
        tokens = f.read_tokens(range(0, 8))  # within one record batch
        assert not tokens.flags.owndata and not tokens.flags.writeable
        # Reads go through the flatbuffer layout (shards/ipc.py); pyarrow opens the file only
        # to check the whole schema.
        rows = f.read(range(0, 8))
        assert f._blocks is not None and f._pa is None
        np.testing.assert_array_equal(rows.tokens, tokens)
        f.check_schema()
        assert f._pa is not None


def test_reader_opens_uris_through_filesystems(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    make_output(str(tmp_path), num_steps=1, rows_per_step=16, seq_len=32)
    data = (tmp_path / step_file_name(0)).read_bytes()
    mem = fsspec.filesystem("memory")
    with mem.open("/steppack-test/step.arrow", "wb") as f:
        f.write(data)
    with open_step(str(tmp_path / step_file_name(0))) as local, open_step("memory://steppack-test/step.arrow") as remote:
        assert_blocks_equal(remote.read(range(3, 13)), local.read(range(3, 13)))


def test_reader_refuses_a_step_file_from_an_unknown_version(tmp_path):
    schema = step_schema(8, "uint32", 0)
    meta = dict(schema.metadata)
    meta[META_VERSION] = b"99"
    table = pa.Table.from_pylist([], schema=schema.with_metadata(meta))
    path = str(tmp_path / "step.arrow")
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    with pytest.raises(FormatError, match="format version 99"):
        open_step(path)


def test_reader_refuses_a_manifest_from_an_unknown_version(tmp_path):
    make_output(str(tmp_path), num_steps=1, rows_per_step=2, seq_len=8)
    d = json.loads((tmp_path / "manifest.json").read_text())
    d["format_version"] = 7
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(FormatError, match="format version 7"):
        read_manifest(str(tmp_path))


def test_manifest_round_trips_through_json(tmp_path):
    m = make_output(str(tmp_path), num_steps=2, rows_per_step=4, seq_len=16, remainder_rows=1)
    assert Manifest.from_json(m.to_json()) == m == read_manifest(str(tmp_path))


def test_missing_manifest_says_the_output_is_incomplete(tmp_path):
    with pytest.raises(FormatError, match="incomplete"):
        read_manifest(str(tmp_path))


def test_writer_refuses_rows_of_the_wrong_length():
    with pytest.raises(FormatError, match="expected seq_len 8"):
        RowBlock.from_rows([([1, 2, 3], [3], [0], [0])], 8, "uint32")


@pytest.mark.parametrize("vocab,dtype", [(1000, "uint16"), (65536, "uint16"), (65537, "uint32"), (102400, "uint32")])
def test_dtype_is_the_narrowest_that_holds_every_id(vocab, dtype):
    assert dtype_for_vocab(vocab) == dtype


def test_encoding_is_independent_of_how_the_rows_were_built():
    rows = [([1] * 4, [4], [9], [0]), ([2] * 3 + [0], [3], [10], [1])]
    a = RowBlock.from_rows(rows, 4, "uint16")
    b = RowBlock.concat([RowBlock.from_rows(rows[:1], 4, "uint16"), RowBlock.from_rows(rows[1:], 4, "uint16")])
    assert encode_step(a, seq_len=4, dtype="uint16", step=0) == encode_step(b, seq_len=4, dtype="uint16", step=0)


# ---- rank slicing ---------------------------------------------------------------------------

@given(st.integers(1, 4096), st.data())
def test_rank_slices_are_disjoint_and_cover_every_row(rows_per_step, data):
    divisors = [w for w in range(1, rows_per_step + 1) if rows_per_step % w == 0]
    world = data.draw(st.sampled_from(divisors))
    slices = [rank_rows(rows_per_step, r, world) for r in range(world)]
    seen = [row for s in slices for row in s]
    assert sorted(seen) == list(range(rows_per_step)) and len(seen) == len(set(seen))
    assert len({len(s) for s in slices}) == 1


@given(st.integers(2, 512), st.integers(2, 64))
def test_world_sizes_that_do_not_divide_are_refused(rows_per_step, world):
    if rows_per_step % world == 0:
        world += 1 if (rows_per_step % (world + 1)) else 0
    if rows_per_step % world == 0:
        return
    with pytest.raises(ConfigError, match=f"{world} ranks"):
        rank_rows(rows_per_step, 0, world)


def test_micro_batches_split_a_rank_slice_in_order():
    mbs = rank_micro_batches(1024, 3, 8, 4)
    assert [r.start for r in mbs] == list(range(384, 512, 4)) and all(len(r) == 4 for r in mbs)


def test_micro_batch_that_does_not_divide_names_all_three_numbers():
    with pytest.raises(ConfigError, match=r"rows_per_step 1024 is not divisible by world_size 8 x micro_batch 6"):
        rank_micro_batches(1024, 0, 8, 6)


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ConfigError, match="outside world size"):
        rank_rows(8, 2, 2)


def test_arrow_array_and_numpy_view_round_trip_without_copies():
    for dtype in (np.uint16, np.uint32, np.uint64, np.int32, np.int64):
        values = (np.arange(10) * 7).astype(dtype)
        arr = arrow_array(values)
        assert arr.type == pa.from_numpy_dtype(np.dtype(dtype)) and arr.to_pylist() == values.tolist()
        assert np.shares_memory(numpy_view(arr), values)
        assert numpy_view(arr.slice(3, 4)).tolist() == values[3:7].tolist()  # a slice's offset
    assert numpy_view(pa.Array.from_buffers(pa.int64(), 0, [None, None])).tolist() == []  # no data buffer
    assert numpy_view(arrow_array(np.zeros(0, np.uint32))).dtype == np.uint32
    with pytest.raises(TypeError):
        numpy_view(pa.array([1, None]))
    with pytest.raises(TypeError):
        arrow_array(np.zeros((2, 2), np.uint32))


@settings(max_examples=60, deadline=None)
@given(row_blocks(), st.data())
def test_take_gives_the_chosen_rows_in_the_chosen_order(block_seq_dtype, data):
    block = block_seq_dtype[0]
    n = block.num_rows
    picks = data.draw(st.lists(st.integers(0, max(0, n - 1)), max_size=12)) if n else []
    expected = RowBlock.concat([_slice(block, i, i + 1) for i in picks]) if picks else _slice(block, 0, 0)
    assert_blocks_equal(block.take(np.array(picks, np.int64)), expected)


@settings(max_examples=40, deadline=None)
@given(row_blocks(), st.integers(1, 7), st.sampled_from([None, "zstd"]), st.data())
def test_write_blocks_gives_write_step_s_bytes_for_the_rows_in_any_blocks(tmp_path_factory, block_seq_dtype,
                                                                           batch_rows, compression, data):
    from steppack.shards.writer import write_blocks

    block, seq_len, dtype = block_seq_dtype
    cuts = sorted(data.draw(st.lists(st.integers(0, block.num_rows), max_size=4)))
    bounds = [0] + cuts + [block.num_rows]
    parts = [block.slice(a, b) for a, b in zip(bounds, bounds[1:])]
    out = str(tmp_path_factory.mktemp("blocks"))
    kw = dict(seq_len=seq_len, dtype=dtype, step=None, compression=compression, batch_rows=batch_rows)
    info = write_blocks(out, "r.arrow", iter(parts), **kw)
    assert open(os.path.join(out, "r.arrow"), "rb").read() == encode_step(block, **kw)
    assert dataclasses.replace(info, file="s.arrow") == write_step(out, "s.arrow", block, **kw)
    assert (info.rows, info.documents, info.pieces, info.tokens) == (
        block.num_rows, len(np.unique(block.doc_ids)), len(block.doc_lens), int(block.row_used().sum()))


def test_a_local_write_reaches_the_disk_before_its_name_does(tmp_path, monkeypatch):
    from steppack.shards import fs

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    target = tmp_path / "manifest.json"
    fs.write_bytes(str(target), b"{}")
    (kind0, tmp), (kind1, name), (kind2, folder) = events
    assert (kind0, kind1, kind2) == ("fsync", "replace", "fsync")
    assert os.path.basename(tmp).startswith(".tmp-manifest.json.") and name == str(target)
    assert folder == str(tmp_path) and target.read_bytes() == b"{}"
