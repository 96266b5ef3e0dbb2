"""Attention over a packed row: causal across the whole row, or only inside each document, never
with a dense (T, T) mask.

    causal   scaled_dot_product_attention(is_causal=True): flash kernels on CUDA and on CPU.
    doc      token i sees token j iff j <= i and both lie in the same document (doc_ids from
             doc_lens; padding is a block of its own, as in targets.doc_layout):

               row     A A A B B B B P P        A, B documents, P padding
               spans   [0,3) [3,7) [7,9)        each attends causally to itself only

             CUDA: `flex_attention`, compiled, with a `BlockMask` built from doc_ids: of the
             128 x 128 tiles of the (T, T) score matrix, those lying across two documents are
             skipped and the partial ones masked inside the fused kernel (the mask function
             compares two doc ids), so no layer holds a T x T array.
             Elsewhere: one causal SDPA call per document span (a Python loop over the spans of
             every row), the flash kernel on each: memory of one document's attention, O(T x d).
             flex_attention is not the CPU path: it has no backward on CPU in torch 2.13
             ("FlexAttention does not support backward on CPU"), its eager form materialises the
             scores, and compiling its forward took 11 s here.

The two doc paths are the same function of (q, k, v, doc_ids): tests/test_trainer_model.py checks
both (flex in its eager forward on CPU) against the dense-mask definition.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def doc_spans(doc_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[(start, end) of each document] per row of doc_ids (B, T): runs of equal ids."""
    spans = []
    for row in doc_ids.cpu():
        _, counts = torch.unique_consecutive(row, return_counts=True)
        ends = torch.cumsum(counts, 0).tolist()
        spans.append(list(zip([0] + ends[:-1], ends)))
    return spans


class DocMask:
    """Which tokens attend to which under `--attention doc`, built once per forward for every layer.
    `flex` (default on CUDA): a flex_attention BlockMask; otherwise the document spans of each row."""

    def __init__(self, doc_ids: torch.Tensor, *, flex: bool | None = None):
        self.flex = doc_ids.is_cuda if flex is None else flex
        if self.flex:
            from torch.nn.attention.flex_attention import create_block_mask

            def same_doc_causal(b, h, q, kv):
                return (doc_ids[b, q] == doc_ids[b, kv]) & (q >= kv)

            b, t = doc_ids.shape
            self.block_mask = create_block_mask(same_doc_causal, b, None, t, t, device=doc_ids.device)
        else:
            self.spans = doc_spans(doc_ids)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: DocMask | None = None) -> torch.Tensor:
    """q, k, v (B, H, T, head_dim) -> (B, H, T, head_dim); causal over the row, or inside documents."""
    if docs is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if docs.flex:
        if q.is_cuda:
            return _compiled_flex()(q, k, v, block_mask=docs.block_mask)
        from torch.nn.attention.flex_attention import flex_attention  # eager, forward only: for the check

        return flex_attention(q, k, v, block_mask=docs.block_mask)
    rows = []
    for i, spans in enumerate(docs.spans):
        if len(spans) == 1:
            rows.append(F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], is_causal=True))
            continue
        rows.append(torch.cat([F.scaled_dot_product_attention(q[i:i + 1, :, a:e], k[i:i + 1, :, a:e],
                                                              v[i:i + 1, :, a:e], is_causal=True)
                               for a, e in spans], dim=2))
    return torch.cat(rows, dim=0)
