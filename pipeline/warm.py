"""Pre-started local workers: Beam's worker imported and the tokenizer loaded while the launcher
is still planning the job.

The local runner starts its SDK worker processes only once the pipeline runs, and each then spent
~1.4 s importing Beam's worker and ~0.4 s loading the tokenizer before its first document, while
the launcher had spent ~1.9 s importing Beam and building the pipeline with one core idle. So the
launcher starts a `Zygote` first thing: one process that imports the worker code, loads the
tokenizer and waits. When the runner launches a worker (`python -m pipeline.worker`), that small
process hands its environment, arguments and standard streams to the zygote over a Unix socket
(`hand_off`); the zygote forks a child that runs the SDK harness with them, already warm, and the
worker process waits for the child's exit status and exits with it, so the runner sees an ordinary
subprocess. The child ends when its worker process does (killed by the runner, say).

Without a zygote (another runner, or one that is gone) a worker starts cold, as before. The
zygote serves `workers` hand-offs and waits for those children; it also exits when the launcher
closes its stdin (or dies) before then. This module imports only the standard library at the
top: a worker process imports it before it knows whether it will need Beam at all.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Callable

ENV = "STEPPACK_ZYGOTE"
"""The zygote's socket path, in the environment the runner's worker processes inherit."""
_LEN = struct.Struct("!I")
_STATUS = struct.Struct("!i")


class Zygote:
    """Launcher side: start the zygote and advertise its socket; `close()` when the job ends."""

    def __init__(self, tokenizer: str, workers: int, lookups: list[str]):
        self.dir = tempfile.mkdtemp(prefix="steppack-warm-")
        self.path = os.path.join(self.dir, "worker.sock")
        try:
            self.proc = spawn(self.path, [sys.executable, "-m", "pipeline.warm", tokenizer, str(workers),
                                          json.dumps(lookups)], backlog=workers)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        os.environ[ENV] = self.path

    @classmethod
    def start(cls, tokenizer: str, workers: int, lookups: list[str]) -> "Zygote | None":
        """A started zygote, or None where there can be none (no fork or fd passing on this
        platform, no temporary directory): the workers then start cold."""
        if not (hasattr(os, "fork") and hasattr(socket, "send_fds")):
            return None
        try:
            return cls(tokenizer, workers, lookups)
        except OSError:
            return None

    @classmethod
    def for_job(cls, cfg, beam_args: list[str]) -> "Zygote | None":
        """The zygote of a local run of `cfg` (pipeline.config.JobConfig); None for any other
        runner, which starts its own workers."""
        if any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
            return None
        return cls.start(cfg.tokenizer, cfg.workers, cfg.special_tokens())

    def tokenizer_facts(self):
        """The TokenizerFacts the zygote found on loading the tokenizer, or None when it could not
        load it (the launcher then loads it itself, and reports why it fails)."""
        from .tokenize import TokenizerFacts

        line = self.proc.stdout.readline()
        try:
            d = json.loads(line)
            return TokenizerFacts(d["vocab_size"], d["ids"])
        except (ValueError, KeyError, TypeError):
            return None

    def close(self) -> None:
        if os.environ.get(ENV) == self.path:
            del os.environ[ENV]
        try:
            self.proc.stdin.close()  # the zygote's signal to go, if it is still waiting
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def hand_off(path: str) -> int | None:
    """Worker side: run this worker in a child of the zygote at `path`; its exit status, or None
    when no zygote answers (the caller then starts cold)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    env = {k: v for k, v in os.environ.items() if k != ENV}
    payload = json.dumps({"env": env, "argv": sys.argv, "cwd": os.getcwd()}).encode("utf-8")
    try:
        socket.send_fds(s, [_LEN.pack(len(payload))], [0, 1, 2])
        s.sendall(payload)
    except OSError:
        s.close()
        return None  # the zygote went away between connect and send: nothing ran yet
    status = b""
    while len(status) < _STATUS.size:
        chunk = s.recv(_STATUS.size - len(status))
        if not chunk:
            print("steppack worker: the pre-started worker process ended without an exit status "
                  "(killed?)", file=sys.stderr)
            return 1
        status += chunk
    return _STATUS.unpack(status)[0]


