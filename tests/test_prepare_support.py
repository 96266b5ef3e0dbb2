"""Helpers for the prepare end-to-end tests: run the CLI, read an output back into documents.

`documents_of(out)` gathers every document's pieces (steps, then the remainder; `tile` orders them) and
`expected_documents(cfg)` reads the inputs again, independently of the Beam job, so the tests
compare what went in with what came out.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from steppack.pipeline.cli import add_arguments, config_from_args
from steppack.pipeline.plan import doc_id
from steppack.pipeline.sources import Reject, discover, read_unit
from steppack.pipeline.tokenize import split_text
from steppack.pipeline.transforms import drop_reason
from steppack.shards import open_step, read_manifest
from steppack.shards import stats as shards_stats
from steppack.shards import tokenizer as shtok
from steppack.shards.format import REPORT_NAME
from steppack.cli import main as steppack_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO, "samples")
CORPUS = os.path.normpath(os.path.join(REPO, "..", "shared", "corpus"))


@pytest.fixture
def corpus():
    """../shared/corpus, or a skip when this checkout has none next to it."""
    if not os.path.isdir(CORPUS):
        pytest.skip(f"the shared corpus is not at {CORPUS}")
    return CORPUS


def prepare(*argv: str) -> int:
    return steppack_main(["prepare", "--quiet", *argv])


def parse(*argv: str):
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args, _ = p.parse_known_args(list(argv))
    return config_from_args(args)


def documents_of(out: str) -> tuple[dict[int, list[np.ndarray]], dict[int, int]]:
    """doc_id -> its pieces (in the order the steps hold them: rows are shuffled, so not the
    document's order; `tile` puts them back); doc_id -> source index."""
    m = read_manifest(out)
    pieces: dict[int, list[np.ndarray]] = {}
    sources: dict[int, int] = {}
    files = [s.file for s in m.steps] + ([m.remainder.file] if m.remainder else [])
    for rel in files:
        with open_step(os.path.join(out, rel)) as f:
            block = f.read()
            for i in range(block.num_rows):
                at = 0
                row = block.tokens[i]
                for n, d, s in zip(block.row_doc_lens(i), block.row_doc_ids(i), block.row_source(i)):
                    pieces.setdefault(int(d), []).append(np.array(row[at : at + n]))
                    sources[int(d)] = int(s)
                    at += int(n)
                assert (row[at:] == m.tokenizer.pad_id).all(), f"{rel} row {i}: padding is not pad_id"
    return pieces, sources


def tile(expected: list[int], pieces: list[np.ndarray]) -> list[int] | None:
    """The pieces laid end to end in an order that gives `expected` exactly, or None when no order
    does (each piece used once)."""
    want = np.asarray(expected)
    if sum(len(p) for p in pieces) != len(want):
        return None
    used = [False] * len(pieces)

    def go(pos: int) -> bool:
        if pos == len(want):
            return True
        tried = set()
        for i, p in enumerate(pieces):
            key = (len(p), p.tobytes())
            if used[i] or key in tried or pos + len(p) > len(want) or not np.array_equal(want[pos:pos + len(p)], p):
                continue
            tried.add(key)
            used[i] = True
            if go(pos + len(p)):
                return True
            used[i] = False
        return False

    return want.tolist() if go(0) else None


def expected_documents(cfg) -> tuple[dict[int, tuple[int, str]], list[Reject]]:
    """doc_id -> (source, text) of every document the job should keep, and every reject."""
    units, _ = discover(cfg)
    docs, rejects = {}, []
    for u in units:
        for item in read_unit(u):
            if isinstance(item, Reject):
                rejects.append(item)
            elif drop_reason(item[1], cfg) is None:
                docs[doc_id(u.source_name, u.key, item[0])] = (u.source, item[1])
    return docs, rejects


def check_round_trip(out: str, cfg) -> dict:
    """Every kept document decodes back to its text exactly; the counts add up. Returns report.json."""
    m = read_manifest(out)
    tok = shtok.load(m.tokenizer.name)
    got, got_sources = documents_of(out)
    want, _ = expected_documents(cfg)
    assert set(got) == set(want), f"{len(set(want) - set(got))} documents missing, {len(set(got) - set(want))} extra"
    head = [m.tokenizer.bos_id] if m.tokenizer.add_bos else []
    tail = [m.tokenizer.eos_id] if m.tokenizer.add_eos else []
    for d, pieces in got.items():
        source, text = want[d]
        assert got_sources[d] == source
        # The reference encoding (HF tokenizers, the job's piece split); the pieces must tile it.
        ref = head + [i for p in split_text(text, cfg.piece_chars)
                      for i in tok.encode(p, add_special_tokens=False).ids] + tail
        ids = tile(ref, pieces)
        assert ids is not None, f"the pieces of document {d:016x} do not make up its tokens"
        if m.tokenizer.add_bos:
            assert ids[0] == m.tokenizer.bos_id
            ids = ids[1:]
        if m.tokenizer.add_eos:
            assert ids[-1] == m.tokenizer.eos_id
            ids = ids[:-1]
        assert tok.decode(ids, skip_special_tokens=False) == text, f"document {d:016x} does not decode to its text"
    report = json.load(open(os.path.join(out, REPORT_NAME)))
    check_counts(report, m)
    assert report["documents"]["kept"] == len(want)
    # The job counts cut documents while packing (per bucket, then the tails); the output agrees.
    st = shards_stats.compute(out, m)
    assert (report["documents_cut_across_rows"], report["cuts"]) == (st["documents_cut"], st["cuts"])
    return report


def check_counts(report: dict, m) -> None:
    d, t = report["documents"], report["tokens"]
    assert d["read"] == d["kept"] + d["dropped"] == d["kept"] + sum(d["dropped_by_reason"].values())
    assert t["read"] == t["kept"] + t["dropped"] == t["kept"] + sum(t["dropped_by_reason"].values())
    assert t["kept"] == t["in_steps"] + t["in_remainder"]
    assert t["in_steps"] == sum(s.tokens for s in m.steps)
    assert all(s.rows == m.rows_per_step for s in m.steps)
    assert sum(s.documents for s in m.sources) == d["kept"] and sum(s.tokens for s in m.sources) == t["kept"]


def output_bytes(out: str) -> dict[str, bytes]:
    """Every file of an output but report.json (which records wall time), by relative path."""
    files = {}
    for root, _, names in os.walk(out):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), out)
            if rel != REPORT_NAME:
                files[rel] = open(os.path.join(root, n), "rb").read()
    return files

