"""The steppack shard format: one Arrow IPC file per global training step, plus a manifest.

Reading and writing live here, and nothing here imports torch or Beam.
"""

from .errors import ConfigError, FormatError, InputError, InternalError, SteppackError
from .format import FORMAT_VERSION, MANIFEST_NAME, REMAINDER_FILE, dtype_for_vocab, step_file_name, step_schema
from .manifest import FileInfo, Manifest, SourceInfo, TokenizerInfo, read_manifest, write_manifest
from .reader import StepFile, open_step
from .rows import RowBlock
from .slicing import micro_batches, rank_micro_batches, rank_rows
from .writer import encode_step, write_step

__all__ = [
    "ConfigError", "FormatError", "InputError", "InternalError", "SteppackError",
    "FORMAT_VERSION", "MANIFEST_NAME", "REMAINDER_FILE", "dtype_for_vocab", "step_file_name", "step_schema",
    "FileInfo", "Manifest", "SourceInfo", "TokenizerInfo", "read_manifest", "write_manifest",
    "StepFile", "open_step", "RowBlock", "micro_batches", "rank_micro_batches", "rank_rows",
    "encode_step", "write_step",
]
