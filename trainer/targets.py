"""Labels, positions and document ids of a micro-batch, built on the device the model runs on.

Next-token prediction inside each row: the label of position i is token i+1 of the same row; the
row's last position has none. Padding (positions from `used` on) predicts nothing. A row of 8 with
two documents `AAA` `BBBB` and one padding token P::

    tokens     A0 A1 A2 B0 B1 B2 B3 P
    causal     A1 A2 B0 B1 B2 B3 -  -      (A2 -> B0 across the boundary, as DeepSeek trained)
    doc        A1 A2 -  B1 B2 B3 -  -      (no prediction across documents)
    positions  0  1  2  0  1  2  3  0      (doc only; causal uses 0..T-1)
    doc_ids    0  0  0  1  1  1  1  2      (padding gets a block of its own)
    sources    a  a  a  b  b  b  b  -1     (A from source a, B from b; only for per-source loss)

With attention='doc' a row is then computed exactly as its documents would be one by one.
A label counts for the source of the position it is predicted *from* (its input position): in the
causal row above, the label B0 at position 2 is a's (see `steppack.trainer.source_loss`).
"""

from __future__ import annotations

import numpy as np
import torch

from steppack.shards.rows import row_used

from .data import MicroBatch
from .model import IGNORE


def _blocks(offsets: np.ndarray, lens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(block lengths, is_pad) of m rows whose pieces are `lens[offsets[i]:offsets[i+1]]` (offsets
    from 0): each row is its pieces followed by one padding block (possibly empty), in row order."""
    m = len(offsets) - 1
    used = row_used(offsets, lens)
    pad_at = offsets[1:] + np.arange(m)  # index of row i's padding block among all blocks
    blocks = np.empty(len(lens) + m, np.int64)
    is_pad = np.zeros(len(blocks), bool)
    is_pad[pad_at] = True
    blocks[is_pad] = seq_len - used
    blocks[~is_pad] = lens
    return blocks, is_pad


def _rebased(offsets, pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, the micro-batch's slice of a step-wide per-piece array)."""
    offsets = np.asarray(offsets, np.int64)
    return offsets - offsets[0], np.asarray(pieces[offsets[0] : offsets[-1]])


def doc_layout(offsets: np.ndarray, doc_lens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc_ids, positions, last) of m rows whose pieces are `doc_lens[offsets[i]:offsets[i+1]]`
    (offsets need not start at 0: a micro-batch's are a view of its step's).

    doc_ids and positions are (m, seq_len); `last` holds the flat indices (row * seq_len + column)
    of the positions that end a document piece. Vectorized over the rows: each row is its pieces
    followed by one padding block (possibly empty), and ids/positions restart per block."""
    offsets, lens = _rebased(offsets, doc_lens)
    lens = lens.astype(np.int64)
    m = len(offsets) - 1
    blocks, is_pad = _blocks(offsets, lens, seq_len)
    pad_at = np.flatnonzero(is_pad)
    first_block = np.concatenate([[0], pad_at[:-1] + 1])  # each row's first block
    block_row = np.repeat(np.arange(m), np.diff(offsets) + 1)
    doc_ids = np.repeat(np.arange(len(blocks)) - first_block[block_row], blocks).reshape(m, seq_len)
    starts = np.cumsum(blocks) - blocks  # flat start of each block
    positions = (np.arange(m * seq_len) - np.repeat(starts, blocks)).reshape(m, seq_len)
    # A piece's last token in flat (row * seq_len + column) terms: its start plus its length - 1.
    last = starts[~is_pad] + lens - 1
    return doc_ids, positions, last


def position_sources(offsets: np.ndarray, doc_lens: np.ndarray, source: np.ndarray, seq_len: int,
                     *, pad: int = -1) -> np.ndarray:
    """(m, seq_len) int64: the source index (`source`, parallel to `doc_lens`) of the piece holding
    each position; `pad` on padding. Offsets as for `doc_layout`; vectorized the same way."""
    _, src = _rebased(offsets, source)  # the same pieces as doc_lens
    offsets, lens = _rebased(offsets, doc_lens)
    blocks, is_pad = _blocks(offsets, lens.astype(np.int64), seq_len)
    value = np.full(len(blocks), pad, np.int64)
    value[~is_pad] = src
    return np.repeat(value, blocks).reshape(len(offsets) - 1, seq_len)


def make_targets(mb: MicroBatch, *, doc: bool, device: torch.device):
    """(tokens, labels, positions | None, doc_ids | None) on `device` for one micro-batch."""
    tokens = mb.tokens.to(device)
    m, t = tokens.shape
    labels = torch.full_like(tokens, IGNORE)
    labels[:, :-1] = tokens[:, 1:]
    if mb.used is not None:
        used = torch.as_tensor(mb.used, device=device)
        labels.masked_fill_(torch.arange(t, device=device)[None, :] + 1 >= used[:, None], IGNORE)
    if not doc:
        return tokens, labels, None, None
    if mb.doc_lens is None:
        raise ValueError("attention='doc' needs a stream opened with doc_lens=True")
    ids, pos, last = doc_layout(*mb.doc_lens, t)
    labels.view(-1)[torch.as_tensor(last, device=device)] = IGNORE
    return tokens, labels, torch.from_numpy(pos).to(device), torch.from_numpy(ids).to(device)


def row_digest(mb: MicroBatch, tokens: torch.Tensor) -> torch.Tensor:
    """An int64 fingerprint of which rows, with which tokens, this micro-batch holds.

    Summed over all micro-batches and ranks it identifies a step's data independently of the world
    size and micro-batch: the metrics carry it so a resumed run can be checked against another."""
    weights = torch.arange(mb.rows.start + 1, mb.rows.stop + 1, device=tokens.device, dtype=torch.int64)
    return (tokens.sum(dim=1) * weights).sum()
