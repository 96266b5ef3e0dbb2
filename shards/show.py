"""`show`: one row decoded back to text, piece by piece, with the document boundaries marked.

A piece that continues a document from the previous row, or goes on in the next one, says so.
"""

from __future__ import annotations

import sys

from . import fs
from . import tokenizer as tk
from .errors import ConfigError, InputError
from .manifest import Manifest
from .reader import open_step


def row_pieces(out: str, manifest: Manifest, step: int, row: int) -> dict:
    """The row's pieces as dicts (source, doc_id, token ids), plus padding and continuation flags."""
    if not 0 <= step < manifest.num_steps:
        raise ConfigError(f"step {step} is outside {out}, which has steps 0..{manifest.num_steps - 1}")
    if not 0 <= row < manifest.rows_per_step:
        raise ConfigError(f"row {row} is outside a step of {manifest.rows_per_step} rows (0..{manifest.rows_per_step - 1})")
    with open_step(fs.join(out, manifest.steps[step].file)) as f:
        lo, hi = max(0, row - 1), min(f.num_rows, row + 2)
        block = f.read(range(lo, hi))
    i = row - lo
    tokens = block.tokens[i]
    lens, ids, srcs = block.row_doc_lens(i), block.row_doc_ids(i), block.row_source(i)
    prev_last = block.row_doc_ids(i - 1)[-1:] if i > 0 else []
    next_first = block.row_doc_ids(i + 1)[:1] if i + 1 < block.num_rows else []
    pieces, start = [], 0
    for k, (n, d, s) in enumerate(zip(lens.tolist(), ids.tolist(), srcs.tolist())):
        pieces.append({
            "source": manifest.sources[s].name if s < len(manifest.sources) else f"#{s}",
            "doc_id": f"{d:016x}",
            "tokens": tokens[start:start + n].tolist(),
            "continues_from_previous_row": k == 0 and len(prev_last) > 0 and int(prev_last[0]) == d,
            "continues_in_next_row": k == len(lens) - 1 and len(next_first) > 0 and int(next_first[0]) == d,
        })
        start += n
    return {"step": step, "row": row, "padding": int(manifest.seq_len - start), "pieces": pieces}


def load_decoder(manifest: Manifest, override: str | None):
    """The tokenizer named in the manifest (or `override`), checked against the manifest's sha256."""
    name = override or manifest.tokenizer.name
    try:
        path = tk.resolve_path(name)
    except InputError as exc:
        raise InputError(
            f"cannot decode: the manifest's tokenizer {manifest.tokenizer.name!r} is not available here ({exc}); "
            "pass --tokenizer PATH/tokenizer.json, or --tokens to print ids"
        ) from exc
    digest = tk.file_sha256(path)
    if digest != manifest.tokenizer.sha256:
        print(
            f"warning: {path} has sha256 {digest[:12]}…, the manifest's tokenizer has {manifest.tokenizer.sha256[:12]}…; "
            "the text below may not be what was tokenized",
            file=sys.stderr,
        )
    return tk.load(path)


def decode_pieces(view: dict, tok) -> dict:
    for p in view["pieces"]:
        p["text"] = tok.decode(p["tokens"], skip_special_tokens=False)
    return view


def render(view: dict, *, show_tokens: bool) -> str:
    lines = []
    n = len(view["pieces"])
    for k, p in enumerate(view["pieces"], 1):
        notes = []
        if p["continues_from_previous_row"]:
            notes.append("continued from the previous row")
        if p["continues_in_next_row"]:
            notes.append("continues in the next row")
        note = f" · {', '.join(notes)}" if notes else ""
        lines.append(f"──── piece {k}/{n} · source {p['source']} · doc {p['doc_id']} · {len(p['tokens'])} tokens{note} ────")
        lines.append(" ".join(map(str, p["tokens"])) if show_tokens else p["text"])
    lines.append(f"──── end of row · step {view['step']} row {view['row']} · {view['padding']} padding tokens ────")
    return "\n".join(lines)
