"""`verify`: check a whole output against its manifest and the format, one line per problem.

Every problem names the file and the next step. Checks: the manifest exists and is of a known
version; the step files on disk are exactly those listed; each file has the listed size and
sha256, the manifest's seq_len and dtype, its own step index, exactly rows_per_step rows (the
remainder fewer), token ids below the vocabulary size, doc_lens that are positive and add up to
at most seq_len (and to the listed token count), one doc_id and source per piece, source indices
that exist; and, when asked, that the rows split across a world size and micro-batch.

Document ids: two documents must not share an id. A document may legitimately be several pieces
(cut across rows), in rows that the shuffle put anywhere, so "an id seen twice" proves nothing.
What one document can produce is at most ONE piece that does not end its row (concat: its last
piece; bestfit: its last chunk) and at most one piece that does not start its row (bestfit: its
last chunk) - two under concat: its first piece, and the piece of it that ended a bucket's stream,
which the job packs again with the other buckets' ends and may cut once more (the piece before
that cut ends its row). Every other piece fills a whole row. So an id with more such pieces, or
pieces from two sources, belongs to two documents. A mixture source that the steps repeated (passes > 1) may hold
each of its documents once per pass: up to ceil(passes + remainder rows / rows per pass) copies.
What this cannot see: two documents that each fill whole rows on their own, or one that fills
whole rows and another that ends in a row the first does not touch, look exactly like one long
document; it flags no false alarms, but it misses those.

Mixtures (`manifest.mixture`): every row holds one source's pieces only; each file's rows per
source are its `source_rows`, which add up to its rows; the stages cover the steps; every running
total of a stage's rows of source i stays within one row of w_i * rows_per_step * steps so far;
`passes` and `remainder_rows` agree with the rows.

Memory: the step files are read one at a time; for the id check verify keeps, per piece that shares
its row with another document, its id, source, row and position (19 bytes, twice that while they are
sorted by id: ~60-120 MB at 3M such pieces).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from . import fs
from .errors import ConfigError, FormatError
from .format import MANIFEST_NAME, REMAINDER_FILE, STEPS_DIR, step_file_name
from .manifest import FileInfo, Manifest, read_manifest
from .progress import no_progress
from .reader import open_step
from .rows import RowBlock
from .slicing import rank_micro_batches

RERUN = "re-run 'steppack prepare' with --overwrite"
UNIQUE_IDS = (f"two documents with one id break per-document statistics and document masks; {RERUN}, "
              "with a steppack that gives every document a unique id")
# Ids listed one per line before the rest are summed up in one line.
MAX_LISTED_IDS = 10
# A running total exactly one row off its target breaks the rule; allow only float error below that.
QUOTA_SLACK = 1e-9


def verify(out: str, *, world_size: int | None = None, micro_batch: int = 1, progress=no_progress) -> list[str]:
    """All problems found in output directory `out`; an empty list means it is sound. `progress(items,
    total=, desc=)` wraps the loop over the step files (shards/progress.py `step_bar` draws a bar)."""
    try:
        manifest = read_manifest(out)
    except FormatError as exc:
        return [str(exc)]
    problems = check_listing(out, manifest)
    if manifest.mixture is not None:
        problems += check_mixture(out, manifest)
    pieces = PieceIndex(manifest)
    for i, info in enumerate(progress(manifest.steps, total=manifest.num_steps, desc="verify")):
        if info.file != step_file_name(i):
            problems.append(f"manifest lists {info.file} as step {i}, expected {step_file_name(i)}; {RERUN}")
            continue
        problems += check_file(out, manifest, info, step=i, pieces=pieces)
    if manifest.remainder is not None and manifest.remainder.file != REMAINDER_FILE:
        problems.append(f"manifest lists {manifest.remainder.file} as the remainder, expected {REMAINDER_FILE}; {RERUN}")
    elif manifest.remainder is not None:
        problems += check_file(out, manifest, manifest.remainder, step=None, pieces=pieces)
    problems += shared_doc_ids(out, manifest, pieces)
    if world_size is not None:
        try:
            rank_micro_batches(manifest.rows_per_step, 0, world_size, micro_batch)
        except ConfigError as exc:
            problems.append(f"{fs.join(out, MANIFEST_NAME)}: {exc}")
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


def check_file(out: str, manifest: Manifest, info: FileInfo, *, step: int | None,
               pieces: "PieceIndex | None" = None) -> list[str]:
    """Problems in one step file (step=None: the remainder file); its pieces go into `pieces`."""
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
            return check_contents(uri, manifest, info, f, step, pieces)
    except FormatError as exc:
        return [str(exc)]


def check_contents(uri, manifest: Manifest, info: FileInfo, f, step: int | None,
                   pieces: "PieceIndex | None" = None) -> list[str]:
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
    # Without weights or `steps` the remainder is what did not fill a last step, plus concat's final
    # padded row; with them it holds every source's unused rows, any number.
    if step is None and f.num_rows > manifest.rows_per_step and manifest.mixture is None \
            and manifest.config.get("steps") is None:
        p.append(f"{uri} (remainder) has {f.num_rows} rows, more than a step's worth; {RERUN}")
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
    if manifest.mixture is not None:
        p += check_row_sources(uri, manifest, info, rows)
    if pieces is not None:
        pieces.add(rows, step)
    return p


# --- document ids ------------------------------------------------------------------------------


class PieceIndex:
    """Every piece that shares its row with another piece, from all the files verify reads: its
    document id, source, global row (step * rows_per_step + row; the remainder after the last step)
    and whether it starts mid-row (NOT_FIRST) and ends mid-row (NOT_LAST). A piece alone in its row
    can break neither count and is not kept."""

    NOT_FIRST, NOT_LAST = 1, 2

    def __init__(self, manifest: Manifest):
        self.num_steps, self.rows_per_step = manifest.num_steps, manifest.rows_per_step
        self._ids, self._src, self._rows, self._flags = [], [], [], []

    def add(self, rows: RowBlock, step: int | None) -> None:
        counts = np.diff(rows.piece_offsets)
        if not len(rows.doc_ids):
            return
        row_of = np.repeat(np.arange(rows.num_rows, dtype=np.int64), counts)
        pos = np.arange(len(row_of)) - rows.piece_offsets[:-1][row_of]
        flags = (pos > 0).astype(np.uint8) * self.NOT_FIRST + (pos < counts[row_of] - 1).astype(np.uint8) * self.NOT_LAST
        keep = flags != 0
        first_row = (self.num_steps if step is None else step) * self.rows_per_step
        self._ids.append(rows.doc_ids[keep])
        self._src.append(rows.source[keep])
        self._rows.append(row_of[keep] + first_row)
        self._flags.append(flags[keep])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, sources, global rows, flags), in the order the files were read."""
        def cat(parts, dtype):
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        return (cat(self._ids, np.uint64), cat(self._src, np.uint16), cat(self._rows, np.int64),
                cat(self._flags, np.uint8))

    def where(self, global_row: int) -> str:
        step, row = divmod(int(global_row), self.rows_per_step)
        if step >= self.num_steps:
            return f"remainder row {int(global_row) - self.num_steps * self.rows_per_step}"
        return f"step {step} row {row}"


