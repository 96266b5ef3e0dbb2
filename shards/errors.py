"""The exceptions every part of steppack raises.

`SteppackError` and its subclasses are user-facing: the CLI prints their message (what was found,
what was expected, what to do next) without a traceback and exits non-zero. `InternalError` is
for broken invariants inside steppack itself: it is a bug, and the CLI lets its traceback through.
"""

from __future__ import annotations


class SteppackError(Exception):
    """A problem the user can fix: bad input, bad configuration, an incomplete output."""


class FormatError(SteppackError):
    """A shard directory, step file or manifest that does not match the format."""


class ConfigError(SteppackError):
    """Flags or a config file that contradict each other or the data."""


class InputError(SteppackError):
    """An input that cannot be read at all (missing path, unreadable tokenizer)."""


class InternalError(Exception):
    """An invariant of steppack itself was broken: please report it with the traceback."""
