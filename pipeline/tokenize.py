"""Tokenizing documents: the tokenizer, its BOS/EOS policy, and long documents in pieces.

`DocTokenizer` is built once per worker (in a DoFn's `setup()`); `encode(texts)` returns one
uint32 array per document: BOS (if the policy adds it), the text's ids, EOS (likewise). A text
longer than `piece_chars` is encoded in pieces cut at a newline (else a space) so no single call
sees the whole document; byte-level BPE decodes the joined ids back to the exact text either way.
"""

from __future__ import annotations

import array
import concurrent.futures
import hashlib
import os

import numpy as np

from shards import TokenizerInfo, dtype_for_vocab
from shards import tokenizer as shtok
from shards.errors import ConfigError

from .config import JobConfig, Specials
from .cores import PARALLELISM, CoreWatch


def _token_id(tok, token: str, what: str, name: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise ConfigError(f"{what} token {token!r} is not in tokenizer {name}; check --{what.lower()}-token")
    return i


class TokenizerFacts:
    """What `tokenizer_info` asks of a tokenizer, found by another process that loaded it (the
    zygote, warm.py), so that the launcher need not load it too (~0.4 s on its critical path)."""

    def __init__(self, vocab_size: int, ids: dict[str, int | None]):
        self.vocab_size, self.ids = vocab_size, ids

    @classmethod
    def of(cls, tok, tokens: list[str]) -> "TokenizerFacts":
        return cls(tok.get_vocab_size(with_added_tokens=True), {t: tok.token_to_id(t) for t in tokens})

    def token_to_id(self, token: str) -> int | None:
        return self.ids[token]

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.vocab_size


def tokenizer_info(cfg: JobConfig, tok=None) -> TokenizerInfo:
    """The manifest's tokenizer identity for the job. `tok` is the loaded tokenizer or its
    TokenizerFacts; without it the tokenizer is loaded here (InputError if it can't be)."""
    path = shtok.resolve_path(cfg.tokenizer)
    tok = tok if tok is not None else shtok.load(cfg.tokenizer)
    preset_bos, preset_eos = shtok.special_ids(cfg.tokenizer, tok)
    bos = _token_id(tok, cfg.bos_token, "BOS", cfg.tokenizer) if cfg.bos_token else preset_bos
    eos = _token_id(tok, cfg.eos_token, "EOS", cfg.tokenizer) if cfg.eos_token else preset_eos
    specials = cfg.specials or (Specials.BOS_EOS if cfg.tokenizer in shtok.PRESETS else
                                Specials.EOS if eos is not None else Specials.NONE)
    add_bos = specials is Specials.BOS_EOS
    add_eos = specials in (Specials.BOS_EOS, Specials.EOS)
    if add_bos and bos is None:
        raise ConfigError(f"--specials {specials.value} needs a BOS token: pass --bos-token for {cfg.tokenizer}")
    if add_eos and eos is None:
        raise ConfigError(f"--specials {specials.value} needs an EOS token: pass --eos-token for {cfg.tokenizer}")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return TokenizerInfo(
        name=cfg.tokenizer if cfg.tokenizer in shtok.PRESETS else path,
        sha256=shtok.file_sha256(path), vocab_size=vocab, bos_id=bos, eos_id=eos,
        pad_id=eos if eos is not None else 0, add_bos=add_bos, add_eos=add_eos,
    )


def shipped_json(cfg: JobConfig) -> str | None:
    """The tokenizer.json text to ship with the job when it is a path, not a preset.

    A preset comes with its package (a dependency of steppack, installed on every worker); a
    path on the launching machine does not exist on a Dataflow worker, so its JSON (a few MB)
    travels inside the TokenizeDocs step instead.
    """
    if cfg.tokenizer in shtok.PRESETS:
        return None
    with open(shtok.resolve_path(cfg.tokenizer), "rb") as f:
        return f.read().decode("utf-8")


def split_text(text: str, piece_chars: int) -> list[str]:
    """Cut `text` into pieces of at most `piece_chars` characters, at a newline or space when one
    lies in the second half of the window."""
    if len(text) <= piece_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        end = start + piece_chars
        cut = text.rfind("\n", start + piece_chars // 2, end)
        if cut < 0:
            cut = text.rfind(" ", start + piece_chars // 2, end)
        cut = end if cut < 0 else cut + 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


RAYON_THREADS = "2"
"""The tokenizer's threads per worker process (RAYON_NUM_THREADS, unless set); both run only
while a core is spare, else one (cores.py: one process per core, each with two threads busy,
took 9% longer than one thread each)."""

_LOADED: dict[str, object] = {}
"""Tokenizers this process has loaded, by the sha256 of their JSON: what a zygote preloads."""


def _by_content(json_bytes: bytes, where: str):
    sha = hashlib.sha256(json_bytes).hexdigest()
    if sha not in _LOADED:
        from tokenizers import Tokenizer

        try:
            _LOADED[sha] = Tokenizer.from_str(json_bytes.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise ConfigError(f"cannot load tokenizer {where}: {exc}") from exc
    return _LOADED[sha], sha


def preload(name: str):
    """Load tokenizer `name` (preset or path) into this process ahead of DocTokenizer and return
    it; None if it cannot be loaded (the launcher's own checks report why)."""
    try:
        with open(shtok.resolve_path(name), "rb") as f:
            return _by_content(f.read(), name)[0]
    except Exception:  # noqa: BLE001
        return None


class DocTokenizer:
    """One per worker process: encodes batches of documents to uint32 arrays with BOS/EOS."""

    def __init__(self, cfg: JobConfig, info: TokenizerInfo, json_text: str | None = None):
        os.environ.setdefault("RAYON_NUM_THREADS", RAYON_THREADS)
        # Threads by spare cores, unless the user chose with TOKENIZERS_PARALLELISM.
        self.cores = None if PARALLELISM in os.environ else CoreWatch()
        if json_text is not None:  # a path tokenizer shipped inside the job (see shipped_json)
            self.tok, got = _by_content(json_text.encode("utf-8"), "shipped with the job")
        else:
            with open(shtok.resolve_path(cfg.tokenizer), "rb") as f:
                self.tok, got = _by_content(f.read(), cfg.tokenizer)
        if got != info.sha256:
            raise ConfigError(f"tokenizer {cfg.tokenizer} on this worker has sha256 {got}, the job was "
                              f"planned with {info.sha256}; install the same tokenizer everywhere")
        self.dtype = np.dtype(dtype_for_vocab(info.vocab_size))
        self.typecode = next(c for c in "HIL" if array.array(c).itemsize == self.dtype.itemsize)
        self.head = [info.bos_id] if info.add_bos else []
        self.tail = [info.eos_id] if info.add_eos else []
        self.piece_chars = cfg.piece_chars
        # The tokenizer's own thread: see encode.
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steppack-tokenizer")

    def close(self) -> None:
        self.thread.shutdown(wait=False)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One array per text: head, the ids of its pieces in order, tail. Built in an
        array.array and viewed by numpy: a third of the CPU of numpy arrays from the id lists."""
        limit = self.piece_chars
        if all(len(t) <= limit for t in texts):
            pieces, owner = texts, range(len(texts))
        else:
            pieces, owner = [], []
            for i, t in enumerate(texts):
                for p in split_text(t, limit):
                    pieces.append(p)
                    owner.append(i)
        if self.cores:
            self.cores.apply()
        # On a thread of its own, not the caller's: glibc gives each thread its own malloc arena,
        # and the tokenizer (a third of its time in malloc/free) then allocates in a heap that
        # holds only its own short-lived blocks, not the texts, arrays and Beam objects the
        # calling thread keeps alive between batches. x4 bench jobs in pairs took a median 2.5%
        # less CPU (5 of 6 pairs); perf showed glibc's chunk unlinking and consolidation down from
        # 7.1% to 4.8% of the job, as in the raw limit, whose rayon threads are not the caller
        # either (docs/benchmarks.md). With two threads, rayon's threads do the work and this one waits.
        encs = self.thread.submit(self.tok.encode_batch_fast, pieces, add_special_tokens=False).result()
        out = [array.array(self.typecode, self.head) for _ in texts]
        for i, e in zip(owner, encs):
            out[i].extend(e.ids)
        for a in out:
            a.extend(self.tail)
        return [np.frombuffer(a, self.dtype) for a in out]
