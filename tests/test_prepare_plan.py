"""`prepare --plan`: estimates from a seeded sample, against what the job then does."""

from __future__ import annotations

import json
import os

from .test_prepare_support import SAMPLES, prepare


def _plan(capsys, *argv) -> dict:
    capsys.readouterr()
    assert prepare(*argv, "--plan", "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_a_plan_that_reads_every_source_whole_gives_the_jobs_own_counts(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config", os.path.join(SAMPLES, "deepseekmath-7b-mix.toml"), "--output", str(out), "--workers", "1"]
    est = _plan(capsys, *argv, "--sample-mb", "100")
    assert not out.exists()  # nothing written
    assert all(s["sampled"] == 1 for s in est["sources"])
    assert prepare(*argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert est["documents"] == report["documents"]["kept"]
    assert est["tokens"] == report["tokens"]["kept"]
    assert [s["tokens"] for s in est["sources"]] == [s["tokens"] for s in report["sources"]]
    # Rows are tokens / seq_len: packing's padding and cut ends make the job's a little fewer.
    assert report["steps"] <= est["steps"] <= report["steps"] * 1.1 + 1
    passes = {s["name"]: s["passes"] for s in report["mixture"]["sources"]}
    for s in est["sources"]:
        assert abs(s["passes"] - passes[s["name"]]) <= 0.1 * passes[s["name"]] + 0.02, (s, passes)


def test_a_sampled_plan_scales_its_counts_and_says_how_much_it_read(tmp_path, capsys):
    argv = ["--config", os.path.join(SAMPLES, "job.toml"), "--output", str(tmp_path / "out"), "--seq-len", "128",
            "--rows-per-step", "8", "--unit-mb", "0.02"]
    whole, part = _plan(capsys, *argv, "--sample-mb", "100"), _plan(capsys, *argv, "--sample-mb", "0.02")
    assert min(s["sampled"] for s in part["sources"]) < 0.5
    again = _plan(capsys, *argv, "--sample-mb", "0.02")  # seeded: the same sample every time
    timing = ("tokens_per_cpu_second", "core_hours")
    assert {k: v for k, v in part.items() if k not in timing} == {k: v for k, v in again.items() if k not in timing}
    assert 0.7 * whole["tokens"] < part["tokens"] < 1.3 * whole["tokens"]
    capsys.readouterr()
    assert prepare(*argv, "--plan", "--sample-mb", "0.02") == 0
    text = capsys.readouterr().out
    assert "estimates from a sample, nothing written" in text and "core-hours of tokenizing" in text
