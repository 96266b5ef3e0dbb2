"""Labels, positions and document ids of a micro-batch, built on the device the model runs on.

Next-token prediction inside each row: the label of position i is token i+1 of the same row; the
row's last position has none. Padding (positions from `used` on) predicts nothing. A row of 8 with
two documents `AAA` `BBBB` and one padding token P::

    tokens     A0 A1 A2 B0 B1 B2 B3 P
    causal     A1 A2 B0 B1 B2 B3 -  -      (A2 -> B0 across the boundary, as DeepSeek trained)
    doc        A1 A2 -  B1 B2 B3 -  -      (no prediction across documents)
    positions  0  1  2  0  1  2  3  0      (doc only; causal uses 0..T-1)
    doc_ids    0  0  0  1  1  1  1  2      (padding gets a block of its own)

With attention='doc' a row is then computed exactly as its documents would be one by one.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import MicroBatch
from .model import IGNORE


def doc_layout(doc_lens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc_ids, positions, last) for one row: `last` are the positions that end a document piece."""
    lens = np.asarray(doc_lens, np.int64)
    used = int(lens.sum())
    blocks = np.append(lens, seq_len - used)
    doc_ids = np.repeat(np.arange(len(blocks)), blocks)
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]])
    positions = np.arange(seq_len) - np.repeat(starts, blocks)
    return doc_ids, positions, np.cumsum(lens) - 1


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
    ids, pos = np.empty((m, t), np.int64), np.empty((m, t), np.int64)
    for i, lens in enumerate(mb.doc_lens):
        ids[i], pos[i], last = doc_layout(lens, t)
        labels[i, torch.as_tensor(last, device=device)] = IGNORE
    return tokens, labels, torch.from_numpy(pos).to(device), torch.from_numpy(ids).to(device)


def row_digest(mb: MicroBatch, tokens: torch.Tensor) -> torch.Tensor:
    """An int64 fingerprint of which rows, with which tokens, this micro-batch holds.

    Summed over all micro-batches and ranks it identifies a step's data independently of the world
    size and micro-batch: the metrics carry it so a resumed run can be checked against another."""
    weights = torch.arange(mb.rows.start + 1, mb.rows.stop + 1, device=tokens.device, dtype=torch.int64)
    return (tokens.sum(dim=1) * weights).sum()
