"""Where the record batches of a memory-mapped Arrow IPC file lie: the footer's blocks and each
batch's buffer table, read straight from the flatbuffers (Arrow's File.fbs / Message.fbs).

`StepFile` reads a local, uncompressed step file this way: the schema metadata, and each batch's
token and piece-list buffers as zero-copy views, without building pyarrow objects (a RecordBatch
of four columns costs 7-40 us, the upper end with caches cold after a 2 MiB copy, next to 0.1-0.3
ms of copying the batch's tokens). pyarrow reads remote and compressed files, and checks the
whole schema of any file when asked (`StepFile.check_schema`, which `verify` calls).

Layout (Arrow columnar format, "IPC File Format"): the file ends with the footer flatbuffer, its
int32 length and "ARROW1". Footer.recordBatches is a vector of Block structs (offset: int64,
metaDataLength: int32, bodyLength: int64; 24 bytes). A block starts with 0xFFFFFFFF, the int32
metadata length and a Message flatbuffer whose header is a RecordBatch table (length: int64,
nodes: [FieldNode], buffers: [Buffer {offset, length: int64}], compression); buffer offsets are
relative to the body, which follows the metadata. Buffers are listed depth-first per column: the
step schema's column 0 (fixed_size_list<uint16|uint32>) owns buffers 0-2, the values being 2.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from .errors import FormatError

MAGIC = b"ARROW1"
_RECORD_BATCH = 3  # MessageHeader union: Schema 1, DictionaryBatch 2, RecordBatch 3
_u16 = struct.Struct("<H").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i64 = struct.Struct("<q").unpack_from
_block = struct.Struct("<qi4xq").unpack_from  # Block: offset, metaDataLength, (pad), bodyLength


class Batch(NamedTuple):
    rows: int
    body: int
    """Absolute file offset of the batch's body."""
    body_len: int
    table: tuple
    """The Buffer structs, flat: offset (relative to the body), length, offset, length, ..."""
    compressed: bool

    @property
    def count(self) -> int:
        return len(self.table) // 2

    def buffer(self, i: int) -> tuple[int, int]:
        """(absolute offset, length) of buffer i, checked to lie inside the body."""
        offset, length = self.table[2 * i], self.table[2 * i + 1]
        if offset < 0 or length < 0 or offset + length > self.body_len:
            raise FormatError(f"buffer {i} of the record batch at byte {self.body} lies outside its body")
        return self.body + offset, length


def _field(buf, table: int, index: int) -> int:
    """Absolute position of field `index` of the table at `table`, or 0 when it is absent."""
    vtable = table - _i32(buf, table)[0]
    vlen = _u16(buf, vtable)[0]
    at = 4 + 2 * index
    if at >= vlen:
        return 0
    off = _u16(buf, vtable + at)[0]
    return table + off if off else 0


def _deref(buf, pos: int) -> int:
    return pos + _u32(buf, pos)[0]


def _footer(buf) -> tuple[memoryview, int]:
    """The footer flatbuffer and the position of its root table."""
    n = len(buf)
    if n < 18 or buf[n - 6 :] != MAGIC:
        raise FormatError("not an Arrow IPC file (no ARROW1 trailer)")
    size = _i32(buf, n - 10)[0]
    start = n - 10 - size
    if size <= 0 or start < 8:
        raise FormatError(f"Arrow IPC footer length {size} does not fit the file")
    footer = memoryview(buf)[start : n - 10]
    return footer, _deref(footer, 0)


def _string(buf, pos: int) -> bytes:
    at = _deref(buf, pos)
    return bytes(buf[at + 4 : at + 4 + _u32(buf, at)[0]])


def blocks(buf) -> list[tuple[int, int, int]]:
    """(offset, metaDataLength, bodyLength) of every record batch, from the file footer."""
    footer, root = _footer(buf)
    pos = _field(footer, root, 3)  # Footer.recordBatches
    if not pos:
        return []
    vec = _deref(footer, pos)
    count = _u32(footer, vec)[0]
    return [_block(footer, vec + 4 + 24 * i) for i in range(count)]


def metadata(buf) -> dict[bytes, bytes]:
    """The schema's custom metadata (Footer.schema.custom_metadata), as pyarrow's schema.metadata."""
    footer, root = _footer(buf)
    pos = _field(footer, root, 1)  # Footer.schema
    if not pos:
        return {}
    schema = _deref(footer, pos)
    pos = _field(footer, schema, 2)  # Schema.custom_metadata
    if not pos:
        return {}
    vec = _deref(footer, pos)
    out = {}
    for i in range(_u32(footer, vec)[0]):
        kv = _deref(footer, vec + 4 + 4 * i)
        k, v = _field(footer, kv, 0), _field(footer, kv, 1)
        out[_string(footer, k) if k else b""] = _string(footer, v) if v else b""
    return out


def batch(buf, block: tuple[int, int, int]) -> Batch:
    """The row count and buffer table of the record batch at `block`."""
    offset, meta_len, body_len = block
    if offset < 8 or offset + meta_len + body_len > len(buf) or _i32(buf, offset)[0] != -1:
        raise FormatError(f"record batch at byte {offset} lies outside the file or has no message marker")
    msg = memoryview(buf)[offset + 8 : offset + meta_len]
    root = _deref(msg, 0)
    kind = _field(msg, root, 1)  # Message.header_type
    if not kind or msg[kind] != _RECORD_BATCH:
        raise FormatError(f"message at byte {offset} is not a record batch")
    rb = _deref(msg, _field(msg, root, 2))  # Message.header
    length = _field(msg, rb, 0)
    rows = _i64(msg, length)[0] if length else 0
    bpos = _field(msg, rb, 2)
    table = ()
    if bpos:
        vec = _deref(msg, bpos)
        table = _int64s(_u32(msg, vec)[0] * 2)(msg, vec + 4)  # Buffer structs: offset, length
    return Batch(rows, offset + meta_len, body_len, table, bool(_field(msg, rb, 3)))


@functools.lru_cache(maxsize=16)
def _int64s(n: int):
    return struct.Struct(f"<{n}q").unpack_from
