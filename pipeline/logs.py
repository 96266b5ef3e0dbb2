"""Logging for the launcher: the job's warnings and errors, without Beam's and gRPC's start-up noise.

Beam's local worker (`apache_beam.runners.worker.sdk_worker_main`) sets the root logger to INFO
while it boots, and an import deep in Beam logs a warning about optional GCP client libraries
through the root logger, which makes Python install a stderr handler for everything at INFO. A
two-worker job then printed some thirty lines of harness chatter per worker around its summary.

`quiet_logging()` installs the stderr handler first: warnings and errors of the job itself still
print, the known start-up noise does not. What the local workers log travels to the launcher
through Beam's logging service, and a failing DoFn fails the job in the launcher with its traceback.

`quiet_grpc()` does the same for gRPC's own C-core logging, which bypasses Python's.
"""

from __future__ import annotations

import logging
import os
import sys

# Messages that say nothing about the job: Beam's optional GCP clients, its boot sequence.
NOISE = (
    "apitools not found",
    "No semi_persistent_directory found",
    "Could not find a compatible bson package",  # MongoDB IO, which the job does not use
    # FnApiRunner asks for its multi_processing mode when workers > 1; run.py gives it the same
    # subprocess workers through its own command (steppack.pipeline.worker), in the in_memory mode.
    "If direct_num_workers is not equal to 1",
)


GRPC_VERBOSITY = "GRPC_VERBOSITY"


def quiet_grpc() -> None:
    """gRPC's C core logs at INFO on stderr unless told otherwise: when the local runner shuts its
    servers down while a worker's stream is still open (the job is finished by then), the worker
    printed `chttp2_transport.cc:1403] ... Got goaway [2] ... Cancelling all calls` (seen in ~1 of
    20 bench jobs, more often when the machine is busy). gRPC reads GRPC_VERBOSITY when it loads,
    so this sets it to ERROR in the environment before the launcher imports Beam and before it
    starts any worker process, which inherit it; a user's own setting is kept."""
    os.environ.setdefault(GRPC_VERBOSITY, "ERROR")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(n in msg for n in NOISE)


def quiet_logging(level: int = logging.WARNING) -> None:
    """A stderr handler at `level` on the root logger, without the known noise (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_steppack", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_DropNoise())
    handler._steppack = True
    root.addHandler(handler)