def copies_allowed(manifest: Manifest) -> np.ndarray:
    """How many times each source's documents may appear: 1, or once per (part of a) pass over a
    mixture source that was repeated, the remainder's rows included."""
    n = len(manifest.sources)
    allowed = np.ones(max(1, n), np.int64)
    mix = manifest.mixture
    if mix is None or not len(mix.passes) == len(mix.rows_per_pass) == len(mix.remainder_rows) == n:
        return allowed
    for i in range(n):
        extra = mix.remainder_rows[i] / mix.rows_per_pass[i] if mix.rows_per_pass[i] > 0 else 0.0
        allowed[i] = max(1, math.ceil(mix.passes[i] + extra - 1e-9))
    return allowed


def shared_doc_ids(out: str, manifest: Manifest, index: PieceIndex) -> list[str]:
    """One line per document id that more than one document uses (see the module docstring)."""
    ids, src, rows, flags = index.arrays()
    if not len(ids):
        return []
    order = np.argsort(ids, kind="stable")  # stable: each id's pieces stay in reading order
    ids, src, rows, flags = ids[order], src[order], rows[order], flags[order]
    del order
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    not_first = np.add.reduceat((flags & PieceIndex.NOT_FIRST).astype(np.int64), starts)
    not_last = np.add.reduceat((flags & PieceIndex.NOT_LAST).astype(np.int64) >> 1, starts)
    two_sources = np.logical_or.reduceat(np.r_[False, (src[1:] != src[:-1]) & (ids[1:] == ids[:-1])], starts)
    allowed_by_source = copies_allowed(manifest)
    allowed = allowed_by_source[np.minimum(src[starts], len(allowed_by_source) - 1)]
    starts_allowed = allowed * (1 if manifest.packing == "bestfit" else 2)
    bad = np.flatnonzero((not_first > starts_allowed) | (not_last > allowed) | two_sources)
    problems = []
    ends = np.r_[starts[1:], len(ids)]
    for g in bad[:MAX_LISTED_IDS]:
        lo, hi = int(starts[g]), int(ends[g])
        problems.append(_shared_id_line(out, manifest, index, int(ids[lo]), src[lo:hi], rows[lo:hi], flags[lo:hi],
                                        int(allowed[g])))
    if len(bad) > MAX_LISTED_IDS:
        problems.append(f"{out}: {len(bad) - MAX_LISTED_IDS:,} more document ids are each shared by more than one "
                        f"document (the first {MAX_LISTED_IDS} are listed above); {UNIQUE_IDS}")
    return problems


