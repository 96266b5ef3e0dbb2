"""The shard format, version 1: the one place that defines it.

An output directory holds one Arrow IPC file per global training step and a manifest that is
written last (its presence is the commit marker)::

    OUT/
      manifest.json                 written last; absent means "incomplete"
      steps/step-00000000.arrow     one Arrow IPC file per step, exactly rows_per_step rows
      remainder/remainder.arrow     rows that did not fill a last step (may be absent)
      rejects/…                     records the prepare job could not use, with the reason
      report.json                   what the prepare job read, kept and dropped

Each step file has the schema below. A row is `seq_len` tokens; `doc_lens` are the lengths of the
document pieces packed into it, in order (their sum is `seq_len` minus the padding at the row's
end), `doc_ids` a stable 64-bit hash of each piece's source document and `source` the index of
each piece's source in the manifest. 1024 rows x 4096 uint32 tokens = 16 MiB of tokens per step.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from .errors import ConfigError, FormatError

FORMAT_NAME = "steppack"
FORMAT_VERSION = 1
# Versions this code reads. A newer writer bumps FORMAT_VERSION; old readers then refuse its files.
READABLE_VERSIONS = (1,)

# The most tokens one step may hold (rows_per_step x seq_len): 2**30 is 4 GiB of uint32 per step
# file, which readers and writers hold in memory at once; DeepSeekMath's 7B steps are 10M tokens.
MAX_STEP_TOKENS = 1 << 30

MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
STEPS_DIR = "steps"
REMAINDER_FILE = "remainder/remainder.arrow"
REJECTS_DIR = "rejects"
CLAIM_NAME = "claim.json"  # exists while a prepare run writes the output (pipeline/claim.py)
MARKER_NAME = ".steppack"  # says a directory is a steppack output, so a run may clear what it wrote

# Schema metadata keys (Arrow metadata is bytes -> bytes).
META_FORMAT = b"steppack.format"
META_VERSION = b"steppack.format_version"
META_SEQ_LEN = b"steppack.seq_len"
META_DTYPE = b"steppack.dtype"
META_STEP = b"steppack.step"
META_BATCH_ROWS = b"steppack.batch_rows"

# Rows per Arrow record batch: every batch but the last holds exactly this many, chosen so that a
# batch holds about 2 MiB of tokens (128 rows at 4096 x uint32). Each batch costs ~30 us to locate
# in a freshly opened file against ~1.3 ms to copy its tokens, so fewer, larger batches keep the
# reader near the memmap limit; over object storage a rank fetches only the batches holding its
# rows, in reads large enough for object stores. A 1024-row step splits on batch boundaries for
# world sizes up to 8; larger worlds read part of a batch (locally: only the pages they touch).
BATCH_TARGET_BYTES = 2 << 20


def default_batch_rows(seq_len: int, dtype: str) -> int:
    return max(1, BATCH_TARGET_BYTES // (seq_len * np.dtype(dtype).itemsize))


DTYPES = {"uint16": pa.uint16(), "uint32": pa.uint32()}

COMPRESSIONS = (None, "zstd")


def dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest token dtype that holds every id of a vocabulary of `vocab_size` tokens."""
    if vocab_size <= 0:
        raise FormatError(f"vocabulary size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise FormatError(f"vocabulary of {vocab_size} tokens does not fit in uint32")


def numpy_dtype(dtype: str) -> np.dtype:
    check_dtype(dtype)
    return np.dtype(dtype)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise FormatError(f"token dtype {dtype!r} is not one of {sorted(DTYPES)}")


def arrow_array(values: np.ndarray) -> pa.Array:
    """A 1-d numpy array of integers as an Arrow array, without a copy. Not `pa.array`: pyarrow
    imports pandas on its first conversion to or from numpy (~0.45 s per process)."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise TypeError(f"arrow_array takes a 1-d integer array, got {values.dtype} of shape {values.shape}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def numpy_view(array: pa.Array) -> np.ndarray:
    """The values of an Arrow integer array without nulls as a numpy view (see arrow_array)."""
    if not pa.types.is_integer(array.type) or array.null_count:
        raise TypeError(f"numpy_view takes an integer array without nulls, got {array.type}")
    dtype = np.dtype(str(array.type))
    data = array.buffers()[1]
    if data is None:  # Arrow lets an empty array have no data buffer
        return np.zeros(0, dtype)
    return np.frombuffer(data, dtype, count=len(array), offset=array.offset * dtype.itemsize)


def step_schema(seq_len: int, dtype: str, step: int | None = None, batch_rows: int | None = None) -> pa.Schema:
    """The Arrow schema of a step file (and of the remainder file, whose step is -1)."""
    check_dtype(dtype)
    if seq_len <= 0:
        raise FormatError(f"seq_len must be positive, got {seq_len}")
    batch_rows = default_batch_rows(seq_len, dtype) if batch_rows is None else batch_rows
    meta = {
        META_FORMAT: FORMAT_NAME.encode(),
        META_VERSION: str(FORMAT_VERSION).encode(),
        META_SEQ_LEN: str(seq_len).encode(),
        META_DTYPE: dtype.encode(),
        META_STEP: str(-1 if step is None else step).encode(),
        META_BATCH_ROWS: str(batch_rows).encode(),
    }
    return pa.schema(
        [
            pa.field("tokens", pa.list_(DTYPES[dtype], seq_len), nullable=False),
            pa.field("doc_lens", pa.list_(pa.int32()), nullable=False),
            pa.field("doc_ids", pa.list_(pa.uint64()), nullable=False),
            pa.field("source", pa.list_(pa.uint16()), nullable=False),
        ],
        metadata=meta,
    )


@functools.lru_cache(maxsize=16)
def _bare_schema(seq_len: int, dtype: str) -> pa.Schema:
    return step_schema(seq_len, dtype).remove_metadata()


def step_file_name(step: int) -> str:
    """Path of step `step`'s file relative to the output directory."""
    if step < 0:
        raise FormatError(f"step must be >= 0, got {step}")
    return f"{STEPS_DIR}/step-{step:08d}.arrow"


def parse_metadata(meta: dict, where: str) -> dict:
    """Read and check a step file's schema metadata (bytes keys and values); refuse files of an
    unknown version."""
    if meta.get(META_FORMAT) != FORMAT_NAME.encode():
        raise FormatError(f"{where} is not a steppack step file (no '{META_FORMAT.decode()}' metadata)")
    version = int(meta.get(META_VERSION, b"0"))
    check_version(version, where)
    seq_len = int(meta[META_SEQ_LEN])
    dtype = meta[META_DTYPE].decode()
    check_dtype(dtype)
    batch_rows = int(meta.get(META_BATCH_ROWS, b"0"))
    if batch_rows <= 0:
        raise FormatError(f"{where} has no valid '{META_BATCH_ROWS.decode()}' metadata; re-run prepare")
    return {"version": version, "seq_len": seq_len, "dtype": dtype, "step": int(meta[META_STEP]), "batch_rows": batch_rows}


def check_schema(schema: pa.Schema, seq_len: int, dtype: str, where: str) -> None:
    """The columns and types of a step file are exactly the format's."""
    expected = _bare_schema(seq_len, dtype)
    if not schema.equals(expected, check_metadata=False):
        raise FormatError(f"{where} has schema {schema.remove_metadata()}, expected {expected}")


def parse_schema_metadata(schema: pa.Schema, where: str) -> dict:
    """`parse_metadata` of the schema's metadata, and `check_schema`."""
    meta = parse_metadata(schema.metadata or {}, where)
    check_schema(schema, meta["seq_len"], meta["dtype"], where)
    return meta


def check_step_size(rows_per_step: int, seq_len: int, where: str) -> None:
    """Refuse a step larger than MAX_STEP_TOKENS before anything is allocated for it."""
    if rows_per_step * seq_len > MAX_STEP_TOKENS:
        raise ConfigError(f"{where}: a step of {rows_per_step:,} rows x {seq_len:,} tokens is "
                          f"{rows_per_step * seq_len:,} tokens, above the {MAX_STEP_TOKENS:,} a step file may hold "
                          "(it is held in memory whole); use fewer rows per step or shorter rows")


def check_version(version: int, where: str) -> None:
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"{where} was written in steppack format version {version}; this steppack reads "
            f"version(s) {', '.join(map(str, READABLE_VERSIONS))}. Upgrade steppack, or re-run prepare "
            "with this version."
        )
