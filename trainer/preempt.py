"""Preemption: SIGTERM or SIGUSR1 asks the run to stop after the step in progress.

Schedulers (Slurm, Kubernetes, spot instances, torchrun's agent when it is itself told to stop) send
SIGTERM, then kill the job a grace period later; SIGUSR1 is what Slurm's `--signal` sends ahead of a
time limit. The handler only records the request. The training loop adds it to the step's first
all-reduce, so every rank sees any rank's request at the same step, finishes that step, writes a
checkpoint and exits 0 saying so; `--resume` then continues as after `--exit-after`.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Installed for the duration of a `with` block (main thread only; elsewhere it never fires)."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
