"""DeepSeekMath's decontamination rule, as an index of benchmark n-grams: pure logic.

A document is contaminated when any of its n-grams (n = `ngram`, 10 by default) equals an n-gram
of a benchmark text, or when it holds the whole word sequence of a benchmark text of `min_ngram`
.. n-1 words (3 .. 9: matched exactly, as a sequence of consecutive words). Benchmark texts of
fewer than `min_ngram` words are ignored (and counted): a two-word answer ("x = 2") would match
most of a corpus. Words and hashes: grams.py.

The index is every benchmark gram's 64-bit hash, sorted, with the benchmark item it came from
(12 bytes a gram), and a bitmap of 16 bits a gram that answers most lookups without a search.
GSM8K test + MATH test (6,319 items) give 800,294 grams: 11.2 MiB. Two documents' grams are taken
as equal when their hashes are (64-bit: for 10^10 document grams against 10^6 benchmark grams
the expected number of false matches is ~5e-4).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import grams
from .grams import Words

ITEM_BATCH = 1024  # benchmark texts hashed per numpy pass


@dataclass(frozen=True)
class Item:
    """One benchmark text: which benchmark, file (its key) and record."""

    benchmark: str
    file: str
    record: int


@dataclass(frozen=True)
class Match:
    """The first (leftmost) benchmark gram in a document."""

    item: Item
    grams: str
    """The matching words as text (normalised, one space between them)."""
    n: int

    def to_dict(self) -> dict:
        return {"benchmark": self.item.benchmark, "benchmark_file": self.item.file,
                "benchmark_record": self.item.record, "grams": self.grams, "ngram": self.n}

    def detail(self) -> str:
        return (f"{self.n}-gram {self.grams!r} of benchmark {self.item.benchmark!r} "
                f"({self.item.file} record {self.item.record})")


@dataclass
class Part:
    """The grams of some benchmark texts (one read unit's), before they join the index."""

    items: list[Item]
    hashes: np.ndarray
    item: np.ndarray
    """Index into `items` of each hash."""
    short: dict[str, int]
    """Texts per benchmark ignored for having fewer than min_ngram words."""
    texts: dict[str, int]
    """Texts read per benchmark (the short ones included)."""
    lengths: frozenset = frozenset()
    """Word counts (min_ngram .. n-1) of the texts matched as whole sequences."""
    unreadable: dict = dataclasses.field(default_factory=dict)
    """Records per benchmark that could not be read (a Reject of sources.read_unit)."""


def item_grams(items: list[Item], texts: list[str], n: int, min_n: int) -> Part:
    """The grams of benchmark texts: all n-grams of a text of n words or more; the whole sequence
    of a text of min_n .. n-1 words; none of a shorter one (counted in `short`)."""
    hashes, owner, short, count, lengths = [], [], {}, {}, set()
    for lo in range(0, len(texts), ITEM_BATCH):
        w = grams.words(texts[lo:lo + ITEM_BATCH])
        per_doc = w.count()
        h, at = grams.gram_hashes(w, n)
        hashes.append(h)
        owner.append(w.doc[at] + lo)
        first = np.concatenate(([0], np.cumsum(per_doc)[:-1]))
        for k in sorted(set(per_doc[(per_doc >= min_n) & (per_doc < n)].tolist())):
            h, at = grams.gram_hashes(w, k)
            whole = per_doc[w.doc[at]] == k  # the one k-gram of a k-word text is its first
            whole &= at == first[w.doc[at]]
            hashes.append(h[whole])
            owner.append(w.doc[at[whole]] + lo)
            lengths.add(k)
        for i, c in enumerate(per_doc.tolist()):
            b = items[lo + i].benchmark
            count[b] = count.get(b, 0) + 1
            if c < min_n:
                short[b] = short.get(b, 0) + 1
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return Part(items, cat(hashes, np.uint64), cat(owner, np.int64), short, count, frozenset(lengths))


def read_part(unit, n: int, min_n: int) -> Part:
    """The grams of one read unit of a benchmark (sources.Unit), read as a source's are."""
    from .sources import Reject, read_unit

    items, texts, bad = [], [], 0
    for got in read_unit(unit):
        if isinstance(got, Reject):
            bad += 1
            continue
        items.append(Item(unit.source_name, unit.key, got[0]))
        texts.append(got[1])
    part = item_grams(items, texts, n, min_n)
    if bad:
        part.unreadable = {unit.source_name: bad}
    part.texts = part.texts or {unit.source_name: 0}  # a unit without a readable text still names its benchmark
    return part


class Index:
    """Every benchmark gram, for `match`. Built from Parts in any order: the same index results."""

    def __init__(self, parts: list[Part], n: int, min_n: int):
        self.n, self.min_n = n, min_n
        items = sorted({it for p in parts for it in p.items}, key=lambda it: (it.benchmark, it.file, it.record))
        number = {it: i for i, it in enumerate(items)}
        self.items = items
        keys = [p.hashes for p in parts]
        owners = [np.array([number[it] for it in p.items], np.int64)[p.item] if len(p.item) else p.item
                  for p in parts]
        keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        owners = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        order = np.lexsort((owners, keys))  # by hash, then item: a gram's first item is the smallest
        self.keys, self.owner = keys[order], owners[order].astype(np.uint32)
        self.lengths = tuple(sorted(set().union(*(p.lengths for p in parts)) if parts else ()))
        self.texts = _add(p.texts for p in parts)
        self.short = _add(p.short for p in parts)
        self.unreadable = _add(p.unreadable for p in parts)
        bits = max(16, int(np.ceil(np.log2(max(1, len(self.keys)) * 16))))
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << (bits - 3), np.uint8)
        top = self.keys >> self.shift
        np.bitwise_or.at(self.bitmap, (top >> np.uint64(3)).astype(np.int64),
                         (np.uint8(1) << (top & np.uint64(7)).astype(np.uint8)))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.owner.nbytes + self.bitmap.nbytes

    def _lookup(self, h: np.ndarray) -> np.ndarray:
        """Index into keys of each hash, or -1."""
        top = h >> self.shift
        maybe = (self.bitmap[(top >> np.uint64(3)).astype(np.int64)] >> (top & np.uint64(7)).astype(np.uint8)) & 1
        out = np.full(len(h), -1, np.int64)
        cand = np.flatnonzero(maybe)
        if cand.size and self.keys.size:
            # Sorted first: numpy's search then walks the keys in order (~70 ns a lookup against
            # ~380 ns for hashes in random order, at 0.8M keys), and every gram of a contaminated
            # document is a candidate.
            cand = cand[np.argsort(h[cand])]
            at = np.minimum(np.searchsorted(self.keys, h[cand]), len(self.keys) - 1)
            hit = self.keys[at] == h[cand]
            out[cand[hit]] = at[hit]
        return out

    def match(self, w: Words, trim=None) -> dict[int, Match]:
        """{document of the batch: its leftmost match} for the contaminated documents of `w`.
        trim: (start, end), a bool per document: grams holding its first (last) word do not count
        (a text cut out of a longer one may begin or end in the middle of a word)."""
        if trim is not None:
            first = np.searchsorted(w.doc, w.doc, side="left")
            last = np.searchsorted(w.doc, w.doc, side="right") - 1
            cut_start, cut_end = (np.asarray(t, bool) for t in trim)
        hits = []  # (first word, -n, key index) of every matching gram
        for k in (self.n, *self.lengths):
            h, at = grams.gram_hashes(w, k)
            found = self._lookup(h)
            if trim is not None:
                d = w.doc[at]
                found[(cut_start[d] & (at == first[at])) | (cut_end[d] & (at + k - 1 == last[at]))] = -1
            hit = np.flatnonzero(found >= 0)
            hits.append((at[hit], np.full(hit.size, -k), found[hit]))
        at, negk, key = (np.concatenate(c) for c in zip(*hits))
        order = np.lexsort((key, negk, at))  # per document: leftmost, then longest, then first item
        at, negk, key = at[order], negk[order], key[order]
        doc = w.doc[at]  # sorted too: a batch's words are in document order
        firsts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]]) if doc.size else doc
        return {int(doc[i]): Match(self.items[int(self.owner[key[i]])], w.gram_text(int(at[i]), -int(negk[i])),
                                   -int(negk[i])) for i in firsts.tolist()}

    def match_texts(self, texts: list[str], trim=None) -> dict[int, Match]:
        return self.match(grams.words(texts), trim) if self.keys.size and texts else {}

    def summary(self) -> dict:
        """What report.json records of the index."""
        return {"ngram": self.n, "min_ngram": self.min_n, "grams": int(len(self.keys)), "bytes": self.nbytes,
                "benchmarks": {b: {"texts": t, "ignored_short": self.short.get(b, 0),
                                   "unreadable": self.unreadable.get(b, 0)} for b, t in self.texts.items()}}


def _add(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))
