"""gs:// end to end against a Cloud Storage emulator on loopback (gcp-storage-emulator), configured as
Google's clients take it: STORAGE_EMULATOR_HOST, and credentials from GOOGLE_APPLICATION_CREDENTIALS
(a service-account key made here, its token endpoint a local server), so Beam's GCS filesystem reads
the inputs as it would in production. prepare reads gs:// and writes gs://, verify and stats read
the output, train streams steps from it: the same bytes as a local run."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from steppack.cli import main
from steppack.shards import fs, read_manifest
from steppack.shards.verify import verify

from .test_prepare_support import REPO, SAMPLES, output_bytes, prepare

BUCKET = "corpus"
ARGS = ["--text-field", "Problem:\n{problem}\n\nSolution:\n{solution}", "--seq-len", "256", "--rows-per-step", "8",
        "--unit-mb", "0.05", "--workers", "2", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Token(http.server.BaseHTTPRequestHandler):
    """An OAuth token endpoint that grants any request (what the key's token_uri points at)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": "test-token", "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _service_account_key(path, token_uri: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "steppack-test", "private_key_id": "1", "private_key": pem,
        "client_email": "steppack-test@steppack-test.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": token_uri}))


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """A bucket on a Cloud Storage emulator that every process of the job reaches through the environment."""
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(emulator):
        pytest.skip("gcp-storage-emulator is not installed: pip install -e '.[test]'")
    pytest.importorskip("google.cloud.storage", reason="apache-beam[gcp] is not installed: pip install -e '.[gcp]'")
    port = _free_port()
    proc = subprocess.Popen([emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                             "--default-bucket", BUCKET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    token = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Token)
    threading.Thread(target=token.serve_forever, daemon=True).start()
    key = tmp_path / "key.json"
    _service_account_key(key, f"http://127.0.0.1:{token.server_address[1]}/token")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "steppack-test")
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "the emulator did not start"
                time.sleep(0.1)
        yield f"gs://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        token.shutdown()


def test_prepare_reads_and_writes_gs_and_verify_stats_and_train_read_it(tmp_path, gcs, capsys):
    fs.write_bytes(f"{gcs}/in/math500.jsonl", open(os.path.join(SAMPLES, "math", "math500.jsonl"), "rb").read())
    local = str(tmp_path / "local")
    assert prepare("--input", os.path.join(SAMPLES, "math", "math500.jsonl"), "--output", local, *ARGS) == 0
    out = f"{gcs}/out"
    # A process of its own, as a user runs it (Beam's filesystems keep a process's last options).
    r = subprocess.run([sys.executable, "-c", "from steppack.cli import entry; entry()", "prepare", "--input",
                        f"{gcs}/in/*.jsonl", "--output", out, *ARGS], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    want = output_bytes(local)
    for rel, data in want.items():
        if rel != "manifest.json":  # it records the input paths, which differ
            assert fs.read_bytes(f"{out}/{rel}") == data, rel
    assert [s.sha256 for s in read_manifest(out).steps] == [s.sha256 for s in read_manifest(local).steps]
    assert not fs.list_dir(f"{out}/_work") and not fs.exists(f"{out}/claim.json")
    assert verify(out) == []
    assert main(["shards", "stats", out]) == 0
    assert "steps" in capsys.readouterr().out
    metrics = tmp_path / "m.jsonl"
    assert main(["train", "--data", out, "--model", "tiny", "--context", "256", "--steps", "2", "--micro-batch", "4",
                 "--metrics", str(metrics), "--quiet"]) == 0
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1] and all(x["verified"] for x in lines)


def test_a_dataflow_dry_run_translates_the_whole_job_with_no_local_path_in_it(tmp_path, gcs, capsys):
    from steppack.pipeline.run import run

    from .test_prepare_support import parse

    fs.write_bytes(f"{gcs}/in/math500.jsonl", open(os.path.join(SAMPLES, "math", "math500.jsonl"), "rb").read())
    cfg = parse("--input", f"{gcs}/in/*.jsonl", "--output", f"{gcs}/out", *ARGS)
    beam_args = ["--runner", "DataflowRunner", "--dry_run=True", "--project", "steppack-test", "--region",
                 "us-central1", "--temp_location", f"{gcs}/tmp", "--setup_file", os.path.join(REPO, "pyproject.toml")]
    result = run(cfg, beam_args)
    assert result["dry_run"] and result["runner"] == "DataflowRunner"
    assert "nothing was submitted" in capsys.readouterr().out
    assert {f"Prepare/{t}" for t in ("ReadDocuments", "TokenizeDocs", "SpillBuckets", "PackRows", "AssignSteps",
                                     "WriteStepShards", "WriteManifest")} <= set(result["transforms"])
    # Shuffles carry descriptors and counters only (units of input, spill-file names, step tasks, the
    # stats dicts), never documents or rows: these four, and no other.
    gbk = "beam:transform:group_by_key:v1"
    shuffles = sorted(t.unique_name for t in result["pipeline"].components.transforms.values() if t.spec.urn == gbk)
    assert shuffles == ["Prepare/AssignSteps/SpreadSteps/ReshufflePerKey/GroupByKey",
                        "Prepare/PackRows/GroupSpillsByBucket", "Prepare/ReadDocuments/SpreadUnits",
                        "Prepare/SumStats/CombinePerKey/GroupByKey"]
    assert not fs.list_dir(f"{gcs}/out")  # the output is not touched
    blob = result["pipeline"].SerializeToString()
    for local in (str(tmp_path), REPO, os.path.expanduser("~")):
        assert local.encode() not in blob, local
