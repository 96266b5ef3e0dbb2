"""Totals and distributions of an output, computed by reading every step file once.

Document lengths are counted per document id across all of its pieces, so a document cut across
two rows (or two steps) counts once, at its full length.

Length trend: for each step, the mean over its pieces of the full length of each piece's document
(a piece of a 3,000-token document counts 3,000, however short the piece; a long document counts
once per piece, so this runs well above the per-document mean), then the mean of that
over the first and the last 10% of the steps and its Pearson correlation with the step index. A
shuffle that worked gives a flat line (correlation near 0): packing made no length curriculum.

Mixtures (`manifest.mixture`): per source, each stage's target share of rows (its weight) against
the share the steps actually hold (a row belongs to the source of its first piece: in a mixture,
of all its pieces), the largest deviation of a single step's share from the weight, the largest
deviation in rows of a stage's running total from its target (the quota rule keeps it below 1),
and the passes over the source's data the manifest records.

Memory is 14 bytes per piece while reading, plus 16 per piece for a moment for the trend (a
4B-token output of ~2M documents needs ~30-60 MB), and 16 bytes per step and source.

`compute_with_arrays` also returns the arrays behind the summary (each document's length, each
row's pieces, each step's tokens and rows per source, each step's padding) for the figures of
shards/plot.py; `compute` returns the summary alone (what `stats --json` prints).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import fs
from .manifest import Manifest
from .progress import no_progress
from .reader import open_step
from .verify import prefix_deviation

PERCENTILES = (0, 10, 50, 90, 99, 100)


@dataclass(frozen=True)
class StatsArrays:
    """The arrays behind a summary, for figures (not in the JSON: the first is one entry per document)."""

    document_tokens: np.ndarray
    """Full length of each distinct document read (all its pieces added up)."""
    pieces_per_row: np.ndarray
    """Document pieces in each row read."""
    step_padding: np.ndarray
    """(steps,) padding tokens of each step (the remainder left out)."""
    step_source_tokens: np.ndarray
    """(steps, sources) document tokens of each source in each step."""
    step_source_rows: np.ndarray | None
    """(steps, sources) rows of each source in each step, for a mixture (a row counts under its first
    piece's source; in a mixture every row holds one source); None otherwise."""


def compute(out: str, manifest: Manifest, *, include_remainder: bool = True, progress=no_progress) -> dict:
    """The summary of every step file (and the remainder unless left out), read once."""
    return compute_with_arrays(out, manifest, include_remainder=include_remainder, progress=progress)[0]


def compute_with_arrays(out: str, manifest: Manifest, *, include_remainder: bool = True,
                        progress=no_progress) -> tuple[dict, StatsArrays]:
    """The summary and the arrays behind it. `progress(items, total=, desc=)` wraps the loop over the
    files (shards/progress.py `step_bar` draws a bar)."""
    files = list(manifest.steps) + ([manifest.remainder] if include_remainder and manifest.remainder else [])
    doc_ids, doc_lens, sources, pieces_per_row = [], [], [], []
    n_src = len(manifest.sources)
    rows_by_source = np.zeros((manifest.num_steps, n_src), np.int64)  # each step's rows per source (mixtures)
    step_tokens = np.zeros((manifest.num_steps, n_src), np.int64)  # each step's document tokens per source
    step_padding = np.zeros(manifest.num_steps, np.int64)
    tok_min, tok_max = None, None
    for k, info in enumerate(progress(files, total=len(files), desc="stats")):
        with open_step(fs.join(out, info.file)) as f:
            rows = f.read()
            if k < manifest.num_steps:
                step_tokens[k] = np.bincount(rows.source, weights=rows.doc_lens, minlength=n_src)[:n_src]
                step_padding[k] = rows.num_rows * rows.seq_len - int(rows.doc_lens.sum(dtype=np.int64))
                if manifest.mixture is not None:
                    firsts = rows.source[rows.piece_offsets[:-1][np.diff(rows.piece_offsets) > 0]]
                    rows_by_source[k] = np.bincount(firsts, minlength=n_src)[:n_src]
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
    pieces_per_file = np.array([len(x) for x in doc_ids], np.int64)
    trend = length_trend(per_doc, inverse, pieces_per_file[:manifest.num_steps])
    del inverse
    rows_total = sum(i.rows for i in files)
    tokens = int(lens.sum())
    padding = rows_total * manifest.seq_len - tokens
    src_tokens = np.bincount(src, weights=lens, minlength=len(manifest.sources)).astype(np.int64)
    arrays = StatsArrays(document_tokens=per_doc, pieces_per_row=ppr, step_padding=step_padding,
                         step_source_tokens=step_tokens,
                         step_source_rows=rows_by_source if manifest.mixture is not None else None)
    summary = {
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
        "length_trend": trend,
        "mixture": None if manifest.mixture is None else mixture_stats(manifest, rows_by_source),
    }
    return summary, arrays


def length_trend(doc_len: np.ndarray, piece_doc: np.ndarray, pieces_per_step: np.ndarray) -> dict:
    """Per step, the mean full length of the documents it holds a piece of (each counted once per
    step; the steps' pieces come first in `piece_doc`, each piece's index into `doc_len`), and
    how that mean moves with the step index: a packing that orders rows by length shows here."""
    n = len(pieces_per_step)
    step_of = np.repeat(np.arange(n, dtype=np.int64), pieces_per_step)
    pairs = np.unique(step_of * max(1, len(doc_len)) + piece_doc[:len(step_of)])
    step, doc = np.divmod(pairs, max(1, len(doc_len)))
    sums = np.bincount(step, weights=doc_len[doc], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / np.bincount(step, minlength=n)  # nan for a step without pieces
    ok = np.isfinite(means)
    k = max(1, n // 10)
    x, y = np.arange(n)[ok], means[ok]
    corr = None
    if len(y) >= 2 and y.std() > 0:
        corr = float(np.corrcoef(x, y)[0, 1])

    def mean(v):
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else None

    return {
        "mean": mean(means), "first_10pct": mean(means[:k]), "last_10pct": mean(means[-k:]) if n else None,
        "steps_in_10pct": k if n else 0, "correlation_with_step": corr,
        "per_step_mean": [None if not np.isfinite(v) else round(float(v), 2) for v in means],
    }


def mixture_stats(manifest: Manifest, q: np.ndarray) -> dict:
    """Targets against the rows the steps hold, per stage and source; `q` is (steps, sources) rows."""
    mix, n, R = manifest.mixture, len(manifest.sources), manifest.rows_per_step
    stages, start = [], 0
    step_dev, prefix_dev = np.zeros(n), np.zeros(n)
    for st in mix.stages:
        w = np.zeros(n)
        w[:min(n, len(st.weights))] = st.weights[:n]
        block = q[start:start + st.steps]
        actual = [None] * n
        if len(block):
            actual = (block.sum(axis=0) / (R * len(block))).tolist()
            step_dev = np.maximum(step_dev, np.abs(block / R - w).max(axis=0))
            prefix_dev = np.maximum(prefix_dev, prefix_deviation(block, w, R)[0].max(axis=0))
        stages.append({"first_step": start, "steps": st.steps, "target": w.tolist(), "actual": actual})
        start += st.steps

    def at(values, i):
        return values[i] if i < len(values) else None

    total = max(1, R * len(q))
    return {
        "stages": stages,
        "sources": [
            {"index": i, "name": s.name, "target": [st["target"][i] for st in stages],
             "actual": [st["actual"][i] for st in stages], "actual_overall": float(q[:, i].sum()) / total,
             "max_step_deviation": float(step_dev[i]), "max_prefix_deviation_rows": float(prefix_dev[i]),
             "passes": at(mix.passes, i), "rows_per_pass": at(mix.rows_per_pass, i),
             "remainder_rows": at(mix.remainder_rows, i)}
            for i, s in enumerate(manifest.sources)
        ],
    }


def _dist(values: np.ndarray, pcts) -> dict:
    if len(values) == 0:
        return {"mean": None, **{f"p{p}": None for p in pcts}}
    q = np.percentile(values, pcts, method="nearest")
    return {"mean": float(values.mean()), **{f"p{p}": int(v) for p, v in zip(pcts, q)}}
