"""Tokenizer engines: an exact fast BPE engine beside HF `tokenizers`, the reference.

The tokenizer bounds `prepare`. `fastokens` (Apache-2.0, a Rust BPE that reads the same
tokenizer.json) gave ids identical to `tokenizers` on every one of the shared corpus's 16,255
documents at ~9x the tokens per CPU-second (docs/prepare.md, "Tokens"). It is trusted only as far
as it is checked:

- `choose` (the launcher, before any work): `auto` takes the fast engine when it loads the
  tokenizer.json and gives the reference's ids on every PROBES text, else `hf` with the reason;
  `fast` insists (an error instead of the fallback); `hf` is the reference alone.
- the guard (`Guard`, in the job): a seeded sample of documents, 1 in 1,000 by default, is encoded
  by the reference too; a document whose ids differ is written with the reference's ids, counted
  and logged. `--verify-tokenizer all` makes a run a full equivalence check.

Both engines encode without special tokens (BOS/EOS are the job's policy, tokenize.py) and return
one flat uint32 array with offsets, so no per-token Python object is made.
"""

from __future__ import annotations

import array
import hashlib
from importlib import metadata
from typing import NamedTuple

import numpy as np

from steppack.shards.errors import ConfigError

ENGINES = ("auto", "fast", "hf")
FAST_LIBRARY = "fastokens"

PROBES = (
    "12345678901234567890 3.14159e-10 0.000 1,000,000 -42",
    "勾股定理：a²+b²=c²。设 x∈ℝ，则 ∀ε>0 ∃δ>0",
    "\\frac{a}{b} + \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2} \\quad \\mathbb{R}^{n\\times n}",
    "theorem foo (n : ℕ) : n + 0 = n := by simp [Nat.add_zero]  -- λ x ↦ ⟨x, rfl⟩",
    "a    b\n\n\n\t\tc  \r\n  d\u00a0e\u2003f   ",
    "   ",
    "\n",
    "",
    "<｜begin▁of▁sentence｜>text<｜end▁of▁sentence｜><｜begin▁of▁sentence｜>",
    "<|begin_of_sentence|> <｜begin of sentence｜> <｜end▁of",
    "a" * 20000,
    "1" * 5000,
    "x=" + "ab" * 3000 + " " + "Ω" * 2000,
    "😀👩‍🔬 e\u0301 n\u0303 ﬁ Ⅻ ①",
    "\x00\x01\x7f\u200b\ufeff",
    "مرحبا بالعالم שלום",
    "Let $f(x)=x^3-3x$. Then $f'(x)=3x^2-3=0$ gives $x=\\pm1$.\n\n**Answer:** $\\boxed{2}$",
)
"""Texts where tokenizers differ if anywhere: digit runs, CJK and full-width punctuation, LaTeX,
Lean, whitespace runs of every kind, empty input, special-token strings inside text (and near
misses), very long words, emoji with joiners, combining marks, ligatures, control characters,
right-to-left scripts. Lone surrogates never reach an engine: the readers reject them."""


class Encoded(NamedTuple):
    ids: np.ndarray
    """Every text's ids end to end (uint32)."""
    offsets: np.ndarray
    """len(texts) + 1 positions: text i is ids[offsets[i]:offsets[i+1]]."""

    def of(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


class HFEngine:
    """HF `tokenizers`: the reference."""

    name = "hf"
    library = "tokenizers"

    def __init__(self, json_text: str):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise ConfigError(f"cannot load the tokenizer: {exc}") from exc

    def encode(self, texts: list[str]) -> Encoded:
        encs = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        ids = array.array("I")  # extending an array.array from the id lists: a third of numpy's CPU
        offsets = np.zeros(len(encs) + 1, np.int64)
        for i, e in enumerate(encs):
            ids.extend(e.ids)
            offsets[i + 1] = len(ids)
        return Encoded(np.frombuffer(ids, np.uint32), offsets)


class FastEngine:
    """`fastokens`: encode_batch_flat gives the ids as one uint32 buffer, zero-copy into numpy."""

    name = "fast"
    library = FAST_LIBRARY

    def __init__(self, json_text: str):
        import fastokens

        self.tok = fastokens.Tokenizer.from_json_str(json_text)

    def encode(self, texts: list[str]) -> Encoded:
        ids, offsets = self.tok.encode_batch_flat(texts, add_special_tokens=False)
        return Encoded(np.frombuffer(ids, np.uint32), np.frombuffer(offsets, np.uint64).astype(np.int64))


def version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "not installed"


def record(name: str) -> dict:
    """What the manifest and report say of engine `name`."""
    library = FAST_LIBRARY if name == "fast" else HFEngine.library
    return {"name": name, "library": library, "version": version(library)}


def load(name: str, json_text: str):
    """The engine `name` ("fast" or "hf") over a tokenizer.json's text."""
    return FastEngine(json_text) if name == "fast" else HFEngine(json_text)


def probe(fast, ref) -> str | None:
    """None when `fast` gives `ref`'s ids on every probe text (one batch, and each text alone),
    else what differed."""
    for texts in [list(PROBES)] + [[t] for t in PROBES]:
        got, want = fast.encode(texts), ref.encode(texts)
        for i, t in enumerate(texts):
            if not np.array_equal(got.of(i), want.of(i)):
                return f"on the probe text {t[:40]!r}{'...' if len(t) > 40 else ''} its ids differ from tokenizers'"
    return None


def choose(asked: str, json_text: str) -> tuple[str, str | None]:
    """(the engine to run, a warning or None) for the setting `asked`; ConfigError when `fast` was
    asked for and cannot be had."""
    if asked not in ENGINES:
        raise ConfigError(f"tokenizer engine {asked!r} is not one of {', '.join(ENGINES)}")
    if asked == "hf":
        return "hf", None
    try:
        fast = FastEngine(json_text)
        problem = probe(fast, HFEngine(json_text))
    except ImportError as exc:
        problem = f"{FAST_LIBRARY} is not installed ({exc})"
    except Exception as exc:  # noqa: BLE001 - the engine refusing this tokenizer.json, in its own words
        problem = f"{FAST_LIBRARY} cannot load this tokenizer.json ({exc})"
    if problem is None:
        return "fast", None
    if asked == "fast":
        raise ConfigError(f"--tokenizer-engine fast: {problem}; use --tokenizer-engine auto or hf")
    return "hf", f"the fast tokenizer engine is not used: {problem}; tokenizing with HF tokenizers"


class Guard:
    """Which documents the reference encodes again: all, none, or a seeded 1 in N by doc_id (the
    same documents whatever the runner, worker count or bundling)."""

    def __init__(self, every: int):
        self.every = every

    @classmethod
    def parse(cls, text: str) -> "Guard":
        """`all`, `none` or `1/N`."""
        t = str(text).strip().lower()
        if t in ("all", "1/1"):
            return cls(1)
        if t == "none":
            return cls(0)
        if t.startswith("1/") and t[2:].isdigit() and int(t[2:]) > 0:
            return cls(int(t[2:]))
        raise ConfigError(f"--verify-tokenizer {text!r}: give all, none or 1/N (e.g. 1/1000)")

    def picks(self, did: int) -> bool:
        if self.every <= 1:
            return self.every == 1
        h = hashlib.blake2b(did.to_bytes(8, "little"), digest_size=8, person=b"steppack-guard")
        return int.from_bytes(h.digest(), "little") % self.every == 0
