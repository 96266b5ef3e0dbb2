"""`show`: one row decoded back to text, piece by piece, with the document boundaries marked; or,
without a row, what one step is made of.

A piece that continues a document from the previous row, or goes on in the next one, says so.
Text is printed with terminal control characters escaped (`printable`): data cannot clear the
screen, move the cursor or reorder the line around it; `--json` escapes as JSON does.

A step's composition (`step_composition`) is read from its file alone: rows, document tokens,
padding, documents and pieces, and per source the rows holding a piece of it (in a mixture every
row holds one source, so these add up to the step's rows; otherwise a row holding two sources
counts for both), its tokens, documents and pieces, and in a mixture the weight of the step's stage.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from . import fs
from . import tokenizer as tk
from .errors import ConfigError, InputError
from .manifest import Manifest
from .reader import open_step


def _check_step(out: str, manifest: Manifest, step: int) -> None:
    if not 0 <= step < manifest.num_steps:
        raise ConfigError(f"step {step} is outside {out}, which has steps 0..{manifest.num_steps - 1}")


def step_composition(out: str, manifest: Manifest, step: int) -> dict:
    """What step `step` holds, in total and per source (see the module docstring)."""
    _check_step(out, manifest, step)
    info = manifest.steps[step]
    with open_step(fs.join(out, info.file)) as f:
        rows = f.read()
    n = len(manifest.sources)
    counts = np.diff(rows.piece_offsets)
    row_of = np.repeat(np.arange(rows.num_rows, dtype=np.int64), counts)
    src = rows.source.astype(np.int64)
    m = max(1, n, int(src.max()) + 1 if len(src) else 0)  # a source the manifest lacks still shows (as #i)
    rows_holding = np.bincount(np.unique(row_of * m + src) % m, minlength=m)
    tokens = np.bincount(src, weights=rows.doc_lens, minlength=m).astype(np.int64)
    pieces = np.bincount(src, minlength=m)
    stage, weights = _stage_of(manifest, step)
    used = int(rows.row_used().sum())
    padding = rows.num_rows * rows.seq_len - used
    return {
        "step": step, "file": info.file, "rows": rows.num_rows, "seq_len": rows.seq_len, "tokens": used,
        "padding": padding, "padding_pct": 100.0 * padding / max(1, rows.num_rows * rows.seq_len),
        "documents": int(len(np.unique(rows.doc_ids))), "pieces": int(len(rows.doc_ids)),
        "mixture_stage": stage, "stages": len(manifest.mixture.stages) if manifest.mixture else None,
        "sources": [
            {"index": i, "name": manifest.sources[i].name if i < n else f"#{i}", "rows": int(rows_holding[i]),
             "tokens": int(tokens[i]), "documents": int(len(np.unique(rows.doc_ids[src == i]))),
             "pieces": int(pieces[i]), "weight": None if weights is None or i >= len(weights) else weights[i]}
            for i in range(m)
        ],
    }


def _stage_of(manifest: Manifest, step: int) -> tuple[int | None, list[float] | None]:
    """(1-based stage, its weights) of a mixture step; (None, None) when there is no mixture."""
    if manifest.mixture is None:
        return None, None
    start = 0
    for k, st in enumerate(manifest.mixture.stages, 1):
        if step < start + st.steps:
            return k, list(st.weights)
        start += st.steps
    return None, None  # stages that do not cover the steps: `verify` says so


def render_composition(view: dict, out: str) -> str:
    v = view
    lines = [f"step {v['step']} of {out} ({v['file']}): {v['rows']} rows x {v['seq_len']} tokens, "
             f"{v['tokens']:,} document tokens, {v['padding']:,} padding ({v['padding_pct']:.2f}%), "
             f"{v['documents']:,} documents in {v['pieces']:,} pieces"]
    mixture = v["stages"] is not None
    if mixture:
        lines.append(f"  mixture stage {v['mixture_stage']} of {v['stages']}: every row holds one source")
    else:
        lines.append("  rows: rows holding a piece of the source (a row can hold several sources)")
    head = f"  {'source':<20} {'rows':>6} {'tokens':>10} {'documents':>10} {'pieces':>7}"
    lines.append(head + (f" {'share':>8} {'weight':>8}" if mixture else ""))
    for x in v["sources"]:
        line = f"  {x['name']:<20} {x['rows']:>6,} {x['tokens']:>10,} {x['documents']:>10,} {x['pieces']:>7,}"
        if mixture:
            weight = "-" if x["weight"] is None else f"{100 * x['weight']:.2f}%"
            line += f" {100 * x['rows'] / max(1, v['rows']):>7.2f}% {weight:>8}"
        lines.append(line)
    return "\n".join(lines)


def row_pieces(out: str, manifest: Manifest, step: int, row: int) -> dict:
    """The row's pieces as dicts (source, doc_id, token ids), plus padding and continuation flags."""
    _check_step(out, manifest, step)
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


# Characters a terminal acts on rather than prints (C0 but newline and tab, DEL, C1: ESC and CSI
# start the sequences that move the cursor, clear the screen or set the window title), and the
# bidirectional overrides that reorder what follows them: data shows them as escapes.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every terminal control character written as its escape (\\x1b, \\u202e)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


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
        lines.append(" ".join(map(str, p["tokens"])) if show_tokens else printable(p["text"]))
    lines.append(f"──── end of row · step {view['step']} row {view['row']} · {view['padding']} padding tokens ────")
    return "\n".join(lines)
