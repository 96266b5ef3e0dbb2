"""The steppack shard format: one Arrow IPC file per global training step, plus a manifest.

Reading and writing live here, and nothing here imports torch or Beam.
"""

import importlib

# Names resolve on first use (PEP 562): `from steppack.shards.errors import ...` and the command line's
# start-up do not pay for pyarrow and numpy (~0.5 s) until something needs them.
_HOME = {
    "ConfigError": "errors", "FormatError": "errors", "InputError": "errors", "InternalError": "errors",
    "SteppackError": "errors",
    "FORMAT_VERSION": "format", "MANIFEST_NAME": "format", "REMAINDER_FILE": "format",
    "dtype_for_vocab": "format", "step_file_name": "format", "step_schema": "format",
    "FileInfo": "manifest", "Manifest": "manifest", "MixtureInfo": "manifest", "StageInfo": "manifest", "SourceInfo": "manifest", "TokenizerInfo": "manifest",
    "read_manifest": "manifest", "write_manifest": "manifest",
    "StepFile": "reader", "open_step": "reader", "RowBlock": "rows",
    "micro_batches": "slicing", "rank_micro_batches": "slicing", "rank_rows": "slicing",
    "encode_step": "writer", "write_step": "writer",
}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'shards' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigError", "FormatError", "InputError", "InternalError", "SteppackError",
    "FORMAT_VERSION", "MANIFEST_NAME", "REMAINDER_FILE", "dtype_for_vocab", "step_file_name", "step_schema",
    "FileInfo", "Manifest", "MixtureInfo", "StageInfo", "SourceInfo", "TokenizerInfo", "read_manifest", "write_manifest",
    "StepFile", "open_step", "RowBlock", "micro_batches", "rank_micro_batches", "rank_rows",
    "encode_step", "write_step",
]
