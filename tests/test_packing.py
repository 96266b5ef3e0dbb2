"""The packing module: hand-written cases where a token's value names its document, and properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from steppack.pipeline.packing import BestFitPacker, ConcatPacker, Doc, Packing, concat_layout, cut_documents, pack

PAD = 0


def docs_of(lengths):
    """Document k (1-based) is k repeated: [1], [2, 2], ... so a wrong row is obvious."""
    return [Doc(np.full(n, k, np.uint32), doc_id=k, source=k % 3) for k, n in zip(range(1, 100), lengths)]


def as_lists(rows):
    return [(r.tokens.tolist(), list(r.doc_lens), list(r.doc_ids)) for r in rows]


def test_concat_cuts_the_stream_every_seq_len_without_padding():
    rows = pack("concat", docs_of([5, 2, 3]), seq_len=4, pad_id=PAD)
    assert as_lists(rows) == [
        ([1, 1, 1, 1], [4], [1]),
        ([1, 2, 2, 3], [1, 2, 1], [1, 2, 3]),
        ([3, 3, 0, 0], [2], [3]),  # only the flushed last row is padded
    ]


def test_concat_add_returns_rows_as_soon_as_they_fill():
    p = ConcatPacker(4, PAD)
    d = docs_of([3, 1, 9])
    assert p.add(d[0]) == []
    assert as_lists(p.add(d[1])) == [([1, 1, 1, 2], [3, 1], [1, 2])]
    assert len(p.add(d[2])) == 2
    assert [x.tokens.tolist() for x in p.pending()] == [[3]]
    assert p.flush() == []


def test_cut_documents_counts_documents_not_cuts():
    # seq_len 4: A (9 tokens) spans three rows (two cuts, one document); B fits; C is cut once,
    # its last piece still pending in the packer.
    p = ConcatPacker(4, PAD)
    d = docs_of([9, 2, 3])
    rows = [r for doc in d for r in p.add(doc)]
    tail = p.pending()
    assert [x.doc_id for x in tail] == [3]
    assert cut_documents(rows, tail) == {1, 3}
    assert cut_documents(rows) == {1}
    assert cut_documents([]) == set()


def test_bestfit_matches_the_docstring_trace():
    rows = pack(Packing.BESTFIT, docs_of([5, 2, 3]), seq_len=4, pad_id=PAD)
    assert as_lists(rows) == [
        ([1, 1, 1, 1], [4], [1]),
        ([3, 3, 3, 1], [3, 1], [3, 1]),
        ([2, 2, 0, 0], [2], [2]),
    ]


def test_bestfit_puts_a_piece_into_the_fullest_row_it_fits():
    # chunks 6, 5, 3, 2 into rows of 8: 6 -> r0 (room 2), 5 -> r1 (room 3), 3 -> r1 (best fit, room 0),
    # 2 -> r0 (room 0).
    rows = pack("bestfit", docs_of([3, 6, 2, 5]), seq_len=8, pad_id=PAD)
    assert as_lists(rows) == [
        ([2, 2, 2, 2, 2, 2, 3, 3], [6, 2], [2, 3]),
        ([4, 4, 4, 4, 4, 1, 1, 1], [5, 3], [4, 1]),
    ]


def test_bestfit_never_cuts_a_document_shorter_than_seq_len():
    rows = pack("bestfit", docs_of([7, 7, 7, 1, 1, 1]), seq_len=8, pad_id=PAD)
    pieces = [i for r in rows for i in r.doc_ids]
    assert sorted(pieces) == [1, 2, 3, 4, 5, 6]


def test_empty_input_gives_no_rows():
    assert pack("concat", [], 4, PAD) == [] and pack("bestfit", [], 4, PAD) == []
    assert BestFitPacker(4, PAD).flush() == []


doc_lists = st.lists(st.integers(min_value=1, max_value=40), min_size=0, max_size=30)


def check_rows(rows, docs, seq_len):
    by_doc = {d.doc_id: [] for d in docs}
    for r in rows:
        assert len(r.tokens) == seq_len
        assert sum(r.doc_lens) <= seq_len and all(n > 0 for n in r.doc_lens)
        assert (r.tokens[sum(r.doc_lens):] == PAD).all()
        at = 0
        for n, i, s in zip(r.doc_lens, r.doc_ids, r.sources):
            piece = r.tokens[at : at + n]
            assert (piece == i).all(), "a piece holds another document's tokens"
            assert s == i % 3
            by_doc[i].append(piece)
            at += n
    for d in docs:  # every document's pieces, in order, are the document
        assert np.concatenate(by_doc[d.doc_id]).tolist() == d.tokens.tolist()


@settings(max_examples=200, deadline=None)
@given(doc_lists, st.integers(min_value=1, max_value=16))
def test_concat_rows_hold_every_document_in_order(lengths, seq_len):
    docs = docs_of(lengths)
    rows = pack("concat", docs, seq_len, PAD)
    check_rows(rows, docs, seq_len)
    stream = np.concatenate([r.tokens[: r.used] for r in rows] or [np.zeros(0, np.uint32)])
    assert stream.tolist() == [t for d in docs for t in d.tokens.tolist()]
    assert all(r.used == seq_len for r in rows[:-1])  # no padding but in the last row
    assert len(rows) == -(-sum(lengths) // seq_len)


@settings(max_examples=200, deadline=None)
@given(doc_lists, st.integers(min_value=1, max_value=16))
def test_bestfit_rows_hold_every_document_and_cut_only_long_ones(lengths, seq_len):
    docs = docs_of(lengths)
    rows = pack("bestfit", docs, seq_len, PAD)
    check_rows(rows, docs, seq_len)
    pieces = {}
    for r in rows:
        for i in r.doc_ids:
            pieces[i] = pieces.get(i, 0) + 1
    for d in docs:
        assert pieces[d.doc_id] == -(-len(d.tokens) // seq_len)
    # First-fit-decreasing bound: never more than 11/9 OPT + 1 rows; OPT >= total / seq_len.
    assert len(rows) <= 11 / 9 * -(-sum(lengths) // seq_len) + 1 + sum(n // seq_len for n in lengths)


@settings(max_examples=50, deadline=None)
@given(doc_lists, st.integers(min_value=1, max_value=16), st.sampled_from(["concat", "bestfit"]))
def test_packing_is_deterministic(lengths, seq_len, policy):
    a = as_lists(pack(policy, docs_of(lengths), seq_len, PAD))
    b = as_lists(pack(policy, docs_of(lengths), seq_len, PAD))
    assert a == b


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=30), st.integers(min_value=1, max_value=16))
def test_concat_layout_is_the_concat_packer_vectorized(lengths, seq_len):
    """The prepare job packs a whole bucket with concat_layout; it must give ConcatPacker's rows
    and pending tail exactly (empty documents included: neither makes a piece of them)."""
    docs = [Doc(np.full(n, k, np.uint32), doc_id=k, source=0) for k, n in enumerate(lengths)]
    p = ConcatPacker(seq_len, PAD)
    rows = [r for d in docs for r in p.add(d)]
    tail = p.pending()
    want = [(r, i, n) for r, row in enumerate(rows) for i, n in zip(row.doc_ids, row.doc_lens)]
    want += [(len(rows), d.doc_id, len(d.tokens)) for d in tail]
    lay = concat_layout(np.array(lengths, np.int64), seq_len)
    assert lay.rows == len(rows)
    assert list(zip(lay.piece_row.tolist(), lay.piece_doc.tolist(), lay.piece_len.tolist())) == want
    offsets = lay.row_offsets()
    assert offsets.tolist() == np.cumsum([0] + [len(r.doc_lens) for r in rows]).tolist()
