"""Per-source loss of a mixture step: which source each label token belongs to, and sums per source.

A step of a mixture holds rows of several sources (with weights, every row holds one source only;
otherwise a row's pieces may come from different sources). Each piece's source index is in the
shard's `source` column, parallel to `doc_lens`; the manifest's `sources[i].name` names it.

A label belongs to the source of the piece holding the position it is predicted *from* (the input
position, as in `steppack.trainer.targets`): with causal attention the last token of document A predicts the
first token of the next document B, and that label counts for A's source.

    tokens   A0 A1 A2 B0 B1 P        A from source 0 (gsm8k), B from source 1 (proofs)
    labels   A1 A2 B0 B1 -  -
    source   0  0  0  1  -1 -1       -1: no label (row end, padding, a document end under 'doc')

Per micro-batch: label counts per source (before the forward pass: they need only labels) and loss
sums per source from the per-position losses (`steppack.trainer.model.next_token_losses`). Both are summed
over micro-batches and ranks by the collectives the step makes anyway. They are statistics: the
step's loss and gradient do not depend on them.

Sums are taken over an (N, n_sources) comparison rather than with scatter_add/bincount, whose CUDA
kernels add floats in a nondeterministic order: N is a micro-batch's positions, so 4 x 4096 x 8
sources is 131k elements (1 MiB of float64), small next to the logits (4 x 4096 x 102400 fp32).
"""

from __future__ import annotations

import torch

from .data import MicroBatch
from .model import IGNORE
from .targets import position_sources


def label_sources(mb: MicroBatch, labels: torch.Tensor) -> torch.Tensor:
    """(B*T,) int64 on labels' device: the source of each position's label, -1 where there is none."""
    if mb.doc_lens is None or mb.source is None:
        raise ValueError("the per-source loss needs a stream opened with sources=True")
    src = torch.from_numpy(position_sources(*mb.doc_lens, mb.source, labels.shape[1])).to(labels.device)
    return src.view(-1).masked_fill_(labels.view(-1) == IGNORE, -1)


def _per_source(values: torch.Tensor, sources: torch.Tensor, n: int) -> torch.Tensor:
    hit = sources[:, None] == torch.arange(n, device=sources.device)[None, :]
    return torch.where(hit, values[:, None], torch.zeros((), dtype=values.dtype, device=values.device)).sum(0)


def source_counts(sources: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) int64: label tokens of each source."""
    return _per_source(torch.ones_like(sources), sources, n)


def source_sums(per_position: torch.Tensor, sources: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) float64: loss sum of each source's label tokens."""
    return _per_source(per_position.detach().double(), sources, n)


def source_fields(names: list[str], sums, counts) -> dict:
    """The metrics fields: mean loss and label tokens of each source present in the step."""
    present = [(name, float(s), int(c)) for name, s, c in zip(names, sums, counts) if int(c) > 0]
    return {"source_loss": {name: round(s / c, 6) for name, s, c in present},
            "source_tokens": {name: c for name, _, c in present}}
