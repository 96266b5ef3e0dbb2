"""Small real outputs for tests, written with the real shard writer (so every test that reads these
reads the real format):

- `make_output`: random documents concat-packed into step files with a manifest;
- `make_mixture_output`: a mixture — every row holds one source's documents, each step takes its
  quota of rows per source (recorded as `source_rows`), a `MixtureInfo` in the manifest; a source
  with fewer rows than the steps need is repeated (each further pass a fresh shuffle of its rows);
- `write_output`: given rows, written as steps (and a remainder) with a manifest;
- `rewrite_step`: replace one step's file the way a buggy writer would, the manifest made to agree
  with its bytes, so that only `verify`'s content checks can catch it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from steppack.shards import (
    FileInfo, Manifest, MixtureInfo, RowBlock, SourceInfo, StageInfo, TokenizerInfo, read_manifest, step_file_name,
    write_manifest, write_step,
)
from steppack.shards.format import REMAINDER_FILE

Row = tuple  # (tokens, doc_lens, doc_ids, sources), as RowBlock.from_rows takes them


def random_rows(rng: np.random.Generator, n_rows: int, seq_len: int, vocab_size: int, *, eos: int,
                pad_last: bool = False, n_sources: int = 1, first_doc: int = 0):
    """Concat-pack random documents (each ending with `eos`) into `n_rows` full rows."""
    rows, tokens, lens, ids, srcs = [], [], [], [], []
    doc = first_doc
    carry = None  # (remaining tokens, doc id, source) of a document cut at the end of the last row
    for _ in range(n_rows):
        tokens, lens, ids, srcs = [], [], [], []
        while len(tokens) < seq_len:
            if carry is None:
                n = int(rng.integers(1, 2 * seq_len))
                body = rng.integers(0, vocab_size, n - 1).tolist() + [eos]
                carry = (body, doc, int(rng.integers(0, n_sources)))
                doc += 1
            body, d, s = carry
            take = min(len(body), seq_len - len(tokens))
            tokens += body[:take]
            lens.append(take)
            ids.append(d)
            srcs.append(s)
            carry = (body[take:], d, s) if take < len(body) else None
        rows.append((tokens, lens, ids, srcs))
    return rows, doc


def tokenizer_info(vocab_size: int) -> TokenizerInfo:
    eos = vocab_size - 1
    return TokenizerInfo(name="synthetic", sha256="0" * 64, vocab_size=vocab_size, bos_id=None, eos_id=eos,
                         pad_id=eos, add_bos=False, add_eos=True)


def _row_sources(rows: Sequence[Row], n_sources: int) -> list[int]:
    """Rows per source, each row counted under its first piece's source (the whole row's in a mixture)."""
    counts = [0] * n_sources
    for r in rows:
        counts[r[3][0]] += 1
    return counts


def write_output(out: str, steps: Sequence[Sequence[Row]], *, seq_len: int, remainder: Sequence[Row] = (),
                 vocab_size: int = 1000, dtype: str = "uint32", n_sources: int = 1, packing: str = "concat",
                 seed: int = 0, mixture: MixtureInfo | None = None) -> Manifest:
    """Write `steps` (each a list of rows) and `remainder` with a manifest; with `mixture`, every file's
    `source_rows` is recorded from its rows."""
    def write(rel, rows, step):
        info = write_step(out, rel, RowBlock.from_rows(rows, seq_len, dtype), seq_len=seq_len, dtype=dtype, step=step)
        return dataclasses.replace(info, source_rows=_row_sources(rows, n_sources)) if mixture else info

    infos = [write(step_file_name(s), rows, s) for s, rows in enumerate(steps)]
    m = Manifest(
        seq_len=seq_len, rows_per_step=len(steps[0]) if steps else 1, dtype=dtype, tokenizer=tokenizer_info(vocab_size),
        packing=packing, seed=seed,
        sources=[SourceInfo(name=f"src{i}", documents=0, tokens=0) for i in range(n_sources)],
        steps=infos, remainder=write(REMAINDER_FILE, remainder, None) if remainder else None,
        config={"generator": "tests/shardgen.py"}, mixture=mixture,
    )
    write_manifest(out, m)
    return m


def make_output(out: str, *, num_steps: int, rows_per_step: int, seq_len: int, vocab_size: int = 1000,
                dtype: str = "uint32", seed: int = 0, remainder_rows: int = 0, n_sources: int = 1) -> Manifest:
    rng = np.random.default_rng(seed)
    eos = vocab_size - 1
    steps, doc = [], 0
    for _ in range(num_steps):
        rows, doc = random_rows(rng, rows_per_step, seq_len, vocab_size, eos=eos, n_sources=n_sources, first_doc=doc)
        steps.append(rows)
    remainder = []
    if remainder_rows:
        remainder, doc = random_rows(rng, remainder_rows, seq_len, vocab_size, eos=eos, first_doc=doc)
    return write_output(out, steps, seq_len=seq_len, remainder=remainder, vocab_size=vocab_size, dtype=dtype,
                        n_sources=n_sources, seed=seed)


def quotas(weights: Sequence[float], steps: int, rows_per_step: int) -> np.ndarray:
    """(steps, sources) rows per step that keep every running total within one row of its target:
    each prefix's cumulative targets rounded by largest remainder, differenced."""
    w = np.asarray(weights, np.float64)
    cum = np.zeros((steps + 1, len(w)), np.int64)
    for s in range(1, steps + 1):
        target = w * rows_per_step * s
        c = np.floor(target).astype(np.int64)
        short = rows_per_step * s - int(c.sum())
        c[np.argsort(-(target - c), kind="stable")[:short]] += 1
        cum[s] = c
    q = np.diff(cum, axis=0)
    if (q < 0).any():
        raise ValueError(f"weights {list(weights)} need a smarter quota rule than this test helper's")
    return q


