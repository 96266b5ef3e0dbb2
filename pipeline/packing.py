"""Packing documents into rows of exactly `seq_len` tokens: a pure module (numpy only; the
policies' names, `Packing`, live with the job's settings in config.py, which the command line
imports without numpy).

A document is its token ids (BOS/EOS already added), a 64-bit id and a source index. A packer
takes documents one at a time (`add(doc) -> rows`) and returns the rows that became complete;
`flush() -> rows` returns what is left. Each row records the pieces it holds, in order: their
lengths (`doc_lens`), their documents (`doc_ids`) and sources. Padding (`pad_id`) only ever sits
at the end of a row and is never counted in `doc_lens`.

Two policies (`Packing`):

`concat` (default; what DeepSeek did): documents are concatenated in the order given and the
stream is cut every `seq_len` tokens. No padding, except the very last row (`flush`); a document
that straddles a cut becomes two pieces. seq_len = 4, documents A (5 tokens), B (2), C (3)::

    stream   A A A A A B B C C C
    rows     [A A A A] [A B B C] [C C . .]        '.' = pad_id, only in the row flush() returns
    doc_lens   [4]      [1,2,1]    [2]

`bestfit` (Ding et al. 2024, "Fewer truncations improve language modeling"): a document longer
than `seq_len` is split at multiples of `seq_len` (each full chunk is a row of its own, returned at
once); the last chunks of all documents are then packed best-fit-decreasing at `flush()`: longest
first, each into the open row with the least room that still fits it, else into a new row. Far
fewer documents are cut; rows are padded where nothing fits. Same documents, seq_len = 4::

    chunks   A A A A | A     B B     C C C
    add(A) -> [A A A A]                     the full chunk of A is a row at once
    flush  -> sort by length: C(3) B(2) A'(1)
              C -> new row [C C C _]; B -> no room, new row [B B _ _]; A' -> best fit: row 1
    rows     [A A A A] [C C C A] [B B . .]
    doc_lens   [4]      [3,1]     [2]

Both are deterministic: the same documents in the same order give the same rows.
"""

from __future__ import annotations

import bisect
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from .config import Packing


class Doc(NamedTuple):
    tokens: np.ndarray
    """Token ids, BOS/EOS included (1-d integer array)."""
    doc_id: int
    source: int


class Row(NamedTuple):
    tokens: np.ndarray
    """Exactly seq_len ids; positions past sum(doc_lens) hold pad_id."""
    doc_lens: tuple
    doc_ids: tuple
    sources: tuple

    @property
    def used(self) -> int:
        return int(sum(self.doc_lens))


def _row(pieces: Sequence[Doc], seq_len: int, pad_id: int, dtype) -> Row:
    tokens = np.full(seq_len, pad_id, dtype=dtype)
    at = 0
    for p in pieces:
        tokens[at : at + len(p.tokens)] = p.tokens
        at += len(p.tokens)
    if at > seq_len:
        raise ValueError(f"pieces hold {at} tokens, more than seq_len {seq_len}")
    return Row(tokens, tuple(len(p.tokens) for p in pieces), tuple(p.doc_id for p in pieces),
               tuple(p.source for p in pieces))


class ConcatPacker:
    """`concat`: concatenate and cut every seq_len tokens; only `flush()` pads."""

    def __init__(self, seq_len: int, pad_id: int, dtype=np.uint32):
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.seq_len, self.pad_id, self.dtype = seq_len, pad_id, dtype
        self._pending: list[Doc] = []  # pieces of the row being filled, in order
        self._filled = 0

    def add(self, doc: Doc) -> list[Row]:
        rows = []
        tokens = doc.tokens
        while len(tokens):
            take = min(len(tokens), self.seq_len - self._filled)
            self._pending.append(Doc(tokens[:take], doc.doc_id, doc.source))
            self._filled += take
            tokens = tokens[take:]
            if self._filled == self.seq_len:
                rows.append(_row(self._pending, self.seq_len, self.pad_id, self.dtype))
                self._pending, self._filled = [], 0
        return rows

    def pending(self) -> list[Doc]:
        """The pieces of the unfinished last row (fewer than seq_len tokens), and forget them.

        The prepare job packs each bucket separately and carries these tails on to one final
        packer, so only the job's very last row is padded.
        """
        out, self._pending, self._filled = self._pending, [], 0
        return out

    def flush(self) -> list[Row]:
        pieces = self.pending()
        return [_row(pieces, self.seq_len, self.pad_id, self.dtype)] if pieces else []


