"""Finding input files and reading their records: the job's only contact with input formats.

Formats: JSONL (plain, `.gz`, `.zst`), Parquet, plain text files (one document per file) and HF
datasets saved with `save_to_disk`; any path Beam's `FileSystems` opens (local, gs://, s3://).
Hub datasets (`hf://datasets/NAME[:SPLIT]`) go through `datasets.load_dataset` and need a network.

A file is read as one or more *units* (`part` of `parts`), so a few big files still spread over
every worker: a JSONL unit decompresses the whole file but parses only the records whose number
is `part` modulo `parts` (decompressing is ~1000x faster than tokenizing; at most 16 parts
per JSONL file keep the repeated passes to ~2%); a Parquet unit reads
every `parts`-th row group. Record numbers are 0-based positions in the file (JSONL: line - 1).

`read_unit` yields `(record, text)` for each usable record and `Reject`s for malformed ones (bad
JSON, a missing field, undecodable bytes, a truncated compressed file, a damaged Parquet row group:
one per record it holds; a file that cannot be opened: a dangling symlink, a symlink loop, a
directory; a record over `max_doc_bytes`, passed over before it is parsed), never raising for them.
"""

from __future__ import annotations

import errno
import json
import math
import os
import posixpath
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterator, NamedTuple

import orjson

from steppack.shards.errors import ConfigError, InputError

from .config import JobConfig, text_fields

TEXT_EXTS = (".txt", ".tex", ".md", ".text", ".rst")
JSONL_EXTS = (".jsonl", ".json", ".ndjson")
HUB_PREFIX = "hf://datasets/"
SURROGATE = re.compile("[\ud800-\udfff]")
FLOAT_EXACT = float(1 << 53)
"""Floats below this in magnitude are written into a template's text; past it they stop being exact."""
# Every unit of a JSONL file reads (decompresses) the whole file, so the parts of one file are
# capped: 16 full passes of zstd (~1 GB/s) cost ~2% of tokenizing the file (~1.5 MB/s per core).
MAX_JSONL_PARTS = 16
# Uncompressed bytes per compressed byte, to size read units of compressed JSONL.
COMPRESSION_RATIO = {None: 1, "gzip": 4, "zstd": 4}


class Reject(NamedTuple):
    """A record that could not be used, with why: it goes to OUT/rejects/."""

    source: str
    file: str
    record: int
    reason: str
    """bad_json | missing_field | bad_field | bad_utf8 | truncated | unreadable | too_large"""
    detail: str

    def to_dict(self) -> dict:
        return self._asdict()


@dataclass(frozen=True)
class Unit:
    """A piece of reading work: records of one file whose number is `part` modulo `parts`."""

    source: int
    source_name: str
    path: str
    key: str
    """The file's name relative to its glob's directory: goes into doc_ids, so the corpus can move."""
    format: str
    compression: str | None
    text: str
    part: int
    parts: int
    weight: float = 0.0
    """Estimated uncompressed bytes of this unit: orders units so that work spreads evenly."""
    max_doc_bytes: int = 0
    """A record of more bytes is a too_large reject (JobConfig.max_doc_bytes; 0: no limit)."""


def detect_format(path: str) -> tuple[str, str | None]:
    """(format, compression) from a file name; ConfigError when it says nothing."""
    p = path.lower()
    comp = None
    if p.endswith(".gz"):
        comp, p = "gzip", p[:-3]
    elif p.endswith(".zst"):
        comp, p = "zstd", p[:-4]
    if p.endswith(JSONL_EXTS):
        return "jsonl", comp
    if p.endswith(".parquet") and comp is None:
        return "parquet", None
    if p.endswith(TEXT_EXTS):
        return "text", comp
    raise ConfigError(
        f"cannot tell the format of {path} from its name; set format = \"jsonl|parquet|text\" "
        "for its [[source]] (or --format)"
    )


def _is_hf_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _glob_base(pattern: str) -> str:
    m = re.search(r"[*?\[]", pattern)
    return posixpath.dirname(pattern.rstrip("/") if m is None else pattern[: m.start()])


