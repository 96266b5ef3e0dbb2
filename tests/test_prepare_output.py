"""The output directory: one writer at a time (the claim), and a run deletes only what steppack wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from steppack.pipeline import claim
from steppack.shards import read_manifest
from steppack.shards.format import CLAIM_NAME, MARKER_NAME
from steppack.shards.verify import verify

from .test_prepare_support import SAMPLES, prepare

INPUT = os.path.join(SAMPLES, "math", "math500.jsonl")


def argv(out) -> list[str]:
    return ["--input", INPUT, "--text-field", "{problem} {solution}", "--output", str(out), "--seq-len", "64",
            "--rows-per-step", "4", "--workers", "1"]


def tree(d) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
            for r, _, files in os.walk(d) for f in files}


def write_claim(out, pid: int, run_id: str = "0" * 32) -> None:
    os.makedirs(out, exist_ok=True)
    rec = {"run_id": run_id, "host": socket.gethostname(), "pid": pid, "started": "2026-12-01T00:00:00+00:00"}
    (out / CLAIM_NAME).write_text(json.dumps(rec))


def test_a_directory_that_is_not_a_steppack_output_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    for name, text in {"steps/notes.txt": "mine", "rejects/list.txt": "mine too", "report.json": "{}"}.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = tree(out)
    assert prepare(*argv(out)) == 2
    err = capsys.readouterr().err
    assert "is not empty and is not a steppack output" in err and "report.json" in err
    assert tree(out) == before
    assert prepare(*argv(out), "--overwrite") == 2  # --overwrite replaces steppack outputs only
    assert tree(out) == before


def test_a_second_run_into_an_output_being_written_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(["sleep", "60"])  # a live process holds the claim
    try:
        write_claim(out, holder.pid)
        before = tree(out)
        assert prepare(*argv(out)) == 2
        err = capsys.readouterr().err
        assert f"is being written by another prepare run {'0' * 32} (process {holder.pid}" in err
        assert tree(out) == before  # nothing written, the claim kept
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_left_by_a_killed_run_is_reported_with_how_to_clear_it(tmp_path, capsys):
    out = tmp_path / "out"
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_claim(out, gone.pid)
    assert prepare(*argv(out)) == 2
    err = capsys.readouterr().err
    assert "which is no longer running" in err and f"delete {out / CLAIM_NAME} to clear it" in err
    os.remove(out / CLAIM_NAME)
    assert prepare(*argv(out)) == 0
    assert verify(str(out)) == []


def test_a_run_marks_its_output_and_releases_its_claim(tmp_path):
    out = tmp_path / "out"
    assert prepare(*argv(out)) == 0
    names = os.listdir(out)
    assert MARKER_NAME in names and CLAIM_NAME not in names
    report = json.loads((out / "report.json").read_text())
    assert len(report["run_id"]) == 32


def test_a_prepare_without_quiet_prints_its_summary(tmp_path, capsys):
    # The tests run prepare --quiet; the summary a user sees is printed only without it.
    from steppack.cli import main

    out = tmp_path / "out"
    assert main(["prepare", *argv(out)]) == 0
    text = capsys.readouterr().out
    assert f"prepared {out}" in text and "set aside in remainder/remainder.arrow" in text and "(in rejects/)" in text


def test_a_failed_run_leaves_an_output_the_next_run_replaces(tmp_path):
    out = tmp_path / "out"
    assert prepare(*argv(out)) == 0
    os.remove(out / "manifest.json")  # as a run killed before its commit leaves it (its claim released)
    assert prepare(*argv(out)) == 0
    assert verify(str(out)) == []


def test_replacing_an_output_keeps_the_files_steppack_did_not_write(tmp_path):
    out = tmp_path / "out"
    assert prepare(*argv(out)) == 0
    (out / "NOTES.md").write_text("which run this was")
    assert prepare(*argv(out), "--seq-len", "32", "--overwrite") == 0
    assert (out / "NOTES.md").read_text() == "which run this was"
    assert read_manifest(str(out)).seq_len == 32 and verify(str(out)) == []


def test_a_run_whose_claim_is_taken_while_it_runs_commits_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    clear = claim.mark_and_clear

    def then_taken(o):  # another writer takes the claim once this run holds it (deleted by hand, retaken)
        clear(o)
        os.remove(os.path.join(o, CLAIM_NAME))
        write_claim(out, os.getpid(), run_id="f" * 32)

    monkeypatch.setattr(claim, "mark_and_clear", then_taken)
    assert prepare(*argv(out)) == 2
    assert "was taken from this run while it ran" in capsys.readouterr().err
    # The step that commits (in a worker process) saw the other claim: no manifest, no report.
    assert not (out / "manifest.json").exists() and not (out / "report.json").exists()
    assert json.loads((out / CLAIM_NAME).read_text())["run_id"] == "f" * 32  # not released: not this run's


def test_two_prepare_processes_racing_for_one_output_one_writes_it_the_other_is_refused(tmp_path):
    out = tmp_path / "out"
    cmd = [os.path.join(os.path.dirname(sys.executable), "steppack"), "prepare", "--quiet", *argv(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    (err,) = [e for rc, e in results if rc == 2]
    # Refused while the other ran, or after it had committed (then its manifest is what stops it).
    assert "is being written by another prepare run" in err or "already holds a complete output" in err, err
    assert verify(str(out)) == [] and not (out / CLAIM_NAME).exists()
