"""`verify`: check a whole output against its manifest and the format, one line per problem.

Every problem names the file and the next step. Checks: the manifest exists and is of a known
version; the step files on disk are exactly those listed; each file has the listed size and
sha256, the manifest's seq_len and dtype, its own step index, exactly rows_per_step rows (the
remainder fewer), token ids below the vocabulary size, doc_lens that are positive and add up to
at most seq_len (and to the listed token count), one doc_id and source per piece, source indices
that exist; and, when asked, that the rows split across a world size and micro-batch.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import fs
from .errors import ConfigError, FormatError
from .format import REMAINDER_FILE, STEPS_DIR, step_file_name
from .manifest import FileInfo, Manifest, read_manifest
from .reader import open_step
from .slicing import rank_micro_batches

RERUN = "re-run 'steppack prepare' with --overwrite"


def verify(out: str, *, world_size: int | None = None, micro_batch: int = 1) -> list[str]:
    """All problems found in output directory `out`; an empty list means it is sound."""
    try:
        manifest = read_manifest(out)
    except FormatError as exc:
        return [str(exc)]
    problems = check_listing(out, manifest)
    for i, info in enumerate(manifest.steps):
        if info.file != step_file_name(i):
            problems.append(f"manifest lists {info.file} as step {i}, expected {step_file_name(i)}; {RERUN}")
            continue
        problems += check_file(out, manifest, info, step=i)
    if manifest.remainder is not None:
        problems += check_file(out, manifest, manifest.remainder, step=None)
    if world_size is not None:
        try:
            rank_micro_batches(manifest.rows_per_step, 0, world_size, micro_batch)
        except ConfigError as exc:
            problems.append(f"{fs.join(out, 'manifest.json')}: {exc}")
    return problems


def check_listing(out: str, manifest: Manifest) -> list[str]:
    """Step files missing from disk, and files in steps/ that the manifest does not list."""
    listed = {info.file for info in manifest.steps}
    on_disk = {f"{STEPS_DIR}/{name}" for name in fs.list_dir(fs.join(out, STEPS_DIR)) if not name.startswith(".tmp-")}
    problems = [
        f"{fs.join(out, f)} is missing (the manifest lists it); restore it or {RERUN}" for f in sorted(listed - on_disk)
    ]
    problems += [
        f"{fs.join(out, f)} is not in the manifest (an extra file); delete it, or {RERUN} if steps are missing"
        for f in sorted(on_disk - listed)
    ]
    if manifest.remainder is not None and not fs.exists(fs.join(out, manifest.remainder.file)):
        problems.append(f"{fs.join(out, manifest.remainder.file)} is missing (the manifest lists it); {RERUN}")
    return problems


def check_file(out: str, manifest: Manifest, info: FileInfo, *, step: int | None) -> list[str]:
    """Problems in one step file (step=None: the remainder file)."""
    uri = fs.join(out, info.file)
    if not fs.exists(uri):
        return []  # reported by check_listing
    data = fs.read_bytes(uri)
    if len(data) != info.bytes:
        return [f"{uri} has {len(data)} bytes, the manifest says {info.bytes}: the file changed or was cut short; {RERUN}"]
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        return [f"{uri} has sha256 {digest[:12]}…, the manifest says {info.sha256[:12]}…: a byte changed since prepare wrote it; {RERUN}"]
    try:
        with open_step(uri) as f:
            f.check_schema()
            return check_contents(uri, manifest, info, f, step)
    except FormatError as exc:
        return [str(exc)]


def check_contents(uri, manifest: Manifest, info: FileInfo, f, step: int | None) -> list[str]:
    p = []
    if f.seq_len != manifest.seq_len:
        p.append(f"{uri} has seq_len {f.seq_len}, the manifest says {manifest.seq_len}; {RERUN}")
    if f.dtype != manifest.dtype:
        p.append(f"{uri} stores tokens as {f.dtype}, the manifest says {manifest.dtype}; {RERUN}")
    if p:
        return p
    expected_step = -1 if step is None else step
    if f.step != expected_step:
        p.append(f"{uri} says it is step {f.step}, but sits where step {expected_step} belongs; {RERUN}")
    if step is not None and f.num_rows != manifest.rows_per_step:
        p.append(f"{uri} has {f.num_rows} rows, the manifest says rows_per_step {manifest.rows_per_step}; {RERUN}")
    if step is None and f.num_rows >= manifest.rows_per_step:
        p.append(f"{uri} (remainder) has {f.num_rows} rows, a full step's worth or more; {RERUN}")
    if f.num_rows != info.rows:
        p.append(f"{uri} has {f.num_rows} rows, the manifest lists {info.rows}; {RERUN}")
    rows = f.read()
    vocab = manifest.tokenizer.vocab_size
    if rows.num_rows and int(rows.tokens.max()) >= vocab:
        bad = int(np.argmax((rows.tokens >= vocab).any(axis=1)))
        p.append(
            f"{uri} row {bad} holds token id {int(rows.tokens[bad].max())} >= vocabulary size {vocab} "
            f"of tokenizer {manifest.tokenizer.name}; the tokens do not come from this tokenizer; {RERUN}"
        )
    n_pieces = int(rows.piece_offsets[-1])
    if not len(rows.doc_lens) == len(rows.doc_ids) == len(rows.source) == n_pieces:
        p.append(f"{uri} has rows whose doc_lens, doc_ids and source differ in length; {RERUN}")
        return p
    if n_pieces and int(rows.doc_lens.min()) <= 0:
        p.append(f"{uri} has a document piece of length {int(rows.doc_lens.min())} (must be >= 1); {RERUN}")
    used = rows.row_used()
    if rows.num_rows and int(used.max()) > manifest.seq_len:
        bad = int(np.argmax(used > manifest.seq_len))
        p.append(f"{uri} row {bad}: doc_lens add up to {int(used[bad])}, more than seq_len {manifest.seq_len}; {RERUN}")
    elif int(used.sum()) != info.tokens:
        p.append(f"{uri}: doc_lens add up to {int(used.sum())} tokens, the manifest lists {info.tokens}; {RERUN}")
    if n_pieces and int(rows.source.max()) >= len(manifest.sources):
        p.append(f"{uri} names source {int(rows.source.max())}, the manifest has {len(manifest.sources)} sources; {RERUN}")
    return p


def describe_ok(out: str, manifest: Manifest) -> str:
    rem = manifest.remainder.rows if manifest.remainder else 0
    return (
        f"{out}: OK — {manifest.num_steps} steps x {manifest.rows_per_step} rows x {manifest.seq_len} tokens "
        f"({manifest.dtype}), every file matches its sha256; remainder {rem} rows"
    )


__all__ = ["verify", "describe_ok", "REMAINDER_FILE"]
