"""A progress bar over the step files, drawn only where someone watches it.

`verify` and `stats` read every step file once: at 100,000 steps of 16 MiB that is minutes, and a
silent terminal looks hung. The bar goes to stderr and only when stderr is a terminal, so that a
pipe, a log file or a test captures the plain output and nothing else (`steppack shards stats OUT
2>&1 | tee log` gets no bar; `stats --json > s.json` on a terminal gets one, and a clean file).
`TQDM_DISABLE=1` turns it off on a terminal too (tqdm reads its own environment variables).
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def no_progress(items: Iterable[T], *, total: int, desc: str) -> Iterable[T]:
    """What the pure modules use by default: the items, untouched."""
    return items


def step_bar(items: Iterable[T], *, total: int, desc: str) -> Iterator[T] | Iterable[T]:
    """`items` wrapped in a tqdm bar on stderr when stderr is a terminal; else `items` itself."""
    if not _is_tty(sys.stderr):
        return items
    from tqdm import tqdm

    # leave=False: the bar clears itself when done, so the report that follows stands alone.
    return tqdm(items, total=total, desc=desc, unit="file", leave=False, file=sys.stderr, dynamic_ncols=True)


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
