"""prepare over S3: inputs read from and outputs written to a real S3 API (moto's server on
localhost, configured the standard AWS way: AWS_ENDPOINT_URL and keys in the environment), then
read back through the shard reader: the same bytes as a local run of the same files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from steppack.shards import open_step, read_manifest
from steppack.shards.verify import verify

from .test_prepare_support import REPO, SAMPLES, output_bytes, prepare

BUCKET = "corpus"
# Several buckets and read units (files split into parts): ranged reads of remote inputs and spills.
ARGS = ["--seq-len", "256", "--rows-per-step", "24", "--bucket-mb", "1", "--unit-mb", "0.05", "--quiet"]
SOURCES = [  # samples/job.toml's sources
    ("gsm8k", "gsm8k/train.jsonl.zst", "{question}\n\n{answer}"),
    ("math500", "math/math500.jsonl", "Problem:\n{problem}\n\nSolution:\n{solution}"),
    ("stackmathqa", "stackmathqa/*.parquet", "{Q}\n\n{A}"),
    ("mathlib3", "mathlib3/*.jsonl.gz", "text"),
    ("proofnet-tex", "proofnet/tex/*.tex", "text"),
]


@pytest.fixture
def s3(monkeypatch):
    """A boto3 client of an empty bucket on a local S3 server, which every process of the job
    (launcher, workers) reaches through the environment."""
    boto3 = pytest.importorskip("boto3", reason="boto3 (apache-beam[aws]) is not installed: pip install -e '.[test]'")
    moto_server = pytest.importorskip("moto.server", reason="moto's S3 server is not installed: pip install -e '.[test]'")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    # moto keeps its buckets in process-wide state, which outlives a server: start empty.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        srv.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))


def upload_samples(client) -> None:
    for root, _, names in os.walk(SAMPLES):
        for n in names:
            path = os.path.join(root, n)
            client.upload_file(path, BUCKET, "samples/" + os.path.relpath(path, SAMPLES))


def s3_job(tmp_path) -> str:
    lines = ["seq_len = 512", "rows_per_step = 16", "seed = 0", ""]
    for name, path, text in SOURCES:
        lines += ["[[source]]", f"name = {json.dumps(name)}", f'paths = ["s3://{BUCKET}/samples/{path}"]',
                  f"text = {json.dumps(text)}", ""]
    job = tmp_path / "s3job.toml"
    job.write_text("\n".join(lines))
    return str(job)


def test_prepare_from_and_to_s3_writes_the_bytes_of_a_local_run(tmp_path, s3):
    upload_samples(s3)
    local = str(tmp_path / "local")
    assert prepare("--config", os.path.join(SAMPLES, "job.toml"), "--output", local, *ARGS) == 0
    out = f"s3://{BUCKET}/out"
    # A process of its own: Beam's filesystems keep the options of the last pipeline made in a
    # process, and the launcher lists the inputs before it makes one.
    cmd = [sys.executable, "-c", "from steppack.cli import entry; entry()", "prepare", "--config", s3_job(tmp_path),
           "--output", out, *ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]

    want = output_bytes(local)
    got = [k for k in keys(s3, "out/") if k]  # "" is the directory marker pyarrow leaves
    assert got == sorted([*want, "report.json"])  # nothing of _work/ is left behind
    for rel, data in want.items():
        if rel != "manifest.json":  # it records the config, whose paths differ
            assert s3.get_object(Bucket=BUCKET, Key="out/" + rel)["Body"].read() == data, rel
    m, ml = read_manifest(out), read_manifest(local)
    assert [(s.file, s.sha256) for s in m.steps] == [(s.file, s.sha256) for s in ml.steps]
    assert len(m.steps) > 5 and m.remainder == ml.remainder
    assert verify(out) == []
    # The trainer's read path: a rank's slice of a remote step, through ranged reads.
    rows = range(5, 17)
    with open_step(f"{out}/{m.steps[3].file}") as remote, open_step(os.path.join(local, m.steps[3].file)) as near:
        a = remote.read_tokens_into(rows, np.zeros((len(rows), m.seq_len), np.int64))
        b = near.read_tokens_into(rows, np.zeros((len(rows), m.seq_len), np.int64))
        assert np.array_equal(a, b) and a.any()


def test_overwrite_on_s3_clears_the_previous_output(tmp_path, s3, capsys):
    s3.upload_file(os.path.join(SAMPLES, "math", "math500.jsonl"), BUCKET, "in/math500.jsonl")
    args = ["--input", f"s3://{BUCKET}/in/*.jsonl", "--text-field", "problem", "--seq-len", "512", "--quiet"]
    # A bucket that does not exist: the job's own message, before any work (a traceback before).
    assert prepare(*args, "--output", "s3://no-such-bucket/out", "--rows-per-step", "2") == 2
    err = capsys.readouterr().err
    assert "--output s3://no-such-bucket/out cannot be prepared for writing" in err and "NO_SUCH_BUCKET" in err
    out = f"s3://{BUCKET}/out"
    assert prepare(*args, "--output", out, "--rows-per-step", "2") == 0
    first = keys(s3, "out/steps/")
    assert len(first) == 9  # 19 full rows; the final padded row is in the remainder
    # A complete output is refused without --overwrite, and left as it was.
    assert prepare(*args, "--output", out, "--rows-per-step", "4") == 2
    assert keys(s3, "out/steps/") == first
    # With it, the old steps go: an object store has no directory to remove, every object under
    # the prefix is deleted (steps 4..8 of the first run used to stay next to the new manifest).
    assert prepare(*args, "--output", out, "--rows-per-step", "4", "--overwrite") == 0
    m = read_manifest(out)
    assert keys(s3, "out/steps/") == [os.path.basename(s.file) for s in m.steps] and len(m.steps) == 4
    assert not keys(s3, "out/_work/")
    assert verify(out) == []


def test_s3_input_without_boto3_says_what_to_install(tmp_path):
    # boto3 made unimportable in a fresh process: the message names the missing package and the
    # extra, instead of Beam's "Missing boto3 requirement" inside a "matches no file".
    code = ("import sys; sys.modules['boto3'] = None\n"
            "from steppack.cli import entry; entry()")
    r = subprocess.run([sys.executable, "-c", code, "prepare", "--input", "s3://corpus/in/*.jsonl",
                        "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "reading s3:// needs boto3" in r.stderr and "pip install 'steppack[s3]'" in r.stderr
    assert "Traceback" not in r.stderr
