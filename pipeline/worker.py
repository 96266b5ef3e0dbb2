"""A local worker process: Beam's SDK harness (what the FnApiRunner's `multi_processing` mode runs),
with its own terminal output cut to errors.

Beam's harness logs its start-up and shut-down at INFO on stderr (some thirty lines per worker
around the job's summary); everything it logs still reaches the launcher through Beam's logging
service, and a failing DoFn fails the job there with its traceback.
"""

from __future__ import annotations

import logging
import sys

from .logs import quiet_logging


def command() -> str:
    """The command line of a local worker process."""
    return f"{sys.executable} -m steppack.pipeline.worker"


def main() -> None:
    quiet_logging(logging.ERROR)
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
