"""`steppack shards audit OUT --benchmark GLOB`: which documents of an output hold benchmark text,
and which steps (so which checkpoints) saw them.

Any steppack output, decontaminated or not: its rows are decoded with the manifest's tokenizer,
the pieces of each document joined by doc_id across rows and steps, and each document put to the
rule `prepare` applies (decontaminate.py), with the same benchmark index. So on an output made
without decontamination the audit finds exactly the documents `prepare --decontaminate` drops,
and on a decontaminated one it finds none.

Two passes over the step files: the doc_ids alone (a document's piece count), then the rows. A
document in one piece is checked as soon as it is read; the pieces of a cut document are kept
until its last one is read (memory: the pieces of the documents cut across steps not yet read).

Piece order: the format records which document a piece is of, not where in it. With BOS/EOS
tokens (every preset) the first and last pieces are known; a document in 4 or more pieces (or a
repeated mixture source) has middle pieces whose order is not recorded. Its pieces are then
checked joined in reading order, and every pair of them that could be neighbours is checked
across their junction (the WINDOW tokens either side): a gram across a real junction is never
missed; one made up by a junction that is not real could be found (never seen in practice, and
counted in the summary as documents with an unrecorded piece order).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np

from steppack.shards import fs, open_step
from steppack.shards.manifest import read_manifest
from steppack.shards.progress import no_progress

from .config import JobConfig
from .decontaminate import Index, Match, read_part
from .sources import discover

WINDOW = 512
"""Tokens each side of a junction of pieces whose order is not recorded."""
BATCH = 256
"""Documents decoded and matched at once."""


@dataclass
class Finding:
    doc_id: int
    source: str
    places: list[tuple[int, int]]
    """(step, row) of each of its pieces; step -1 is the remainder."""
    match: Match

    @property
    def first_step(self) -> int:
        steps = [s for s, _ in self.places if s >= 0]
        return min(steps) if steps else -1

    def to_dict(self) -> dict:
        return {"doc_id": f"{self.doc_id:016x}", "source": self.source,
                "places": [{"step": s, "row": r} if s >= 0 else {"remainder": True, "row": r} for s, r in self.places],
                **self.match.to_dict()}


@dataclass
class Audit:
    findings: list[Finding] = field(default_factory=list)
    documents: int = 0
    pieces: int = 0
    unordered: int = 0
    """Documents whose middle pieces' order is not recorded (their junctions were all checked)."""


def benchmark_index(benchmarks, ngram: int, min_ngram: int, max_doc_bytes: int = JobConfig.max_doc_bytes) -> Index:
    """The index of benchmark texts (config.SourceConfig each), read as prepare reads them."""
    # discover reads only these three settings of a job's config.
    cfg = types.SimpleNamespace(unit_mb=64.0, max_doc_bytes=max_doc_bytes, sources=benchmarks)
    units, _ = discover(cfg, benchmarks, "benchmark")
    return Index([read_part(u, ngram, min_ngram) for u in units], ngram, min_ngram)


class _Checker:
    """Documents queued for one decode_batch and one match each."""

    def __init__(self, index: Index, tok, audit: Audit, sources: list[str]):
        self.index, self.tok, self.audit, self.sources = index, tok, audit, sources
        self.docs: list[tuple[int, int, list]] = []  # (doc_id, source, places)
        self.whole: list[list[int]] = []
        self.windows: list[tuple[int, list[int]]] = []  # (doc of self.docs, tokens)

    def add(self, doc_id: int, source: int, places: list, tokens: np.ndarray, windows=()) -> None:
        self.docs.append((doc_id, source, places))
        self.whole.append(tokens.tolist())
        self.windows += [(len(self.docs) - 1, w.tolist()) for w in windows]
        if len(self.docs) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.docs:
            return
        found = self.index.match_texts(self.tok.decode_batch(self.whole, skip_special_tokens=True))
        if self.windows:
            texts = self.tok.decode_batch([t for _, t in self.windows], skip_special_tokens=True)
            for k, m in sorted(self.index.match_texts(texts, inner=True).items()):
                found.setdefault(self.windows[k][0], m)
        for d, m in sorted(found.items()):
            doc_id, source, places = self.docs[d]
            self.audit.findings.append(Finding(doc_id, self.sources[source], sorted(places), m))
        self.docs, self.whole, self.windows = [], [], []


