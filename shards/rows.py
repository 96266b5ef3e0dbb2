"""`RowBlock`: rows of a step in columnar form, as the writer takes them and the reader returns them.

    tokens        (n, seq_len) array of the token dtype; padding sits at the end of a row
    piece_offsets (n + 1,) int64: row i's pieces are [piece_offsets[i], piece_offsets[i+1])
    doc_lens      (P,) int32   length of each piece, in row order
    doc_ids       (P,) uint64  stable hash of each piece's document
    source        (P,) uint16  index of each piece's source in the manifest
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import FormatError


def row_used(piece_offsets: np.ndarray, doc_lens: np.ndarray) -> np.ndarray:
    """Document tokens in each row, from the rows' piece offsets and lengths."""
    csum = np.concatenate([[0], np.cumsum(doc_lens, dtype=np.int64)])
    return csum[piece_offsets[1:]] - csum[piece_offsets[:-1]]


@dataclass(frozen=True)
class RowBlock:
    tokens: np.ndarray
    piece_offsets: np.ndarray
    doc_lens: np.ndarray
    doc_ids: np.ndarray
    source: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def row_doc_lens(self, i: int) -> np.ndarray:
        return self.doc_lens[self.piece_offsets[i] : self.piece_offsets[i + 1]]

    def row_doc_ids(self, i: int) -> np.ndarray:
        return self.doc_ids[self.piece_offsets[i] : self.piece_offsets[i + 1]]

    def row_source(self, i: int) -> np.ndarray:
        return self.source[self.piece_offsets[i] : self.piece_offsets[i + 1]]

    def row_used(self) -> np.ndarray:
        """Document tokens in each row (seq_len minus the row's padding)."""
        return row_used(self.piece_offsets, self.doc_lens)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]],
        seq_len: int,
        dtype: str | np.dtype,
    ) -> "RowBlock":
        """Build from (tokens, doc_lens, doc_ids, source) tuples; tokens must be `seq_len` long."""
        n = len(rows)
        tokens = np.empty((n, seq_len), dtype=dtype)
        counts = np.zeros(n + 1, np.int64)
        for i, (t, lens, _, _) in enumerate(rows):
            if len(t) != seq_len:
                raise FormatError(f"row {i} has {len(t)} tokens, expected seq_len {seq_len}")
            tokens[i] = t
            counts[i + 1] = len(lens)
        offsets = np.cumsum(counts)

        def flat(k, dt):
            return np.fromiter((x for r in rows for x in r[k]), dtype=dt, count=int(offsets[-1]))

        return cls(tokens, offsets, flat(1, np.int32), flat(2, np.uint64), flat(3, np.uint16))

    def slice(self, lo: int, hi: int) -> "RowBlock":
        """Rows [lo, hi) (views, offsets rebased to 0)."""
        p0, p1 = int(self.piece_offsets[lo]), int(self.piece_offsets[hi])
        return RowBlock(self.tokens[lo:hi], self.piece_offsets[lo:hi + 1] - p0, self.doc_lens[p0:p1],
                        self.doc_ids[p0:p1], self.source[p0:p1])

    def take(self, rows: np.ndarray) -> "RowBlock":
        """The rows at the given indices, in that order (a copy)."""
        rows = np.asarray(rows, np.int64)
        counts = np.diff(self.piece_offsets)[rows]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Piece indices of the chosen rows, row after row, without a Python loop per row.
        starts = self.piece_offsets[:-1][rows]
        pieces = np.repeat(starts - offsets[:-1], counts) + np.arange(int(offsets[-1]), dtype=np.int64)
        return RowBlock(self.tokens[rows], offsets, self.doc_lens[pieces], self.doc_ids[pieces], self.source[pieces])

    @classmethod
    def concat(cls, blocks: Sequence["RowBlock"]) -> "RowBlock":
        if len(blocks) == 1:
            return blocks[0]
        starts = np.cumsum([0] + [len(b.doc_lens) for b in blocks[:-1]])
        offsets = np.concatenate([[0]] + [b.piece_offsets[1:] + s for b, s in zip(blocks, starts)])
        return cls(
            np.concatenate([b.tokens for b in blocks]),
            offsets.astype(np.int64),
            np.concatenate([b.doc_lens for b in blocks]),
            np.concatenate([b.doc_ids for b in blocks]),
            np.concatenate([b.source for b in blocks]),
        )
