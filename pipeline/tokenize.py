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

from shards import TokenizerInfo, dtype_for_vocab
from shards import tokenizer as shtok
from shards.errors import ConfigError

from .config import JobConfig, Specials


def _token_id(tok, token: str, what: str, name: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise ConfigError(f"{what} token {token!r} is not in tokenizer {name}; check --{what.lower()}-token")
    return i


def tokenizer_info(cfg: JobConfig, tok=None) -> TokenizerInfo:
    """The manifest's tokenizer identity for the job (loads the tokenizer: InputError if it can't)."""
    path = shtok.resolve_path(cfg.tokenizer)
    tok = tok or shtok.load(cfg.tokenizer)
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


class DocTokenizer:
    """One per worker process: encodes batches of documents to uint32 arrays with BOS/EOS."""

    def __init__(self, cfg: JobConfig, info: TokenizerInfo, json_text: str | None = None):
        # One tokenizer thread per worker process: the job runs one process per core, and two
        # single-threaded processes outrun one process with two threads (no rayon hand-offs).
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
        if json_text is not None:  # a path tokenizer shipped inside the job (see shipped_json)
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_str(json_text)
            got = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        else:
            self.tok = shtok.load(cfg.tokenizer)
            got = shtok.file_sha256(shtok.resolve_path(cfg.tokenizer))
        if got != info.sha256:
            raise ConfigError(f"tokenizer {cfg.tokenizer} on this worker has sha256 {got}, the job was "
                              f"planned with {info.sha256}; install the same tokenizer everywhere")
        self.dtype = np.dtype(dtype_for_vocab(info.vocab_size))
        self.head = np.array([info.bos_id] if info.add_bos else [], self.dtype)
        self.tail = np.array([info.eos_id] if info.add_eos else [], self.dtype)
        self.piece_chars = cfg.piece_chars

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        pieces, owner = [], []
        for i, t in enumerate(texts):
            for p in split_text(t, self.piece_chars):
                pieces.append(p)
                owner.append(i)
        encs = self.tok.encode_batch_fast(pieces, add_special_tokens=False)
        parts: list[list[np.ndarray]] = [[self.head] for _ in texts]
        for i, e in zip(owner, encs):
            parts[i].append(np.array(e.ids, dtype=self.dtype))
        for p in parts:
            p.append(self.tail)
        return [np.concatenate(p) for p in parts]