def _shared_id_line(out, manifest, index, doc_id, src, rows, flags, allowed) -> str:
    names = [s.name for s in manifest.sources]

    def name(i):
        return names[i] if i < len(names) else f"#{i}"

    head = f"{out}: document id {doc_id:016x} is shared by more than one document:"
    if (src != src[0]).any():
        other = int(np.argmax(src != src[0]))
        return (f"{head} it has pieces from source {name(int(src[0]))} ({index.where(rows[0])}) and from source "
                f"{name(int(src[other]))} ({index.where(rows[other])}), but a document comes from one source; {UNIQUE_IDS}")
    copies = "" if allowed == 1 else (f" per pass over source {name(int(src[0]))} (it may appear {allowed} times: "
                                      f"{manifest.mixture.passes[int(src[0])]:.2f} passes)")
    bestfit = manifest.packing == "bestfit"
    for flag, what, which, most in (
            (PieceIndex.NOT_FIRST, "start mid-row, after another document",
             "one such piece (its last chunk)" if bestfit else "two such pieces (its first, and its bucket's last)",
             1 if bestfit else 2),
            (PieceIndex.NOT_LAST, "end mid-row, before another document",
             f"one such piece ({'its last chunk' if bestfit else 'its last piece'})", 1)):
        hits = np.flatnonzero(flags & flag)
        if len(hits) > most * allowed:
            at = ", ".join(index.where(rows[k]) for k in hits[:most * allowed + 1])
            return (f"{head} {len(hits)} of its pieces {what} ({at}), but a document has at most {which}"
                    f"{copies}; {UNIQUE_IDS}")
    raise AssertionError("unreachable: the id was flagged")


# --- mixtures ----------------------------------------------------------------------------------


def check_row_sources(uri: str, manifest: Manifest, info: FileInfo, rows: RowBlock) -> list[str]:
    """In a mixture every row holds one source's pieces only, and the file's rows per source are
    its `source_rows`."""
    p = []
    n = len(manifest.sources)
    counts = np.diff(rows.piece_offsets)
    row_of = np.repeat(np.arange(rows.num_rows), counts)
    mixed = rows.source != rows.source[rows.piece_offsets[:-1][row_of]]
    if mixed.any():
        k = int(np.argmax(mixed))
        r = int(row_of[k])
        names = sorted({_name(manifest, int(s)) for s in rows.row_source(r)})
        p.append(f"{uri} row {r} holds pieces of sources {' and '.join(names)} ({int(mixed.sum())} pieces of this "
                 f"file sit in a row of another source); in a mixture every row holds one source only; {RERUN}")
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        p.append(f"{uri} row {int(empty[0])} holds no document (only padding), so it counts for no source; {RERUN}")
    firsts = rows.source[rows.piece_offsets[:-1][counts > 0]]
    actual = np.bincount(firsts, minlength=n).tolist()
    if info.source_rows is None:
        p.append(f"{uri}: the manifest lists no source_rows for it, though the output is a mixture; {RERUN}")
    elif actual != list(info.source_rows):
        p.append(f"{uri} holds {_per_source(manifest, actual)} rows per source, the manifest lists "
                 f"{_per_source(manifest, info.source_rows)}; {RERUN}")
    return p


