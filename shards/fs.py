"""Opening files by path or URI: local paths directly, `gs://`, `s3://`, `hdfs://` through
pyarrow's filesystems, any other fsspec scheme through fsspec. `gs://` goes to a Cloud Storage
emulator instead when STORAGE_EMULATOR_HOST is set, as with Google's own client libraries.

Local writes go to a temporary name first, are flushed to the disk (fsync) and renamed into place
(the directory flushed too), so neither a reader nor a crash ever sees a half-written file; object
stores make a finished upload visible at once, so they are written directly (a retried write
replaces the object with identical bytes).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from .errors import InputError

# pyarrow is imported where it is used: `is_local` and `join` are needed by the command line
# before anything is read, and pyarrow takes ~0.3 s to import.


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(local_path(base), *parts)
    return posixpath.join(base, *parts)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if uri.startswith("gs://") and emulator:
        return _gcs_emulator(emulator), uri[len("gs://"):]
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {uri}: no filesystem for its scheme ({exc})") from exc
    return PyFileSystem(FSSpecHandler(fs)), path


def _gcs_emulator(host: str) -> pafs.FileSystem:
    """gs:// on a Cloud Storage emulator: STORAGE_EMULATOR_HOST, as Google's own clients (and so
    Beam's, which reads the inputs) take it. The emulator needs no credentials."""
    import datetime

    import pyarrow.fs as pafs

    scheme, _, address = host.rpartition("://")
    return pafs.GcsFileSystem(anonymous=True, endpoint_override=address, scheme=scheme or "http",
                              retry_time_limit=datetime.timedelta(seconds=15))


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    if is_local(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def size(uri: str) -> int:
    if is_local(uri):
        return os.path.getsize(local_path(uri))
    fs, path = filesystem(uri)
    return fs.get_file_info(path).size


def list_dir(uri: str) -> list[str]:
    """Base names of the files directly inside directory `uri` (empty if it does not exist)."""
    import pyarrow.fs as pafs

    if is_local(uri):
        p = local_path(uri)
        return sorted(os.listdir(p)) if os.path.isdir(p) else []
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos)


def remove(uri: str) -> None:
    """Delete file `uri` if it exists."""
    import pyarrow.fs as pafs

    if is_local(uri):
        if os.path.lexists(local_path(uri)):
            os.unlink(local_path(uri))
        return
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_file(path)


def remove_tree(uri: str) -> None:
    """Delete directory `uri` and everything under it, if it exists. On an object store a
    directory is only a prefix shared by object names (no object of its own to test or delete),
    so every object under the prefix is deleted."""
    if is_local(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    fs, path = filesystem(uri)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    try:
        fs.delete_dir(path)  # a directory marker, where the store has one
    except OSError:
        pass


def remove_dir_if_empty(uri: str) -> None:
    """Delete directory `uri` if it exists and holds nothing (on an object store: its marker)."""
    if is_local(uri):
        try:
            os.rmdir(local_path(uri))
        except OSError:
            pass
        return
    if not list_dir(uri):
        fs, path = filesystem(uri)
        try:
            fs.delete_dir(path)
        except OSError:
            pass


@contextmanager
def atomic_output(uri: str) -> Iterator[pa.NativeFile]:
    """A writable stream whose contents appear at `uri` only once the block ends without error."""
    import pyarrow as pa

    if is_local(uri):
        path = local_path(uri)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + ".")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared like any other file
        try:
            with pa.OSFile(tmp, "wb") as f:
                yield f
            _fsync(tmp)  # the bytes reach the disk before the name does: a crash leaves old or new, whole
            os.replace(tmp, path)
            _fsync(d)  # and the rename itself
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            yield f


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create file `uri` holding `data` unless it exists; True when this call created it.

    Local: one atomic O_CREAT | O_EXCL open. An object store offers no such call through pyarrow: the
    object is written when absent and read back, so of two writers racing within the same moment
    the one whose bytes are read back wins (the other gets False); callers that must be sure
    check again before they commit (pipeline/claim.py does)."""
    if is_local(uri):
        path = local_path(uri)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if exists(uri):
        return False
    write_bytes(uri, data)
    return read_bytes(uri) == data


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data) -> None:
    """Write `data` (bytes or any buffer, e.g. a pyarrow Buffer) to `uri` atomically."""
    with atomic_output(uri) as f:
        f.write(data)
