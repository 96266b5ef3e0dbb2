"""Logging for the launcher and the local SDK worker processes, and the workers' entry point.

Beam's local worker (`apache_beam.runners.worker.sdk_worker_main`) sets the root logger to INFO
while it boots, and an import deep in Beam logs a warning about optional GCP client libraries
through the root logger, which makes Python install a stderr handler for everything at INFO. A
two-worker job then printed some thirty lines of harness chatter per worker around its summary.

`quiet_logging()` installs the stderr handler first: warnings and errors of the job itself still
print, the known start-up noise does not. Workers log ERROR and above to stderr only: what they log
below that still travels to the runner through Beam's logging service, and a failing DoFn fails the
job in the launcher with its traceback.

`quiet_grpc()` does the same for gRPC's own C-core logging, which bypasses Python's.

`import_beam()` imports Beam without the optional packages it loads at import time for features
this job never uses; the launcher and every worker pay that import before the first document.
"""

from __future__ import annotations

import logging
import os
import sys

# Messages that say nothing about the job: Beam's optional GCP clients, its boot sequence.
NOISE = (
    "apitools not found",
    "No semi_persistent_directory found",
    "Could not find a compatible bson package",  # MongoDB IO, hidden by import_beam()
    # FnApiRunner warns when workers > 1 in running mode in_memory, which is how run.py gets
    # `--workers` processes of `command()` (the multi_processing mode would run Beam's own).
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


# Optional packages `import apache_beam` loads when they are installed, for features the job never
# uses: pandas (DataFrame batch type hints; ~0.35 s of the ~1.1 s import, and `datasets` installs
# it), bson and pymongo (MongoDB IO, ~0.06 s). Beam imports each inside try/except ImportError.
BEAM_UNUSED = ("pandas", "bson", "pymongo")


def import_beam():
    """`import apache_beam` with BEAM_UNUSED hidden (unless already imported), and return it.
    They import normally afterwards: `datasets`, which reads HF sources, needs pandas."""
    hidden = [m for m in BEAM_UNUSED if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # makes `import m` raise ImportError
    try:
        import apache_beam
    finally:
        for m in hidden:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return apache_beam


SAMPLING_PERIOD_MS = 20
"""Longest sleep of the state sampler in a local worker (Beam's default: 200 ms)."""


def short_state_sampling() -> None:
    """Beam's worker runs a thread per bundle that samples which step is running, sleeping up to
    200 ms between samples, and the bundle's end joins it ("May have to wait up to
    sampling_period_ms", statesampler_fast.pyx): the tokenize and pack bundles each ended
    0.1-0.2 s after their last element, on the job's critical path. Beam has no option for the
    period, so the default of the sampler's constructor is set, if it is the one this expects."""
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
        init.__defaults__ = (SAMPLING_PERIOD_MS,)


def command() -> str:
    """The command line of a local worker process."""
    return f"{sys.executable} -m pipeline.worker"


def run_harness() -> None:
    """Beam's SDK worker with this process's environment and sys.argv; returns when the runner
    closes the control channel."""
    import_beam()
    from apache_beam.runners.worker import sdk_worker_main

    short_state_sampling()
    sdk_worker_main.main(sys.argv)


def main() -> None:
    from steppack.cli import exit_now

    from . import alloc
    from .warm import ENV, hand_off

    alloc.lean()  # first: a zygote's child takes this process's environment
    if os.environ.get(ENV):  # a local job's pre-started worker (warm.py) runs it, if still there
        code = hand_off(os.environ[ENV])
        if code is not None:
            exit_now(code)
    quiet_logging(logging.ERROR)
    run_harness()
    # The work is done and the harness has flushed its logs; Beam's gRPC channels and thread
    # pools take ~0.3 s of interpreter teardown per worker, and the local runner closes its
    # workers one after the other before the launcher returns.
    exit_now(0)


if __name__ == "__main__":
    main()
