"""Small real outputs for tests: random documents packed (concat) into step files with a manifest.

Written with the real shard writer, so every test that reads these reads the real format.
"""

from __future__ import annotations

import numpy as np

from shards import (
    FileInfo, Manifest, RowBlock, SourceInfo, TokenizerInfo, step_file_name, write_manifest, write_step,
)
from shards.format import REMAINDER_FILE


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


def make_output(out: str, *, num_steps: int, rows_per_step: int, seq_len: int, vocab_size: int = 1000,
                dtype: str = "uint32", seed: int = 0, remainder_rows: int = 0, n_sources: int = 1) -> Manifest:
    rng = np.random.default_rng(seed)
    eos = vocab_size - 1
    steps, doc = [], 0
    for s in range(num_steps):
        rows, doc = random_rows(rng, rows_per_step, seq_len, vocab_size, eos=eos, n_sources=n_sources, first_doc=doc)
        block = RowBlock.from_rows(rows, seq_len, dtype)
        steps.append(write_step(out, step_file_name(s), block, seq_len=seq_len, dtype=dtype, step=s))
    remainder = None
    if remainder_rows:
        rows, doc = random_rows(rng, remainder_rows, seq_len, vocab_size, eos=eos, first_doc=doc)
        block = RowBlock.from_rows(rows, seq_len, dtype)
        remainder = write_step(out, REMAINDER_FILE, block, seq_len=seq_len, dtype=dtype, step=None)
    m = Manifest(
        seq_len=seq_len, rows_per_step=rows_per_step, dtype=dtype,
        tokenizer=TokenizerInfo(name="synthetic", sha256="0" * 64, vocab_size=vocab_size, bos_id=None,
                                eos_id=eos, pad_id=eos, add_bos=False, add_eos=True),
        packing="concat", seed=seed,
        sources=[SourceInfo(name=f"src{i}", documents=0, tokens=0) for i in range(n_sources)],
        steps=steps, remainder=remainder, config={"generator": "tests/shardgen.py"},
    )
    write_manifest(out, m)
    return m
