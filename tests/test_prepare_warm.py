"""The pre-started worker hand-off (pipeline/warm.py), with real processes and sockets.

A stand-in target replaces Beam's harness, so what the forked child receives can be seen: the
worker process's environment, arguments, working directory and standard streams, its exit status
on the way back, and the child's end when the worker process is killed. A whole prepare job
through the zygote is in test_prepare_e2e (every local run goes through it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pipeline import warm

ZYGOTE = r"""
import json, os, socket, sys, time
from pipeline import warm

def target():
    print(json.dumps({"x": os.environ.get("STEPPACK_TEST_X"), "argv": sys.argv, "cwd": os.getcwd(),
                      "pid": os.getpid(), "zygote_env": os.environ.get(warm.ENV)}), flush=True)
    if "--sleep" in sys.argv:
        time.sleep(60)
    sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)

warm.serve(socket.socket(fileno=int(sys.argv[-1])), int(sys.argv[1]), target)
"""

WORKER = "import sys; from pipeline import warm; code = warm.hand_off(sys.argv[1]); sys.exit(99 if code is None else code)"


def start_zygote(tmp_path, workers: int) -> tuple[subprocess.Popen, str]:
    path = str(tmp_path / "z.sock")
    return warm.spawn(path, [sys.executable, "-c", ZYGOTE, str(workers)]), path


def hand_off(path: str, *args: str, cwd, env_x: str) -> subprocess.Popen:
    env = dict(os.environ, STEPPACK_TEST_X=env_x, **{warm.ENV: path})
    return subprocess.Popen([sys.executable, "-c", WORKER, path, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_child_runs_with_the_worker_process_environment_arguments_and_streams(tmp_path):
    zygote, path = start_zygote(tmp_path, workers=2)
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = hand_off(path, "one", "3", cwd=tmp_path / "a", env_x="first")
        second = hand_off(path, "two", "0", cwd=tmp_path / "b", env_x="second")
        out1, _ = first.communicate(timeout=60)
        out2, _ = second.communicate(timeout=60)
        got1, got2 = json.loads(out1), json.loads(out2)  # printed by the child into the worker's stdout
        assert (got1["x"], got1["argv"][-2:], got1["cwd"]) == ("first", ["one", "3"], str(tmp_path / "a"))
        assert (got2["x"], got2["argv"][-2:], got2["cwd"]) == ("second", ["two", "0"], str(tmp_path / "b"))
        assert got1["zygote_env"] is None  # not passed on: a worker's own subprocesses start cold
        assert {got1["pid"], got2["pid"]}.isdisjoint({first.pid, second.pid, zygote.pid})
        assert (first.returncode, second.returncode) == (3, 0)  # the child's exit status comes back
        zygote.wait(timeout=30)  # served both, waited for both, gone
        assert zygote.returncode == 0
    finally:
        zygote.kill()


def test_killing_the_worker_process_ends_its_child(tmp_path):
    zygote, path = start_zygote(tmp_path, workers=1)
    try:
        worker = hand_off(path, "--sleep", cwd=tmp_path, env_x="x")
        child = json.loads(worker.stdout.readline())["pid"]
        os.kill(child, 0)  # alive
        worker.send_signal(signal.SIGKILL)  # what the runner does to a worker it gives up on
        worker.wait(timeout=10)
        zygote.wait(timeout=30)  # the zygote reaps its child once the child has ended
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    finally:
        zygote.kill()


def test_without_a_zygote_the_worker_starts_cold(tmp_path):
    assert warm.hand_off(str(tmp_path / "nobody-listens.sock")) is None


def test_the_zygote_leaves_when_the_launcher_closes_its_stdin(tmp_path):
    zygote, path = start_zygote(tmp_path, workers=2)
    zygote.stdin.close()
    assert zygote.wait(timeout=30) == 0
    assert warm.hand_off(path) is None  # nobody serves that socket any more
