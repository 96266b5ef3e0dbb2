"""One writer per output, and a run deletes only what steppack wrote.

`OUT/claim.json` exists while a prepare run writes OUT: its run id, host, process id and start time.
The launcher creates it exclusively before any work (`fs.create_exclusive`: an O_EXCL open on a
local disk; on an object store written when absent and read back), so a second run into the same
OUT is refused in one line naming the first. The step that commits the manifest checks first that
the claim still holds its run id, and the launcher checks again before it reports success; the
launcher releases the claim when the run ends, whatever the outcome. A run killed hard leaves its
claim behind: the next run says so, whether that process is gone (same host), and how to clear it.

`OUT/.steppack` marks a directory as a steppack output. Before a run writes, OUT must be absent,
empty, marked, claimed, or hold a manifest (an output written before the marker existed); a non-empty
directory that is none of these is refused untouched. Clearing a previous run's output then
removes steppack's own entries only: the manifest first (a half-cleared output must not look
complete), the report, the step files, the remainder, the rejects and the work area. Anything else
in OUT is left where it is.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import uuid

from steppack.shards import fs
from steppack.shards.errors import ConfigError
from steppack.shards.format import (CLAIM_NAME, MANIFEST_NAME, MARKER_NAME, REJECTS_DIR, REMAINDER_FILE, REPORT_NAME,
                                    STEPS_DIR)

from .buckets import WORK_DIR

REMAINDER_DIR = os.path.dirname(REMAINDER_FILE)
# Entries of OUT a run writes, and within its folders the names it writes (.tmp-*: an atomic write
# that was cut short).
OWN_ENTRIES = {MANIFEST_NAME, REPORT_NAME, STEPS_DIR, REMAINDER_DIR, REJECTS_DIR, WORK_DIR, CLAIM_NAME, MARKER_NAME}
OWN_NAMES = {
    STEPS_DIR: re.compile(r"(step-\d{8}\.arrow|\.tmp-.*)$"),
    REMAINDER_DIR: re.compile(r"(remainder\.arrow|\.tmp-.*)$"),
    REJECTS_DIR: re.compile(r"(rejects\.jsonl|\.tmp-.*)$"),
}
MARKER_TEXT = b"This directory is a steppack output: steppack prepare may replace the files it wrote here.\n"


def new_run_id() -> str:
    return uuid.uuid4().hex


def claim_record(run_id: str) -> dict:
    return {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def holder(out: str) -> dict | None:
    """The claim on `out`, or None when there is none. An unreadable claim counts as one (its
    run is unknown)."""
    uri = fs.join(out, CLAIM_NAME)
    if not fs.exists(uri):
        return None
    try:
        data = fs.read_bytes(uri)
    except FileNotFoundError:  # released in between
        return None
    try:
        rec = json.loads(data)
        return rec if isinstance(rec, dict) else {}
    except ValueError:
        return {}


def held_by(out: str, run_id: str) -> bool:
    rec = holder(out)
    return rec is not None and rec.get("run_id") == run_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def describe(out: str, rec: dict) -> str:
    """One line: who holds the claim on `out`, and how to clear it when that run is gone."""
    uri = fs.join(out, CLAIM_NAME)
    who = (f"run {rec.get('run_id', '?')} (process {rec.get('pid', '?')} on {rec.get('host', '?')}, "
           f"started {rec.get('started', '?')})")
    pid = rec.get("pid")
    if rec.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return (f"{out} holds a claim left by {who}, which is no longer running (killed before it could release "
                f"it): delete {uri} to clear it, then run again")
    return (f"{out} is being written by another prepare {who}; wait for it to end, or choose another --output "
            f"(if that run is gone, delete {uri})")


def acquire(out: str, run_id: str) -> None:
    """Claim `out` for this run, or raise ConfigError naming the run that holds it."""
    if fs.is_local(out):
        os.makedirs(fs.local_path(out), exist_ok=True)
    data = (json.dumps(claim_record(run_id)) + "\n").encode()
    if not fs.create_exclusive(fs.join(out, CLAIM_NAME), data):
        raise ConfigError(describe(out, holder(out) or {}))


def release(out: str, run_id: str) -> None:
    """Remove the claim if it is still this run's."""
    try:
        if held_by(out, run_id):
            fs.remove(fs.join(out, CLAIM_NAME))
    except OSError:
        pass  # the output's store is gone or read-only now; the next run reports the claim


def foreign_entries(out: str) -> list[str]:
    """What OUT holds that a steppack run does not write (paths relative to OUT)."""
    found = []
    for name in fs.list_dir(out):
        if name not in OWN_ENTRIES:
            found.append(name)
        elif name in OWN_NAMES:
            found += [f"{name}/{n}" for n in fs.list_dir(fs.join(out, name)) if not OWN_NAMES[name].match(n)]
    return found


def check_reusable(out: str) -> None:
    """Refuse a non-empty `out` that is not a steppack output, before anything is written to it."""
    names = fs.list_dir(out)
    if not names or {MARKER_NAME, MANIFEST_NAME, CLAIM_NAME} & set(names):
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise ConfigError(f"--output {out} is not empty and is not a steppack output (it holds {shown}); "
                      "choose a new or empty directory: steppack deletes only what it wrote")


def mark_and_clear(out: str) -> None:
    """Mark `out` as steppack's and remove what a previous run wrote there (own names only)."""
    if not fs.exists(fs.join(out, MARKER_NAME)):
        fs.write_bytes(fs.join(out, MARKER_NAME), MARKER_TEXT)
    for name in (MANIFEST_NAME, REPORT_NAME):
        fs.remove(fs.join(out, name))
    for d, own in OWN_NAMES.items():
        for n in fs.list_dir(fs.join(out, d)):
            if own.match(n):
                fs.remove(fs.join(out, d, n))
        fs.remove_dir_if_empty(fs.join(out, d))
    fs.remove_tree(fs.join(out, WORK_DIR))
