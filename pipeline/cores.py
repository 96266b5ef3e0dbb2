"""Spare cores: whether a worker's tokenizer should run its second thread now.

A local job runs one worker process per core. Each tokenizing with two threads (four threads on
two cores, preempting each other mid-batch) took a median 9% longer and 12% more CPU than one
thread each (x4 bench corpus, 7 pairs of full jobs alternating; docs/prepare.md, "Runners"). But
with one thread, the worker left last leaves a core idle while it finishes (the shares differ by
~3%: 1-3 s). So a worker's tokenizer runs one thread while the other cores are busy and both of
its threads when at least `threshold` cores are spare; the `tokenizers` library reads
TOKENIZERS_PARALLELISM at every call, so the switch takes effect with the next batch.

`spare_cores` is the arithmetic; `CoreWatch` samples the machine's busy time (/proc/stat) and this
process's CPU time; without /proc/stat (not Linux) it makes no decision at all.
"""

from __future__ import annotations

import os
import time

PARALLELISM = "TOKENIZERS_PARALLELISM"


def spare_cores(cores: int, busy_s: float, own_s: float, wall_s: float) -> float:
    """Cores that processes other than this one left unused over an interval of `wall_s`
    seconds, in which the machine was busy `busy_s` CPU seconds, `own_s` of them this process's."""
    return cores - max(0.0, busy_s - own_s) / max(wall_s, 1e-9)


class CoreWatch:
    """`parallel()`: whether the tokenizer should use more than one thread now (None: no reading).

    Made with a first sample; until `period` has passed and a second one shows spare cores it
    says False: one thread until the machine is seen idle.
    """

    def __init__(self, period: float = 0.5, threshold: float = 1.5, stat_path: str = "/proc/stat"):
        self.period, self.threshold, self.stat_path = period, threshold, stat_path
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()
        self.state = False

    def _sample(self) -> tuple[float, float, float] | None:
        """(monotonic time, machine busy CPU s, this process's CPU s), or None without /proc/stat."""
        try:
            with open(self.stat_path, "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        # cpu user nice system idle iowait irq softirq [steal ...]: steal is time the host gave to
        # another guest, idle and iowait nobody's.
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
        t = os.times()
        return time.monotonic(), (user + nice + system + irq + softirq) / self.hz, t.user + t.system

    def parallel(self) -> bool | None:
        if self.last is None:
            return None
        now = time.monotonic()
        if now - self.last[0] >= self.period:
            sample = self._sample()
            if sample is None:
                return None
            t0, busy0, own0 = self.last
            t1, busy1, own1 = sample
            self.last = sample
            self.state = spare_cores(self.cores, busy1 - busy0, own1 - own0, t1 - t0) >= self.threshold
        return self.state

    def apply(self) -> None:
        """Set TOKENIZERS_PARALLELISM for the next tokenizer call, when a decision is due."""
        want = self.parallel()
        if want is not None:
            value = "true" if want else "false"
            if os.environ.get(PARALLELISM) != value:
                os.environ[PARALLELISM] = value