def check_mixture(out: str, manifest: Manifest) -> list[str]:
    """The mixture's own records: shapes, stage steps, per-step source_rows, the quota rule, passes and
    the remainder's rows (the files' rows are checked against source_rows by check_row_sources)."""
    where = fs.join(out, MANIFEST_NAME)
    mix, n, R = manifest.mixture, len(manifest.sources), manifest.rows_per_step
    p = []
    for field, values in (("rows_per_pass", mix.rows_per_pass), ("passes", mix.passes),
                          ("remainder_rows", mix.remainder_rows)):
        if len(values) != n:
            p.append(f"{where}: mixture.{field} has {len(values)} entries for {n} sources; {RERUN}")
    for k, st in enumerate(mix.stages, 1):
        if len(st.weights) != n:
            p.append(f"{where}: mixture stage {k} has {len(st.weights)} weights for {n} sources; {RERUN}")
        elif min(st.weights) < 0 or abs(sum(st.weights) - 1) > 1e-6:
            p.append(f"{where}: mixture stage {k} weights {st.weights} are not shares adding up to 1; {RERUN}")
        if st.steps < 0:
            p.append(f"{where}: mixture stage {k} has {st.steps} steps; {RERUN}")
    covered = sum(st.steps for st in mix.stages)
    if covered != manifest.num_steps:
        p.append(f"{where}: the mixture's stages cover {covered} steps, the output has {manifest.num_steps}; {RERUN}")
    missing = [info.file for info in manifest.steps if info.source_rows is None or len(info.source_rows) != n]
    if missing:
        p.append(f"{where} lists no source_rows of {n} sources for {len(missing)} step(s) ({missing[0]} first); {RERUN}")
    wrong = [info for info in manifest.steps
             if info.source_rows is not None and len(info.source_rows) == n and sum(info.source_rows) != R]
    for info in wrong[:MAX_LISTED_IDS]:
        p.append(f"{where}: source_rows of {info.file} add up to {sum(info.source_rows)}, not rows_per_step {R}; {RERUN}")
    p += _check_remainder_rows(where, manifest)
    if p:
        return p  # the quota rule needs well-formed records
    q = np.array([info.source_rows for info in manifest.steps], np.int64).reshape(-1, n)
    start = 0
    for k, st in enumerate(mix.stages, 1):
        dev, cum, target = prefix_deviation(q[start:start + st.steps], st.weights, R)
        for i in np.flatnonzero((dev >= 1 - QUOTA_SLACK).any(axis=0)):
            s = int(np.argmax(dev[:, i] >= 1 - QUOTA_SLACK))
            p.append(
                f"{where}: mixture stage {k} of {len(mix.stages)} (steps {start}..{start + st.steps - 1}): steps "
                f"{start}..{start + s} hold {int(cum[s, i])} rows of source {_name(manifest, i)}, its weight "
                f"{st.weights[i]:.6g} asks for {target[s, i]:.2f}, give or take less than one row; the steps do not follow the "
                f"mixture's quotas; {RERUN}")
        start += st.steps
    for i in range(n):
        rows, rpp, passes = int(q[:, i].sum()), mix.rows_per_pass[i], mix.passes[i]
        if (rpp > 0 and abs(passes * rpp - rows) > 1e-6 * max(1, rows)) or (rpp <= 0 and rows > 0):
            p.append(f"{where}: source {_name(manifest, i)} gave {rows} rows to the steps, but the mixture records "
                     f"{passes:.6g} passes of {rpp} rows; {RERUN}")
    return p


def _check_remainder_rows(where: str, manifest: Manifest) -> list[str]:
    mix, rem = manifest.mixture, manifest.remainder
    if rem is None:
        if sum(mix.remainder_rows):
            return [f"{where}: mixture.remainder_rows lists {sum(mix.remainder_rows)} rows, but there is no remainder "
                    f"file; {RERUN}"]
        return []
    if rem.source_rows is None or list(rem.source_rows) != list(mix.remainder_rows):
        return [f"{where}: the remainder's source_rows {rem.source_rows} differ from mixture.remainder_rows "
                f"{mix.remainder_rows}; {RERUN}"]
    if sum(rem.source_rows) != rem.rows:
        return [f"{where}: the remainder's source_rows add up to {sum(rem.source_rows)}, it has {rem.rows} rows; {RERUN}"]
    return []


def prefix_deviation(q: np.ndarray, weights, rows_per_step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a stage's (steps, sources) rows per step: |running total - target|, the running totals, and
    the targets w_i * rows_per_step * (steps so far). Shared with `stats`."""
    w = np.asarray(weights, np.float64)
    cum = np.cumsum(q, axis=0)
    target = w[None, :] * rows_per_step * np.arange(1, len(q) + 1, dtype=np.float64)[:, None]
    return np.abs(cum - target), cum, target


def _name(manifest: Manifest, i: int) -> str:
    return manifest.sources[i].name if i < len(manifest.sources) else f"#{i}"


def _per_source(manifest: Manifest, counts) -> str:
    return ", ".join(f"{_name(manifest, i)} {c}" for i, c in enumerate(counts))


def describe_ok(out: str, manifest: Manifest) -> str:
    rem = manifest.remainder.rows if manifest.remainder else 0
    mix = ""
    if manifest.mixture is not None:
        k = len(manifest.mixture.stages)
        mix = f"; a mixture of {len(manifest.sources)} sources in {k} stage{'s' if k != 1 else ''}, every step on quota"
    return (
        f"{out}: OK — {manifest.num_steps} steps x {manifest.rows_per_step} rows x {manifest.seq_len} tokens "
        f"({manifest.dtype}), every file matches its sha256; remainder {rem} rows{mix}"
    )


__all__ = ["verify", "describe_ok", "prefix_deviation", "REMAINDER_FILE"]