def spawn(path: str, command: list[str], backlog: int = 8) -> subprocess.Popen:
    """Start `command` with a Unix socket listening at `path`: its descriptor number is appended
    to the command (for `serve`); stdin and stdout are pipes to the caller."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bound and listening before the zygote even starts: a worker that comes early waits in
        # the backlog until the zygote is ready, it never finds no socket.
        listener.bind(path)
        listener.listen(max(8, backlog))
        return subprocess.Popen(command + [str(listener.fileno())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, pass_fds=[listener.fileno()])
    finally:
        listener.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("hand-off cut short")
        data += chunk
    return data


def _child(conn: socket.socket, msg: dict, fds: list[int], target: Callable[[], None]) -> None:
    """In the forked child: become the handed-off worker process, run `target`, report, exit."""
    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        os.environ.clear()
        os.environ.update(msg["env"])
        os.chdir(msg["cwd"])
        sys.argv = msg["argv"]

        def watch():  # the worker process gone (killed by the runner): so is this child
            try:
                conn.recv(1)
            finally:
                os._exit(1)

        threading.Thread(target=watch, name="steppack-hand-off-watch", daemon=True).start()
        target()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on the worker's stderr, then the status
        import traceback

        traceback.print_exc()
    try:
        conn.sendall(_STATUS.pack(code))
    except OSError:
        pass
    from steppack.cli import exit_now

    exit_now(code)


def serve(listener: socket.socket, workers: int, target: Callable[[], None]) -> None:
    """Fork a child that runs `target` as the handed-off worker process, for each of `workers`
    hand-offs; then wait for those children. Returns early if stdin closes first (the launcher is
    done, or gone)."""
    import select

    children = []
    while len(children) < workers:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            return
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        try:
            head, fds, _, _ = socket.recv_fds(conn, _LEN.size, 3)
            if len(head) < _LEN.size or len(fds) != 3:
                raise ConnectionError("bad hand-off")
            msg = json.loads(_recv_exact(conn, _LEN.unpack(head)[0]))
        except (OSError, ValueError):
            conn.close()
            continue  # that worker process sees EOF and reports; the others are unaffected
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(conn, msg, fds, target)
        conn.close()
        for fd in fds:
            os.close(fd)
        children.append(pid)
    listener.close()
    # Stay until the workers are done: they remain this process's children (and the launcher's
    # descendants, where tools that sum a job's processes look for them).
    for pid in children:
        os.waitpid(pid, 0)


def main(argv: list[str]) -> None:
    """The zygote of a local prepare job: `python -m pipeline.warm TOKENIZER WORKERS LOOKUPS FD`."""
    tokenizer, workers, lookups, fd = argv[1], int(argv[2]), json.loads(argv[3]), int(argv[4])
    import logging

    from . import alloc

    alloc.lean()  # before the tokenizer and pyarrow allocate: the forked workers inherit it
    from .worker import import_beam, quiet_logging, run_harness

    quiet_logging(logging.ERROR)  # as a cold worker logs
    # The tokenizer first: the launcher waits for its facts (one JSON line on stdout).
    from . import tokenize

    tok = tokenize.preload(tokenizer)
    facts = tokenize.TokenizerFacts.of(tok, lookups) if tok is not None else None
    sys.stdout.write(json.dumps(facts.__dict__ if facts else {}) + "\n")
    sys.stdout.flush()
    # Then what every worker imports before its first document: Beam's harness and the job's
    # DoFns (numpy, pyarrow, the readers).
    import_beam()
    from apache_beam.runners.worker import sdk_worker_main  # noqa: F401

    from . import transforms  # noqa: F401

    serve(socket.socket(fileno=fd), workers, run_harness)
    from steppack.cli import exit_now

    exit_now(0)  # no interpreter teardown of Beam's modules: the launcher waits for this exit


if __name__ == "__main__":
    main(sys.argv)