def arrange(pieces: list[np.ndarray], bos: int | None, eos: int | None) -> tuple[list[int], bool]:
    """An order of a document's pieces (indices) and whether it is the recorded one: the piece
    that starts with BOS first, the one that ends with EOS last, any single other between."""
    heads = [i for i, p in enumerate(pieces) if bos is not None and len(p) and p[0] == bos]
    tails = [i for i, p in enumerate(pieces) if eos is not None and len(p) and p[-1] == eos and i not in heads]
    middles = [i for i in range(len(pieces)) if i not in heads and i not in tails]
    known = len(heads) <= 1 and len(tails) <= 1 and len(middles) <= 1 and \
        not (len(pieces) > 1 and any(eos is not None and pieces[i][-1] == eos for i in heads))
    return heads + middles + tails, known


def junctions(pieces: list[np.ndarray], bos: int | None, eos: int | None) -> list[np.ndarray]:
    """WINDOW tokens either side of every junction two pieces could make (a piece ending with EOS
    ends the document; one starting with BOS starts it)."""
    out = []
    for a, pa in enumerate(pieces):
        if eos is not None and pa[-1] == eos:
            continue
        for b, pb in enumerate(pieces):
            if a != b and not (bos is not None and pb[0] == bos):
                out.append(np.concatenate([pa[-WINDOW:], pb[:WINDOW]]))
    return out


def audit(out: str, index: Index, tok, progress=no_progress) -> Audit:
    """Every document of `out` put to the index's rule; findings in (first step, doc_id) order."""
    m = read_manifest(out)
    files = [(i, s.file) for i, s in enumerate(m.steps)] + ([(-1, m.remainder.file)] if m.remainder else [])
    ids = [open_step(fs.join(out, f)).read_doc_ids() for _, f in progress(files, total=len(files), desc="audit ids")]
    uniq, counts = np.unique(np.concatenate(ids) if ids else np.zeros(0, np.uint64), return_counts=True)
    multi = dict(zip(uniq[counts > 1].tolist(), counts[counts > 1].tolist()))
    del ids, uniq, counts
    bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
    eos = m.tokenizer.eos_id if m.tokenizer.add_eos else None
    result = Audit()
    check = _Checker(index, tok, result, [s.name for s in m.sources])
    stash: dict[int, list] = {}
    for step, rel in progress(files, total=len(files), desc="audit"):
        with open_step(fs.join(out, rel)) as f:
            block = f.read()
        lens, dids, srcs = block.doc_lens.tolist(), block.doc_ids.tolist(), block.source.tolist()
        offsets = block.piece_offsets.tolist()
        for row in range(block.num_rows):
            at = 0
            for p in range(offsets[row], offsets[row + 1]):
                tokens = block.tokens[row, at:at + lens[p]]
                at += lens[p]
                result.pieces += 1
                d = dids[p]
                if d not in multi:
                    result.documents += 1
                    check.add(d, srcs[p], [(step, row)], tokens)
                    continue
                got = stash.setdefault(d, [])
                got.append(((step, row), tokens.copy()))
                if len(got) == multi[d]:
                    del stash[d]
                    result.documents += 1
                    pieces = [t for _, t in got]
                    order, known = arrange(pieces, bos, eos)
                    result.unordered += not known
                    check.add(d, srcs[p], [pl for pl, _ in got], np.concatenate([pieces[i] for i in order]),
                              () if known else junctions(pieces, bos, eos))
    check.flush()
    result.findings.sort(key=lambda f: (f.first_step if f.first_step >= 0 else 1 << 62, f.doc_id))
    return result


def render(result: Audit, index: Index, out: str) -> str:
    benches = index.summary()["benchmarks"]
    names = ", ".join(f"{b} ({v['texts']:,} texts)" for b, v in benches.items())
    lines = [f"audit {out}: {result.documents:,} documents ({result.pieces:,} pieces) against {names}; "
             f"{index.n}-grams, texts of {index.min_n}-{index.n - 1} words whole"]
    for f in result.findings:
        where = ", ".join(f"step {s} row {r}" if s >= 0 else f"remainder row {r}" for s, r in f.places)
        lines.append(f"  doc {f.doc_id:016x}  source {f.source}  {where}")
        lines.append(f"      {f.match.item.benchmark} {f.match.item.file} record {f.match.item.record}: {f.match.grams!r}")
    by_bench: dict[str, list[Finding]] = {}
    for f in result.findings:
        by_bench.setdefault(f.match.item.benchmark, []).append(f)
    for b, fs_ in sorted(by_bench.items()):
        steps = [f.first_step for f in fs_ if f.first_step >= 0]
        first = f"first seen at step {min(steps)}" if steps else "in the remainder only"
        lines.append(f"{b}: {len(fs_):,} contaminated documents; {first}")
    if result.unordered:
        lines.append(f"({result.unordered:,} documents have pieces whose order the output does not record: every "
                     "junction they could make was checked)")
    lines.append(f"{len(result.findings):,} contaminated documents" if result.findings else
                 f"clean: no document holds a benchmark's {index.n}-gram")
    return "\n".join(lines)
