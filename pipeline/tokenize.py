"""Tokenizing documents: the tokenizer, its BOS/EOS policy, and long documents in pieces.

`DocTokenizer` is built once per worker (in a DoFn's `setup()`); `encode(texts)` returns one
uint32 array per document: BOS (if the policy adds it), the text's ids, EOS (likewise). A text
longer than `piece_chars` is encoded in pieces cut at a newline (else a space) so no single call
sees the whole document; byte-level BPE decodes the joined ids back to the exact text either way.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from steppack.shards import TokenizerInfo, dtype_for_vocab
from steppack.shards import tokenizer as shtok
from steppack.shards.errors import ConfigError

from . import engines
from .config import JobConfig, Specials


def _token_id(tok, token: str, what: str, name: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise ConfigError(f"{what} token {token!r} is not in tokenizer {name}; check --{what.lower()}-token")
    return i


def tokenizer_info(cfg: JobConfig) -> TokenizerInfo:
    """The manifest's tokenizer identity for the job (InputError if the tokenizer can't be loaded)."""
    path = shtok.resolve_path(cfg.tokenizer)
    tok = shtok.load(cfg.tokenizer)
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


THREADS_ENV = ("RAYON_NUM_THREADS", "FASTOKENS_BPE_THREADS")
"""The engines' thread-count settings, which the launcher sets for the local workers (run.py)."""


def tokenizer_json(cfg: JobConfig, json_text: str | None = None) -> str:
    """The tokenizer.json text: shipped with the job (a path tokenizer), or the preset's file."""
    if json_text is not None:
        return json_text
    with open(shtok.resolve_path(cfg.tokenizer), "rb") as f:
        return f.read().decode("utf-8")


class DocTokenizer:
    """One per worker process: encodes batches of documents to uint32 arrays with BOS/EOS, with
    the engine the launcher chose, and the reference on the documents the guard picks."""

    def __init__(self, cfg: JobConfig, info: TokenizerInfo, json_text: str | None = None, engine: str = "hf"):
        text = tokenizer_json(cfg, json_text)
        got = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if got != info.sha256:
            raise ConfigError(f"tokenizer {cfg.tokenizer} on this worker has sha256 {got}, the job was "
                              f"planned with {info.sha256}; install the same tokenizer everywhere")
        # One engine thread per worker process unless the launcher or the user said otherwise:
        # Dataflow runs one SDK process per vCPU, and both engines would start one thread per CPU.
        for name in THREADS_ENV:
            os.environ.setdefault(name, "1")
        self.engine = engines.load(engine, text)
        self.reference = self.engine if engine == "hf" else engines.HFEngine(text)
        self.dtype = np.dtype(dtype_for_vocab(info.vocab_size))
        self.head = np.array([info.bos_id] if info.add_bos else [], self.dtype)
        self.tail = np.array([info.eos_id] if info.add_eos else [], self.dtype)
        self.piece_chars = cfg.piece_chars

    def encode(self, texts: list[str], check: list[bool] | None = None) -> tuple[list[np.ndarray], list[int]]:
        """One array per text (head, the ids of its pieces in order, tail), and the indices of the
        texts in `check` whose engine ids differed from the reference's: those arrays hold the
        reference's ids."""
        pieces, first = self._pieces(texts)
        enc = self.engine.encode(pieces)
        out = [self._doc(enc, first[i], first[i + 1]) for i in range(len(texts))]
        picked = [i for i, c in enumerate(check or ()) if c] if self.reference is not self.engine else []
        differed = []
        if picked:
            sub, sub_first = self._pieces([texts[i] for i in picked])
            ref = self.reference.encode(sub)
            for k, i in enumerate(picked):
                want = self._doc(ref, sub_first[k], sub_first[k + 1])
                if not np.array_equal(out[i], want):
                    out[i] = want
                    differed.append(i)
        return out, differed

    def _pieces(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Texts cut to at most piece_chars characters, and where each text's pieces start."""
        first = [0]
        if all(len(t) <= self.piece_chars for t in texts):
            return texts, list(range(len(texts) + 1))
        pieces: list[str] = []
        for t in texts:
            pieces += split_text(t, self.piece_chars)
            first.append(len(pieces))
        return pieces, first

    def _doc(self, enc: engines.Encoded, lo: int, hi: int) -> np.ndarray:
        # A document's pieces are consecutive, so its ids are one slice of the batch's.
        ids = enc.ids[enc.offsets[lo]:enc.offsets[hi]]
        return np.concatenate([self.head, ids.astype(self.dtype, copy=False), self.tail])