class BestFitPacker:
    """`bestfit`: split documents at seq_len, best-fit-decreasing bin packing of the last chunks."""

    def __init__(self, seq_len: int, pad_id: int, dtype=np.uint32):
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.seq_len, self.pad_id, self.dtype = seq_len, pad_id, dtype
        self._chunks: list[Doc] = []

    def add(self, doc: Doc) -> list[Row]:
        rows = []
        n_full = len(doc.tokens) // self.seq_len
        for k in range(n_full):
            piece = Doc(doc.tokens[k * self.seq_len : (k + 1) * self.seq_len], doc.doc_id, doc.source)
            rows.append(_row([piece], self.seq_len, self.pad_id, self.dtype))
        rest = doc.tokens[n_full * self.seq_len :]
        if len(rest):
            self._chunks.append(Doc(rest, doc.doc_id, doc.source))
        return rows

    def flush(self) -> list[Row]:
        # Longest first; ties keep the order the documents came in (sorted() is stable).
        order = sorted(range(len(self._chunks)), key=lambda i: -len(self._chunks[i].tokens))
        bins: list[list[Doc]] = []
        # Open bins as (room left, bin index), sorted: the best fit is the first with room >= n.
        rooms: list[tuple[int, int]] = []
        for i in order:
            piece = self._chunks[i]
            n = len(piece.tokens)
            j = bisect.bisect_left(rooms, (n, -1))
            if j < len(rooms):
                room, b = rooms.pop(j)
                bins[b].append(piece)
                room -= n
            else:
                b = len(bins)
                bins.append([piece])
                room = self.seq_len - n
            if room > 0:
                bisect.insort(rooms, (room, b))
        self._chunks = []
        return [_row(pieces, self.seq_len, self.pad_id, self.dtype) for pieces in bins]


class ConcatLayout(NamedTuple):
    """Where `concat` puts the documents of a whole bucket, computed at once (`concat_layout`)."""

    rows: int
    """Full rows: the first rows * seq_len tokens of the documents laid end to end."""
    piece_doc: np.ndarray
    """Index (into the documents) of each piece, in stream order."""
    piece_len: np.ndarray
    """Tokens in each piece."""
    piece_row: np.ndarray
    """Row of each piece; `rows` for the pieces of the unfinished last row (the tail)."""

    def row_offsets(self) -> np.ndarray:
        """piece_offsets of the full rows (rows + 1 entries)."""
        counts = np.bincount(self.piece_row[self.piece_row < self.rows], minlength=self.rows)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def concat_layout(lens: np.ndarray, seq_len: int) -> ConcatLayout:
    """`concat` for documents of `lens` tokens in this order, vectorized: the same pieces and rows
    as ConcatPacker.add over them (its `pending()` pieces are the tail, row == rows), for a whole
    bucket in a few numpy passes instead of Python work per document and row."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    lens = np.asarray(lens, np.int64)
    ends = np.cumsum(lens)
    total = int(ends[-1]) if len(ends) else 0
    # Piece boundaries: where a (non-empty) document starts, and every multiple of seq_len.
    bounds = np.union1d(ends - lens, np.arange(0, total, seq_len))
    bounds = bounds[bounds < total]
    piece_len = np.diff(np.append(bounds, total))
    return ConcatLayout(
        rows=total // seq_len,
        piece_doc=np.searchsorted(ends, bounds, side="right"),
        piece_len=piece_len,
        piece_row=bounds // seq_len,
    )


def cut_documents(rows: Iterable[Row], pieces: Iterable[Doc] = ()) -> set[int]:
    """Ids of the documents that appear as more than one piece among `rows` and `pieces`: the
    documents cut across rows (a document id names one document, so this counts documents, not cuts)."""
    seen: set[int] = set()
    cut: set[int] = set()
    ids = [i for r in rows for i in r.doc_ids] + [p.doc_id for p in pieces]
    for i in ids:
        (cut if i in seen else seen).add(i)
    return cut


def packer(policy: Packing | str, seq_len: int, pad_id: int, dtype=np.uint32):
    """A packer for `policy`."""
    policy = Packing(policy)
    if policy is Packing.CONCAT:
        return ConcatPacker(seq_len, pad_id, dtype)
    return BestFitPacker(seq_len, pad_id, dtype)


def pack(policy: Packing | str, docs: Iterable[Doc], seq_len: int, pad_id: int, dtype=np.uint32) -> list[Row]:
    """All rows of `docs` (flushed at the end)."""
    p = packer(policy, seq_len, pad_id, dtype)
    rows = []
    for d in docs:
        rows.extend(p.add(d))
    rows.extend(p.flush())
    return rows
