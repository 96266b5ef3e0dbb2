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
tokens (every preset) the first and last pieces are known; a document in 4 or more pieces has
middle pieces whose order is not recorded (copies of a piece, from a repeated mixture source,
count once). Each of its pieces is then checked on its own, and every pair of them that could be
neighbours across their junction (the WINDOW tokens either side): a gram across a real junction
is found unless WINDOW tokens hold fewer than its words on one side; one made up by a junction
that is not real could be found (counted in the summary as documents with an unrecorded order).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np

from steppack.shards import fs, open_step
from steppack.shards.errors import InputError
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
    """The index of benchmark texts (config.SourceConfig each), read as prepare reads them; an
    InputError when a benchmark gives no text (prepare stops on that too)."""
    # discover reads only these three settings of a job's config.
    cfg = types.SimpleNamespace(unit_mb=64.0, max_doc_bytes=max_doc_bytes, sources=benchmarks)
    units, _ = discover(cfg, benchmarks, "benchmark")
    index = Index([read_part(u, ngram, min_ngram) for u in units], ngram, min_ngram)
    for b, v in index.summary()["benchmarks"].items():
        if not v["texts"]:
            raise InputError(f"benchmark {b!r} gave no text to check against ({v['unreadable']:,} records could not "
                             "be read): check its path and --text")
    return index


class _Checker:
    """Documents queued for one decode_batch and one match each. A document is one or more texts
    to check, each with whether its start and its end may be cut in the middle of a word."""

    def __init__(self, index: Index, tok, audit: Audit, sources: list[str]):
        self.index, self.tok, self.audit, self.sources = index, tok, audit, sources
        self.docs: list[tuple[int, int, list]] = []  # (doc_id, source, places)
        self.texts: list[list[int]] = []
        self.owner: list[int] = []
        self.cut: tuple[list[bool], list[bool]] = ([], [])

    def add(self, doc_id: int, source: int, places: list, parts) -> None:
        """parts: (tokens, start cut, end cut) of each text of the document to check."""
        self.docs.append((doc_id, source, places))
        for tokens, cut_start, cut_end in parts:
            self.texts.append(tokens.tolist())
            self.owner.append(len(self.docs) - 1)
            self.cut[0].append(cut_start)
            self.cut[1].append(cut_end)
        if len(self.docs) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.docs:
            return
        texts = self.tok.decode_batch(self.texts, skip_special_tokens=True)
        found: dict[int, Match] = {}
        for k, m in sorted(self.index.match_texts(texts, self.cut).items()):
            found.setdefault(self.owner[k], m)
        for d, m in sorted(found.items()):
            doc_id, source, places = self.docs[d]
            self.audit.findings.append(Finding(doc_id, self.sources[source], sorted(places), m))
        self.docs, self.texts, self.owner, self.cut = [], [], [], ([], [])


def arrange(pieces: list[np.ndarray], bos: int | None, eos: int | None) -> tuple[list[int], bool]:
    """An order of a document's pieces (indices) and whether it is the recorded one: the piece
    that starts with BOS first, the one that ends with EOS last, any single other between."""
    heads = [i for i, p in enumerate(pieces) if bos is not None and len(p) and p[0] == bos]
    tails = [i for i, p in enumerate(pieces) if eos is not None and len(p) and p[-1] == eos and i not in heads]
    middles = [i for i in range(len(pieces)) if i not in heads and i not in tails]
    known = len(heads) <= 1 and len(tails) <= 1 and len(middles) <= 1 and \
        not (len(pieces) > 1 and any(eos is not None and pieces[i][-1] == eos for i in heads))
    return heads + middles + tails, known


def texts_of(pieces: list[np.ndarray], bos: int | None, eos: int | None) -> tuple[list, bool]:
    """The texts to check for a document of these pieces (tokens, start cut, end cut), and whether
    their order is the recorded one. Copies (a repeated mixture source) count once. In the recorded
    order: the pieces joined. Otherwise each piece on its own (its edges cut unless BOS/EOS says they
    are the document's) and WINDOW tokens either side of every junction two pieces could make."""
    unique = list({p.tobytes(): p for p in pieces}.values())
    order, known = arrange(unique, bos, eos)
    if known:
        return [(np.concatenate([unique[i] for i in order]), False, False)], True
    starts = [bos is not None and p[0] == bos for p in unique]
    ends = [eos is not None and p[-1] == eos for p in unique]
    out = [(p, not s, not e) for p, s, e in zip(unique, starts, ends)]
    for a, pa in enumerate(unique):
        for b, pb in enumerate(unique):
            if a != b and not ends[a] and not starts[b]:
                out.append((np.concatenate([pa[-WINDOW:], pb[:WINDOW]]), True, True))
    return out, False


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
                    check.add(d, srcs[p], [(step, row)], [(tokens, False, False)])
                    continue
                got = stash.setdefault(d, [])
                got.append(((step, row), tokens.copy()))
                if len(got) == multi[d]:
                    del stash[d]
                    result.documents += 1
                    parts, known = texts_of([t for _, t in got], bos, eos)
                    result.unordered += not known
                    check.add(d, srcs[p], [pl for pl, _ in got], parts)
    check.flush()
    result.findings.sort(key=lambda f: (f.first_step if f.first_step >= 0 else 1 << 62, f.doc_id))
    return result


def render(result: Audit, index: Index, out: str) -> str:
    benches = index.summary()["benchmarks"]
    names = ", ".join(f"{b} ({v['texts']:,} texts)" for b, v in benches.items())
    lines = [f"audit {out}: {result.documents:,} documents ({result.pieces:,} pieces) against {names}; "
             f"{index.n}-grams, texts of {index.min_n}-{index.n - 1} words whole"]
    for b, v in benches.items():
        if v["unreadable"]:
            lines.append(f"warning: {v['unreadable']:,} records of {b} could not be read (a missing field of --text?)")
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