def source_root(patterns) -> str:
    """The folder that a source's file keys are relative to: the deepest folder above every one of
    its paths' static parts (`a/*.jsonl` + `b/*.jsonl` -> their parent, so the keys are
    `a/x.jsonl` and `b/x.jsonl`). Keys so made do not change when the corpus moves to another
    root or bucket, and one glob keeps the keys relative to its own folder."""
    parts = [_glob_base(p).split("/") for p in patterns if not p.startswith(HUB_PREFIX)]
    if not parts:
        return ""
    common = parts[0]
    for other in parts[1:]:
        n = 0
        while n < min(len(common), len(other)) and common[n] == other[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


def _key(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if root and path.startswith(root + "/") else path.lstrip("/")


SCHEME_NEEDS = {"s3": ("boto3", "steppack[s3]"), "gs": ("google.cloud.storage", "steppack[gcp]")}
"""What Beam's filesystem for a scheme needs installed, and the extra that installs it."""


def _check_scheme(pattern: str) -> None:
    scheme = pattern.split("://", 1)[0] if "://" in pattern else ""
    if scheme in SCHEME_NEEDS:
        module, extra = SCHEME_NEEDS[scheme]
        try:
            __import__(module)
        except ImportError as exc:
            raise InputError(f"input {pattern}: reading {scheme}:// needs {module.split('.')[0]}, which is not "
                             f"installed ({exc}); pip install '{extra}'") from exc


def _match(pattern: str) -> list[tuple[str, int]]:
    from apache_beam.io.filesystems import FileSystems

    _check_scheme(pattern)
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as exc:  # Beam raises BeamIOError for a glob that matches nothing or a bad scheme
        raise InputError(f"input {pattern} matches no file ({exc}); check the path") from exc
    return sorted((m.path, m.size_in_bytes) for m in result.metadata_list)


def _broken_links(pattern: str) -> list[str]:
    """Local symlinks that `pattern` matches and that lead nowhere (a missing target, a loop).
    Beam's match leaves them out without a word (its listing skips a path whose size it cannot
    read); here each is a unit whose read is one `unreadable` reject saying which, so it is
    counted. This walks the glob's folder a second time, as Beam does (os.walk: ~0.3 s per
    100,000 files)."""
    if "://" in pattern:
        return []
    if not re.search(r"[*?\[]", pattern):
        return [pattern] if _dangling(pattern) else []
    from apache_beam.io.filesystem import FileSystem

    match = re.compile(FileSystem.translate_pattern(pattern)).match
    return [p for d, _, names in os.walk(_glob_base(pattern) or ".") for n in names
            if _dangling(p := os.path.join(d, n)) and match(p)]


def _dangling(path: str) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def _not_a_file(path: str) -> str | None:
    """Why a local input path cannot be read as a file, or None; the readers' own errors would not
    say that a missing file is a dangling symlink, and a Parquet reader would blame the footer."""
    if "://" in path:
        return None
    if os.path.isdir(path):
        return f"{path} is a directory, not a file"
    if _dangling(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"a symlink loop: {path} -> {os.readlink(path)} never reaches a file ({exc.strerror})"
        return f"a dangling symlink: {path} -> {os.readlink(path)}, which does not exist"
    return None


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def discover(cfg: JobConfig, sources=None, what: str = "source") -> tuple[list[Unit], list[int]]:
    """Every read unit of the job's sources (or of `sources`: the benchmarks), in a fixed order,
    and the input bytes of each; InputError if a path matches nothing."""
    units: list[Unit] = []
    sizes = []
    unit_bytes = cfg.unit_mb * (1 << 20)
    cap = cfg.max_doc_bytes
    for si, src in enumerate(cfg.sources if sources is None else sources):
        root = source_root(src.paths)
        total = 0
        for pattern in src.paths:
            if pattern.startswith(HUB_PREFIX):
                units.append(Unit(si, src.name, pattern, pattern[len(HUB_PREFIX):], "hub", None, src.text, 0, 1,
                                  max_doc_bytes=cap))
                continue
            if _is_hf_dir(pattern) or src.format == "hf":
                if not _is_hf_dir(pattern):
                    raise InputError(f"{pattern} is not a directory written by datasets' save_to_disk")
                size = _dir_size(pattern)
                total += size
                parts = max(1, math.ceil(size / unit_bytes))
                units += [Unit(si, src.name, pattern, _key(pattern.rstrip("/"), root), "hf", None,
                               src.text, j, parts, size / parts, cap) for j in range(parts)]
                continue
            files = sorted(_match(pattern) + [(p, 0) for p in _broken_links(pattern)])
            if not files:
                raise InputError(f"input {pattern} ({what} {src.name!r}) matches no file; check the path")
            for path, size in files:
                fmt, comp = (src.format, None) if src.format else detect_format(path)
                if src.format == "jsonl" or src.format == "text":
                    comp = detect_format(path)[1] if path.endswith((".gz", ".zst")) else None
                key = _key(path, root)
                total += size
                if fmt == "parquet":
                    # Part j reads row groups j, j+parts, ...; its weight is what they hold
                    # uncompressed (row groups differ: the bench's file has one twice the others).
                    groups = _row_group_bytes(path)
                    parts = max(1, min(len(groups), math.ceil(sum(groups) / unit_bytes)))
                    weights = [float(sum(groups[j::parts])) for j in range(parts)]
                else:
                    parts = max(1, min(MAX_JSONL_PARTS, math.ceil(size * COMPRESSION_RATIO[comp] / unit_bytes))) \
                        if fmt == "jsonl" else 1
                    weights = [size * COMPRESSION_RATIO.get(comp, 1) / parts] * parts
                units += [Unit(si, src.name, path, key, fmt, comp, src.text, j, parts, weights[j], cap)
                          for j in range(parts)]
        sizes.append(total)
    check_unique_keys(units)
    return units, sizes


def check_unique_keys(units: list[Unit]) -> None:
    """doc_id hashes (source, file key, record): two files with one key would give their records
    the same ids (and join pieces of different documents), so that is an error before any work."""
    paths: dict[tuple[str, str], str] = {}
    parts: set[tuple[str, str, int]] = set()
    for u in units:
        if (u.source_name, u.path, u.part) in parts:
            raise ConfigError(f"{u.path} is matched by two of the paths of source {u.source_name!r}: its "
                              "documents would be read twice; make the globs disjoint")
        parts.add((u.source_name, u.path, u.part))
        other = paths.setdefault((u.source_name, u.key), u.path)
        if other != u.path:
            raise ConfigError(f"{other} and {u.path} (source {u.source_name!r}) would give their documents the "
                              f"same ids (both are {u.key!r} under the source's folder); put them in separate "
                              "[[source]] tables or rename one")


def _row_group_bytes(path: str) -> list[int]:
    """Uncompressed bytes of each row group, from the footer; [] when the footer cannot be read
    (the file is then one unit, whose read is one `unreadable` reject: the job carries on)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as f:
            meta = pq.ParquetFile(f).metadata
            return [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    except Exception:  # pyarrow raises ArrowInvalid/OSError for a broken footer; it costs only the split
        return []


def make_text(spec: str, fields: tuple[str, ...], record) -> str | tuple[str, str]:
    """The document text of a record, or (reason, detail) when it cannot be made.

    A single field (`text`) must be a string. A template (`{question}\n\n{answer}`) also writes
    out numbers (MATH's `level`, an integer answer): an int, a float or a Parquet decimal, as
    Python prints it. Anything else is a `bad_field`, never its repr in the training text: a list
    or object ("[1, 2]"), bytes of a binary column ("b'...'"), a bool ("True"), a date, NaN or
    infinity, and a float of 2**53 or more (past it a float no longer holds every integer, and
    orjson reads a JSON integer past 64 bits as a float: its digits would be written rounded)."""
    if not isinstance(record, dict):
        return ("bad_json", f"a record must be a JSON object, got {type(record).__name__}")
    single = len(fields) == 1 and "{" not in spec
    values = {}
    for f in fields:
        v = record.get(f)
        if v is None:
            return ("missing_field", f"field {f!r} is missing or null")
        if not isinstance(v, str):
            if single or isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
                what = "bytes (a binary column: cast it to string if it holds UTF-8 text)" \
                    if isinstance(v, bytes) else f"a {type(v).__name__}"
                return ("bad_field", f"field {f!r} is {what}, not a string" + ("" if single else " or a number"))
            if isinstance(v, float) and not abs(v) < FLOAT_EXACT:  # (Parquet decimals are finite, exact)
                return ("bad_field", f"field {f!r} is {v}: not a finite number, or one too large to write "
                                     "exactly; make it a string")
            v = str(v)
        values[f] = v
    return values[fields[0]] if single else spec.format_map(values)


def _open(path: str):
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class _Decompressed:
    """Lines (without their newline) of a plain, gzip or zstd stream, several members/frames
    allowed; EOFError when the last one is cut short. A line (or, with `read`, the whole stream)
    longer than `max_bytes` comes as its length alone: its bytes are dropped as they are read, so
    a 2 GB line (a .json file that is one array) holds at most `max_bytes` of memory, not 2 GB and
    then its parse.

    zstandard's stream_reader ends silently on a truncated frame, which would lose records
    unseen. All go through the same loop: 64 KiB of input at a time, decompressed and
    split into lines in C (`gzip.GzipFile`'s line iterator took 1.2-1.4x the CPU on mathlib3's files).
    A gzip member's CRC and length are checked by zlib (zlib.error on a mismatch, raised before
    the piece's output: the lines of earlier pieces are kept); zero bytes after the last member
    are padding, as `gzip` allows.
    """

    def __init__(self, raw, compression: str | None, max_bytes: int = 0, chunk: int = 1 << 16):
        self.raw, self.compression, self.chunk = raw, compression, chunk
        self.max_bytes = max_bytes or math.inf

    def _decompressor(self):
        if self.compression == "gzip":
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()

    def _chunks(self) -> Iterator[bytes]:
        if self.compression is None:
            yield from iter(lambda: self.raw.read(self.chunk), b"")
            return
        gz = self.compression == "gzip"
        dobj = self._decompressor()
        started = False
        while True:
            data = self.raw.read(self.chunk)
            if not data:
                break
            while data:
                if not started and gz:
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                started = True
                out = dobj.decompress(data)
                if out:
                    yield out
                data = b""
                if dobj.eof:
                    data, dobj, started = dobj.unused_data, self._decompressor(), False
        if started and not dobj.eof:
            raise EOFError(f"{self.compression} stream ends before its end marker (truncated file)")

    def __iter__(self) -> Iterator[bytes | int]:
        cap = self.max_bytes
        parts: list[bytes] = []  # the line so far, in pieces; dropped once it is longer than cap
        size = 0
        for out in self._chunks():
            *lines, tail = out.split(b"\n")
            for line in lines:
                n = size + len(line)
                yield n if n > cap else (b"".join([*parts, line]) if parts else line)
                parts, size = [], 0
            size += len(tail)
            if size > cap:
                parts = []
            elif tail:
                parts.append(tail)
        if size:
            yield size if size > cap else b"".join(parts)

    def read(self) -> bytes | int:
        parts, size = [], 0
        for out in self._chunks():
            size += len(out)
            if size > self.max_bytes:
                parts.clear()
            else:
                parts.append(out)
        return size if size > self.max_bytes else b"".join(parts)


TRUNCATION_ERRORS: tuple = (EOFError, zlib.error)


def _truncation_errors() -> tuple:
    try:
        import zstandard

        return TRUNCATION_ERRORS + (zstandard.ZstdError,)
    except ImportError:
        return TRUNCATION_ERRORS


def read_unit(u: Unit) -> Iterator[tuple[int, str] | Reject]:
    """Records of one unit as (record number, text), and Rejects for the ones that cannot be used."""
    fields = text_fields(u.text)
    why = None if u.format in ("hf", "hub") else _not_a_file(u.path)
    if why:
        if u.part == 0:
            yield _reject(u, 0, "unreadable", why)
    elif u.format == "jsonl":
        yield from _read_jsonl(u, fields)
    elif u.format == "parquet":
        yield from _read_parquet(u, fields)
    elif u.format == "text":
        yield from _read_text(u)
    elif u.format in ("hf", "hub"):
        yield from _read_hf(u, fields)
    else:
        raise ConfigError(f"unknown format {u.format!r}")


def _reject(u: Unit, record: int, reason: str, detail: str) -> Reject:
    return Reject(u.source_name, u.path, record, reason, detail[:300])


def _read_jsonl(u: Unit, fields) -> Iterator[tuple[int, str] | Reject]:
    errors = _truncation_errors()
    n = -1
    try:
        with _open(u.path) as raw:
            stream = _Decompressed(raw, u.compression, u.max_doc_bytes)
            for n, line in enumerate(stream):
                if n % u.parts != u.part:
                    continue
                if isinstance(line, int):  # longer than max_doc_bytes: the stream kept its length alone
                    made = _too_large(line, u)
                elif not line.strip():
                    continue  # blank lines are not records
                else:
                    made = _parse(line)
                if not isinstance(made, tuple):
                    made = make_text(u.text, fields, made)
                if isinstance(made, tuple):
                    yield _reject(u, n, made[0], f"line {n + 1}: {made[1]}")
                else:
                    yield n, made
    except errors as exc:
        # A truncated .gz / .zst: the records before the damage are kept; the rest is one reject.
        if u.part == 0:
            yield _reject(u, n + 1, "truncated", f"compressed stream ends early after {n + 1} lines ({exc})")
    except OSError as exc:
        if u.part == 0:
            yield _reject(u, n + 1, "unreadable", f"read failed after {n + 1} lines ({exc})")


def _parse(line: bytes):
    """The record of a JSONL line, or (reason, detail) when it has none.

    orjson first (a third of json's CPU; it also checks the UTF-8). Where it refuses, the
    standard decoders say precisely why, and take what orjson alone refuses: NaN and Infinity,
    escaped lone surrogates (a str no UTF-8 tokenizer takes: refused below). orjson reads an
    integer past 64 bits as a float (3.10 and 3.13 alike): make_text refuses it in a template."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ("bad_utf8", str(exc))
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        return ("bad_json", str(exc))
    except RecursionError:
        return ("bad_json", "nested too deeply to read")
    if SURROGATE.search(json.dumps(rec, ensure_ascii=False)):  # JSON's "\ud800" escapes
        return ("bad_utf8", "a lone surrogate (an escaped \\ud800-\\udfff without its pair): not valid Unicode text")
    return rec


def _read_parquet(u: Unit, fields) -> Iterator[tuple[int, str] | Reject]:
    """Row group by row group, one in memory at a time. A row group that cannot be read (damaged
    pages) is one reject per record it holds (the footer says how many); the others are read as
    usual. A file whose footer cannot be read is one reject (how many records it holds is unknown)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with _open(u.path) as f:
            # Page CRCs, where the writer left them (parquet-mr does by default, pyarrow on request),
            # are checked: damaged bytes in an uncompressed page otherwise read as other text.
            pf = pq.ParquetFile(f, page_checksum_verification=True)
            names = set(pf.schema_arrow.names)
            cols = [c for c in fields if c in names]
            start = 0
            for g in range(pf.metadata.num_row_groups):
                rows = pf.metadata.row_group(g).num_rows
                if g % u.parts == u.part:
                    yield from _read_row_group(u, fields, pf, g, cols, start, rows)
                start += rows
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:  # the footer: _read_row_group catches the rest
        if u.part == 0:
            yield _reject(u, 0, "unreadable", f"not a readable Parquet file, its footer cannot be read ({exc})")


def _read_row_group(u: Unit, fields, pf, g: int, cols, start: int, rows: int) -> Iterator[tuple[int, str] | Reject]:
    import pyarrow as pa

    try:
        items = list(_table_items(u, fields, pf.read_row_group(g, columns=cols), range(start, start + rows)))
    except (pa.ArrowInvalid, OSError) as exc:  # all that 900 random damages to pages raised (+ UTF-8: _records)
        detail = (f"row group {g} of {pf.metadata.num_row_groups} (records {start}-{start + rows - 1}) "
                  f"cannot be read ({exc})")
        yield from (_reject(u, start + i, "unreadable", detail) for i in range(rows))
        return
    yield from items


def _table_items(u: Unit, fields, table, records: range) -> Iterator[tuple[int, str] | Reject]:
    """(record, text) or a Reject for each row of an Arrow table (a Parquet row group, a batch of an
    HF dataset), its rows numbered by `records`. A row whose string and binary values hold more
    than max_doc_bytes is a too_large reject, found in Arrow before any of it becomes a Python str."""
    import pyarrow.compute as pc

    big: dict[int, int] = {}
    sizes = _value_bytes(table) if u.max_doc_bytes else None
    if sizes is not None:
        over = pc.greater(sizes, u.max_doc_bytes)
        if pc.any(over).as_py():
            big = {i: n for i, (n, o) in enumerate(zip(sizes.to_pylist(), over.to_pylist())) if o}
            table = table.filter(pc.invert(over))
    rows = iter(_records(table))
    for i, record in enumerate(records):
        made = _too_large(big[i], u) if i in big else next(rows)
        if not isinstance(made, tuple):
            made = make_text(u.text, fields, made)
        if isinstance(made, tuple):
            yield _reject(u, record, made[0], made[1])
        else:
            yield record, made


def _value_bytes(table):
    """Bytes of each row's string and binary values (an Arrow int64 array), or None when the table
    has no such column (numbers are small; a list or struct is a bad_field whatever its size)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = None
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or \
                pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            n = pc.fill_null(pc.binary_length(col), 0).cast(pa.int64())
            total = n if total is None else pc.add(total, n)
    return total


def _too_large(size: int, u: Unit) -> tuple[str, str]:
    return ("too_large", f"{size:,} bytes, over max_doc_bytes {u.max_doc_bytes:,} (--max-doc-bytes)")


def _records(table) -> list:
    """The rows of a row group as dicts; (reason, detail) for a row with a string that is not UTF-8
    (pyarrow does not check on read, and to_pylist raises for the whole row group)."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        return [_record(table, i) for i in range(table.num_rows)]


def _record(table, i: int):
    try:
        return {c: table.column(c)[i].as_py() for c in table.column_names}
    except UnicodeDecodeError as exc:
        return ("bad_utf8", str(exc))


def _read_text(u: Unit) -> Iterator[tuple[int, str] | Reject]:
    try:
        with _open(u.path) as raw:
            data = _Decompressed(raw, u.compression, u.max_doc_bytes).read()
    except _truncation_errors() as exc:
        yield _reject(u, 0, "truncated", f"compressed stream ends early ({exc})")
        return
    except OSError as exc:
        yield _reject(u, 0, "unreadable", f"read failed ({exc})")
        return
    if isinstance(data, int):  # longer than max_doc_bytes: only its length was kept
        yield _reject(u, 0, *_too_large(data, u))
        return
    try:
        yield 0, data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield _reject(u, 0, "bad_utf8", str(exc))


def _read_hf(u: Unit, fields) -> Iterator[tuple[int, str] | Reject]:
    import datasets

    if u.format == "hub":
        name, _, split = u.path[len(HUB_PREFIX):].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
    else:
        ds = datasets.load_from_disk(u.path)
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(f"{u.path} holds several splits ({', '.join(ds)}); point at one split's directory")
    cols = [c for c in fields if c in ds.column_names]
    idx = range(u.part, len(ds), u.parts)
    if not cols:
        for record in idx:
            yield _reject(u, record, "missing_field", f"fields {list(fields)} are not columns of {u.path}")
        return
    i = 0
    # Arrow batches, as a Parquet row group is read: the same size check before any Python str.
    for batch in ds.select_columns(cols).select(idx).with_format("arrow").iter(batch_size=1024):
        yield from _table_items(u, fields, batch, idx[i : i + batch.num_rows])
        i += batch.num_rows
