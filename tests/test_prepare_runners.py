"""Same input + config + seed => byte-identical output, whatever runs the job.

--workers 1, --workers 2 (FnApiRunner, multi-process) and the PortableRunner against a local job
service with an EXTERNAL worker pool in separate processes: the closest local mimic of Dataflow,
where the SDK harness is a process the launcher never forked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from steppack.shards.verify import verify

from .test_prepare_support import REPO, SAMPLES, output_bytes, prepare

# Small steps and several buckets, so the plan has slices that span buckets.
ARGS = ["--config", os.path.join(SAMPLES, "job.toml"), "--seq-len", "256", "--rows-per-step", "24",
        "--bucket-mb", "1", "--unit-mb", "0.05", "--seed", "3"]
# A mixture with weights, repeated sources and a per-step row shuffle: the same promise.
MIX_ARGS = ["--config", os.path.join(SAMPLES, "deepseekmath-7b-mix.toml"), "--seq-len", "256", "--rows-per-step", "24",
            "--steps", "30", "--bucket-mb", "1", "--unit-mb", "0.05", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


@pytest.fixture
def external_services(tmp_path):
    """A Beam job service and an EXTERNAL worker pool, each its own process; the venv first on PATH."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=REPO)
    job_port, pool_port = free_port(), free_port()
    logs = [open(tmp_path / n, "w") for n in ("job_service.log", "worker_pool.log")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                          "--port", str(job_port)], env=env, stdout=logs[0], stderr=subprocess.STDOUT, cwd=REPO),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          "--service_port", str(pool_port)], env=env, stdout=logs[1], stderr=subprocess.STDOUT,
                         cwd=REPO),
    ]
    try:
        wait_for_port(job_port, procs[0])
        wait_for_port(pool_port, procs[1])
        yield job_port, pool_port
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_output_is_byte_identical_for_one_two_workers_and_external_worker_pool(tmp_path, external_services):
    job_port, pool_port = external_services
    outs = {}
    for name, extra in [
        ("w1", ["--workers", "1"]),
        ("w2", ["--workers", "2"]),
        ("portable", ["--runner", "PortableRunner", f"--job_endpoint=localhost:{job_port}",
                      "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]),
    ]:
        for job, args in (("plain", ARGS), ("mixture", MIX_ARGS)):
            out = str(tmp_path / name / job)
            assert prepare(*args, "--output", out, *extra) == 0
            assert verify(out) == []
            outs[name, job] = output_bytes(out)
    for job in ("plain", "mixture"):
        first = outs["w1", job]
        assert "manifest.json" in first and len([k for k in first if k.startswith("steps/")]) > 5
        for name in ("w2", "portable"):
            assert sorted(outs[name, job]) == sorted(first), f"{name} wrote other files ({job})"
            for k in first:
                assert outs[name, job][k] == first[k], f"{k} differs between --workers 1 and {name} ({job})"


def test_a_different_seed_gives_a_different_order(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert prepare(*ARGS, "--output", a, "--workers", "1") == 0
    assert prepare(*ARGS, "--output", b, "--workers", "1", "--seed", "4") == 0
    fa, fb = output_bytes(a), output_bytes(b)
    assert fa["steps/step-00000000.arrow"] != fb["steps/step-00000000.arrow"]
