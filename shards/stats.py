"""Totals and distributions of an output, computed by reading every step file once.

Document lengths are counted per document id across all of its pieces, so a document cut across
two rows (or two steps) counts once, at its full length. Memory is 14 bytes per piece (a 4B-token
output of ~2M documents needs ~30 MB).
"""

from __future__ import annotations

import numpy as np

from . import fs
from .manifest import Manifest
from .reader import open_step

PERCENTILES = (0, 10, 50, 90, 99, 100)


def compute(out: str, manifest: Manifest, *, include_remainder: bool = True) -> dict:
    files = list(manifest.steps) + ([manifest.remainder] if include_remainder and manifest.remainder else [])
    doc_ids, doc_lens, sources, pieces_per_row = [], [], [], []
    tok_min, tok_max = None, None
    for info in files:
        with open_step(fs.join(out, info.file)) as f:
            rows = f.read()
            doc_ids.append(rows.doc_ids.copy())
            doc_lens.append(rows.doc_lens.astype(np.int64))
            sources.append(rows.source.copy())
            pieces_per_row.append(np.diff(rows.piece_offsets))
            if rows.num_rows:
                used = rows.row_used()
                # Padding sits at the end of each row; the id range is over document tokens only.
                mask = np.arange(rows.seq_len)[None, :] < used[:, None]
                if mask.any():
                    lo, hi = int(rows.tokens[mask].min()), int(rows.tokens[mask].max())
                    tok_min = lo if tok_min is None else min(tok_min, lo)
                    tok_max = hi if tok_max is None else max(tok_max, hi)
    ids = np.concatenate(doc_ids) if doc_ids else np.zeros(0, np.uint64)
    lens = np.concatenate(doc_lens) if doc_lens else np.zeros(0, np.int64)
    src = np.concatenate(sources) if sources else np.zeros(0, np.uint16)
    ppr = np.concatenate(pieces_per_row) if pieces_per_row else np.zeros(0, np.int64)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    per_doc = np.bincount(inverse, weights=lens, minlength=len(uniq)).astype(np.int64)
    rows_total = sum(i.rows for i in files)
    tokens = int(lens.sum())
    padding = rows_total * manifest.seq_len - tokens
    src_tokens = np.bincount(src, weights=lens, minlength=len(manifest.sources)).astype(np.int64)
    return {
        "steps": manifest.num_steps,
        "rows_per_step": manifest.rows_per_step,
        "seq_len": manifest.seq_len,
        "rows": rows_total,
        "remainder_rows": manifest.remainder.rows if manifest.remainder else 0,
        "included_remainder": bool(include_remainder and manifest.remainder),
        "tokens": tokens,
        "padding": padding,
        "padding_pct": 100.0 * padding / max(1, rows_total * manifest.seq_len),
        "documents": int(len(uniq)),
        "pieces": int(len(lens)),
        "documents_cut": int((counts > 1).sum()),
        "cuts": int(len(lens) - len(uniq)),
        "pieces_per_row": _dist(ppr, (0, 50, 90, 100)),
        "document_tokens": _dist(per_doc, PERCENTILES),
        "sources": [
            {"index": i, "name": s.name, "tokens": int(src_tokens[i]), "share": float(src_tokens[i]) / max(1, tokens)}
            for i, s in enumerate(manifest.sources)
        ],
        "token_ids": {"min": tok_min, "max": tok_max, "vocab_size": manifest.tokenizer.vocab_size,
                      "fits": tok_max is None or tok_max < manifest.tokenizer.vocab_size},
    }


def _dist(values: np.ndarray, pcts) -> dict:
    if len(values) == 0:
        return {"mean": None, **{f"p{p}": None for p in pcts}}
    q = np.percentile(values, pcts, method="nearest")
    return {"mean": float(values.mean()), **{f"p{p}": int(v) for p, v in zip(pcts, q)}}