def make_mixture_output(out: str, *, stages: Sequence[tuple[int, Sequence[float]]], rows_per_step: int,
                        seq_len: int, rows_per_pass: Sequence[int] | None = None, remainder_rows: Sequence[int] | None = None,
                        step_quotas: np.ndarray | None = None, vocab_size: int = 1000, seed: int = 0) -> Manifest:
    """A mixture of len(weights) sources over `stages` [(steps, weights)]. Source i's rows are concat-packed
    from its own documents (ids i * 10**6 + k); `rows_per_pass[i]` smaller than the rows the steps take
    repeats it. `step_quotas` (steps, sources) overrides the quotas (and is recorded as written)."""
    n = len(stages[0][1])
    q = np.concatenate([quotas(w, k, rows_per_step) for k, w in stages]) if step_quotas is None else np.asarray(step_quotas)
    remainder_rows = [0] * n if remainder_rows is None else list(remainder_rows)
    need = q.sum(axis=0) + np.asarray(remainder_rows)
    rows_per_pass = [int(x) for x in need] if rows_per_pass is None else list(rows_per_pass)
    rng = np.random.default_rng(seed)
    streams = []
    for i in range(n):
        base, _ = random_rows(rng, rows_per_pass[i], seq_len, vocab_size, eos=vocab_size - 1, first_doc=i * 10**6)
        base = [(t, lens, ids, [i] * len(lens)) for t, lens, ids, _ in base]
        passes = -(-int(need[i]) // max(1, rows_per_pass[i]))
        streams.append(iter([base[j] for _ in range(passes) for j in rng.permutation(len(base))]))
    steps = []
    for s in range(len(q)):
        rows = [next(streams[i]) for i in range(n) for _ in range(int(q[s, i]))]
        steps.append([rows[j] for j in rng.permutation(len(rows))])
    remainder = [next(streams[i]) for i in range(n) for _ in range(remainder_rows[i])]
    mixture = MixtureInfo(
        stages=[StageInfo(steps=k, weights=list(map(float, w))) for k, w in stages],
        rows_per_pass=rows_per_pass,
        passes=[float(q[:, i].sum()) / max(1, rows_per_pass[i]) for i in range(n)],
        remainder_rows=remainder_rows,
    )
    return write_output(out, steps, seq_len=seq_len, remainder=remainder, vocab_size=vocab_size, n_sources=n,
                        seed=seed, mixture=mixture)


def rewrite_step(out: str, step: int, block: RowBlock, **manifest_fields) -> None:
    """Write `block` as step `step` with the real writer and make the manifest list its bytes, keeping the
    manifest's token count and source_rows (so they, like the rows, may now disagree): what a buggy writer
    leaves. `manifest_fields` replace fields of the manifest itself."""
    m = read_manifest(out)
    old = m.steps[step]
    info = write_step(out, old.file, block, seq_len=m.seq_len, dtype=m.dtype, step=step)
    steps = list(m.steps)
    steps[step] = dataclasses.replace(info, tokens=old.tokens, source_rows=old.source_rows)
    write_manifest(out, dataclasses.replace(m, steps=steps, **manifest_fields))


def read_block(out: str, step: int) -> RowBlock:
    """Step `step`'s rows as a RowBlock of arrays the caller may change."""
    from steppack.shards import open_step
    from steppack.shards.fs import join

    with open_step(join(out, step_file_name(step))) as f:
        b = f.read()
        return RowBlock(b.tokens.copy(), b.piece_offsets.copy(), b.doc_lens.copy(), b.doc_ids.copy(), b.source.copy())


__all__ = ["FileInfo", "make_output", "make_mixture_output", "quotas", "random_rows", "read_block", "rewrite_step",
           "tokenizer_info", "write_output"]
