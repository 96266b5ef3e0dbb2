"""Word n-grams of text, for decontamination (decontaminate.py) and exact dedup: pure numpy.

Normalisation: Unicode NFKC (full-width digits, ligatures and compatibility forms become their
plain letters), then case folding. A *word* is a run of letters, digits and combining marks
(Unicode categories L, N, M); everything else separates words, so punctuation, LaTeX markup and
spacing never decide a match. Each CJK character (Han, kana, bopomofo) is a word of its own:
Chinese and Japanese are written without spaces, and a CJK benchmark is matched by characters.

A batch of documents is handled at once, as one array of code points, so that the cost per
document is a few numpy passes rather than Python work per word. Hashes are 64-bit and the same on
every machine and numpy version (written out, as plan.permutation is): a word's hash mixes its
code points with their positions; an n-gram's hash is a polynomial of its words' hashes, mixed
again with n, so grams of different lengths never share a hash by construction.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from dataclasses import dataclass

import numpy as np

U64 = np.uint64
SEP = "\0"  # between the documents of a batch: not a word character, so no word spans two documents

_ASCII_WORD = np.array([chr(c).isalnum() for c in range(128)], dtype=np.int8)
_CJK_RANGES = ((0x2E80, 0x2FDF), (0x3040, 0x30FF), (0x3100, 0x312F), (0x3190, 0x31FF), (0x3400, 0x4DBF),
               (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))  # to CJK extension H
OTHER, WORD, CJK = 0, 1, 2
_B = U64(0x9E3779B97F4A7C15)
_INV_B = U64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))


@functools.lru_cache(maxsize=1 << 16)
def char_info(cp: int) -> tuple[int, int]:
    """(class, case-folded code point) of a code point >= 128; the folded code point is -1 where
    folding gives several characters (German sharp s -> "ss")."""
    c = chr(cp)
    folded = c.casefold()
    fold = ord(folded) if len(folded) == 1 else -1
    cat = unicodedata.category(c)[0]
    if cat in "LN" and any(lo <= cp <= hi for lo, hi in _CJK_RANGES):  # not the blocks' punctuation (・)
        return CJK, fold
    return (WORD if cat in "LNM" else OTHER), fold


def nfkc(text: str) -> str:
    """Unicode NFKC (`is_normalized` first: most text already is, and checking is cheaper)."""
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def normalise(text: str) -> str:
    """NFKC, then case folding: what `words` reads, as one string."""
    return nfkc(text).casefold()


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64, wrapping)."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


@dataclass
class Words:
    """The words of a batch of documents: `text` is the documents (NFKC) joined by SEP; word w is
    text[starts[w]:ends[w]] case-folded, of document doc[w], with hash hashes[w]."""

    text: str
    starts: np.ndarray
    ends: np.ndarray
    doc: np.ndarray
    hashes: np.ndarray
    docs: int

    def gram_text(self, w: int, n: int) -> str:
        """Words w .. w+n-1 as text, one space between them."""
        spans = zip(self.starts[w:w + n].tolist(), self.ends[w:w + n].tolist())
        return " ".join(self.text[s:e] for s, e in spans).casefold()

    def count(self) -> np.ndarray:
        """Words per document."""
        return np.bincount(self.doc, minlength=self.docs)


def words(texts: list[str]) -> Words:
    """The words of each text (normalised here).

    Case folding is done on the code points (ASCII arithmetically, others through a table of the
    batch's distinct characters): str.casefold took ~25 ms a MB of non-ASCII text. A batch with a
    character that folds to several ("ß" -> "ss") is folded as a string instead."""
    norm = [nfkc(t) for t in texts]
    text = SEP.join(norm)
    cp, cls = _classes(text)
    if cp is None:  # a character folds to several: fold the strings instead
        norm = [t.casefold() for t in norm]
        text = SEP.join(norm)
        cp, cls = _classes(text)
    lens = np.fromiter((len(t) + 1 for t in norm), np.int64, len(norm))
    doc_starts = np.concatenate(([0], np.cumsum(lens)[:-1])) if len(norm) else np.zeros(0, np.int64)
    is_word = cls > 0
    cjk = cls == CJK
    # A word starts at a word character after a non-word one, and at or after every CJK character.
    before = np.zeros_like(is_word)
    before[1:] = is_word[:-1] & ~cjk[:-1]
    start = is_word & (~before | cjk)
    starts = np.flatnonzero(start)
    after = np.ones_like(is_word)
    after[:-1] = ~is_word[1:] | start[1:]
    ends = np.flatnonzero(is_word & after) + 1
    # A word's hash: the polynomial sum(cp[i] * B**(end-1-i)) of its code points, from prefix sums
    # of cp[i] * B**-i (B odd, so invertible mod 2**64), then mixed with its length.
    with np.errstate(over="ignore"):
        n = cp.size
        prefix = np.zeros(n + 1, U64)
        if n:
            np.cumsum(cp.astype(U64) * _powers(_INV_B, n) * _B, out=prefix[1:])
            power = _powers(_B, n)
            span = prefix[ends] - prefix[starts]
            hashes = _mix(span * power[ends - 1] * _INV_B + (ends - starts).astype(U64))
        else:
            hashes = np.zeros(0, U64)
    doc = (np.searchsorted(doc_starts, starts, side="right") - 1).astype(np.int32)
    return Words(text, starts, ends, doc, hashes, len(norm))


def _classes(text: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(case-folded code points, class of each) of a text; (None, None) when one of its characters
    folds to several (char_info)."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    cp = cp + ((cp >= 65) & (cp <= 90)).astype(np.uint32) * 32
    cls = np.take(_ASCII_WORD, cp, mode="clip")  # code points >= 128 read as 127 (DEL), set below
    if not text.isascii():
        high = cp >= 128
        uniq, inv = np.unique(cp[high], return_inverse=True)
        info = np.array([char_info(c) for c in uniq.tolist()], np.int64).reshape(-1, 2)
        if (info[:, 1] < 0).any():
            return None, None
        cls[high] = info[inv, 0]
        cp[high] = info[inv, 1]
    return cp, cls


_TABLE = 1 << 20


@functools.cache
def _power_table(base: np.uint64) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.cumprod(np.full(_TABLE, base, U64))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**1 .. base**n (mod 2**64), from a table of the first 2**20 powers made once per process."""
    table = _power_table(base)
    if n <= _TABLE:
        return table[:n]
    out = np.empty(n, U64)
    with np.errstate(over="ignore"):
        factor, step = U64(1), table[-1]
        for lo in range(0, n, _TABLE):
            m = min(_TABLE, n - lo)
            np.multiply(table[:m], factor, out=out[lo:lo + m])
            factor = factor * step
    return out


_POLY = U64(0x100000001B3)


def gram_hashes(w: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, first word) of every n-gram that lies inside one document."""
    m = len(w.hashes) - n + 1
    if m <= 0:
        return np.zeros(0, U64), np.zeros(0, np.int64)
    with np.errstate(over="ignore"):
        h = w.hashes[:m].copy()
        for j in range(1, n):
            h = h * _POLY + w.hashes[j:j + m]
        h = _mix(h + U64(n) * U64(0xD6E8FEB86659FD93))
    at = np.flatnonzero(w.doc[:m] == w.doc[n - 1:])
    return h[at], at


def dedup_key(text: str) -> bytes:
    """128-bit hash of a document's normalised text with its whitespace collapsed: two documents
    with the same key are duplicates for `dedup = "exact"` (punctuation and markup still count)."""
    return hashlib.blake2b(" ".join(normalise(text).split()).encode("utf-8", "surrogatepass"),
                           digest_size=16, person=b"steppack-dedup").digest()
