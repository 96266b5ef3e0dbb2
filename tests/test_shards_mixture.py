"""Mixtures through `verify`, `stats` and `show`: hand-built outputs whose rows each hold one source,
each step taking its quota of rows per source (tests/shardgen.py `make_mixture_output`)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from steppack.shards import read_manifest, write_manifest
from steppack.shards.verify import verify
from steppack.cli import main
from tests.shardgen import make_mixture_output, quotas, read_block, rewrite_step

R, SEQ = 8, 16
WEIGHTS = [0.6, 0.2, 0.2]  # 4.8, 1.6, 1.6 rows a step: running totals are never exact


@pytest.fixture
def out(tmp_path):
    d = str(tmp_path / "mix")
    make_mixture_output(d, stages=[(6, WEIGHTS), (4, [0.25, 0.25, 0.5])], rows_per_step=R, seq_len=SEQ,
                        remainder_rows=[1, 0, 2])
    return d


def change_manifest(out, **fields):
    write_manifest(out, dataclasses.replace(read_manifest(out), **fields))


def change_mixture(out, **fields):
    m = read_manifest(out)
    change_manifest(out, mixture=dataclasses.replace(m.mixture, **fields))


def test_the_test_quotas_keep_every_running_total_within_a_row():
    q = quotas(WEIGHTS, 50, R)
    assert (q.sum(axis=1) == R).all()
    target = np.outer(np.arange(1, 51), np.array(WEIGHTS) * R)
    assert np.abs(q.cumsum(axis=0) - target).max() < 1


def test_a_sound_mixture_has_no_problems(out, capsys):
    assert verify(out) == []
    assert main(["shards", "verify", out]) == 0
    assert "a mixture of 3 sources in 2 stages" in capsys.readouterr().out


def test_a_repeated_source_may_hold_each_document_once_per_pass(tmp_path):
    # Source 0 packs into 10 rows, the steps take 24 of them: 2.4 passes, its documents up to 3 times.
    out = str(tmp_path / "rep")
    m = make_mixture_output(out, stages=[(6, [0.5, 0.5])], rows_per_step=R, seq_len=SEQ, rows_per_pass=[10, 24])
    assert m.mixture.passes == [2.4, 1.0]
    assert verify(out) == []
    # The same rows claimed as one pass of 24 rows: now the repeats are documents sharing ids.
    change_mixture(out, rows_per_pass=[24, 24], passes=[1.0, 1.0])
    problems = verify(out)
    assert problems and all("shared by more than one document" in p for p in problems)


def test_a_step_off_its_quota_is_caught(tmp_path):
    # Weights 1/2, 1/2 of 4 rows ask for 2 + 2 every step; 3 + 1 then 1 + 3 puts both running
    # totals a whole row off after step 0, though every step has its 4 rows.
    out = str(tmp_path / "q")
    q = np.array([[3, 1], [1, 3], [2, 2], [2, 2]])
    make_mixture_output(out, stages=[(4, [0.5, 0.5])], rows_per_step=4, seq_len=SEQ, step_quotas=q)
    problems = verify(out)
    assert len(problems) == 2, problems
    assert "steps 0..0 hold 3 rows of source src0" in problems[0] and "asks for 2.00" in problems[0]
    assert "steps 0..0 hold 1 rows of source src1" in problems[1]
    assert all("manifest.json" in p and "quotas" in p and "--overwrite" in p for p in problems)


def test_a_row_mixing_two_sources_is_caught(out):
    block = read_block(out, 2)
    r = int(np.flatnonzero(np.diff(block.piece_offsets) >= 2)[0])
    source = block.source.copy()
    k = int(block.piece_offsets[r]) + 1
    source[k] = (source[k] + 1) % 3
    rewrite_step(out, 2, dataclasses.replace(block, source=source))
    p = [x for x in verify(out) if "step-00000002.arrow" in x]
    assert len(p) == 1 and f"row {r} holds pieces of sources" in p[0] and "one source only" in p[0]


def test_rows_per_source_that_differ_from_the_manifest_are_caught(out):
    block = read_block(out, 1)
    src0 = np.flatnonzero(block.source[block.piece_offsets[:-1]] == 0)[0]  # a row of source 0 ...
    source = block.source.copy()
    source[block.piece_offsets[src0]:block.piece_offsets[src0 + 1]] = 1  # ... relabelled source 1
    rewrite_step(out, 1, dataclasses.replace(block, source=source))
    p = [x for x in verify(out) if "step-00000001.arrow holds" in x]
    assert len(p) == 1 and "rows per source, the manifest lists" in p[0]


def test_stages_that_do_not_cover_the_steps_are_caught(out):
    m = read_manifest(out)
    change_mixture(out, stages=m.mixture.stages[:1])
    assert any("the mixture's stages cover 6 steps, the output has 10" in p for p in verify(out))


def test_source_rows_that_do_not_fill_a_step_are_caught(out):
    m = read_manifest(out)
    steps = list(m.steps)
    steps[3] = dataclasses.replace(steps[3], source_rows=[5, 2, 2])
    change_manifest(out, steps=steps)
    problems = verify(out)
    assert any("source_rows of steps/step-00000003.arrow add up to 9, not rows_per_step 8" in p for p in problems)


def test_remainder_rows_that_differ_from_the_mixture_are_caught(out):
    change_mixture(out, remainder_rows=[0, 1, 2])
    assert any("remainder's source_rows [1, 0, 2] differ from mixture.remainder_rows [0, 1, 2]" in p
               for p in verify(out))


def test_passes_that_disagree_with_the_rows_are_caught(out):
    m = read_manifest(out)
    change_mixture(out, passes=[1.0, 2.0, 1.0])
    assert any("source src1 gave" in p and "2 passes" in p for p in verify(out))


def test_stats_shows_targets_against_the_rows_of_each_stage(out, capsys):
    assert main(["shards", "stats", out, "--json"]) == 0
    mix = json.loads(capsys.readouterr().out)["mixture"]
    assert [st["steps"] for st in mix["stages"]] == [6, 4] and mix["stages"][1]["first_step"] == 6
    src0 = mix["sources"][0]
    assert src0["target"] == [0.6, 0.25]
    # Stage 1: 6 steps x 4.8 rows = 28.8 -> 29 rows of 48 (the quota rule); stage 2: exactly 2 a step.
    assert src0["actual"] == [pytest.approx(29 / 48), pytest.approx(0.25)]
    assert 0 < src0["max_prefix_deviation_rows"] < 1
    assert src0["max_step_deviation"] == pytest.approx(max(abs(q / R - 0.6) for q in quotas(WEIGHTS, 6, R)[:, 0]))
    # One pass over source 0 is its 38 rows: 37 in the steps, 1 in the remainder.
    assert src0["passes"] == pytest.approx(37 / 38) and src0["rows_per_pass"] == 38 and src0["remainder_rows"] == 1
    assert main(["shards", "stats", out]) == 0
    text = capsys.readouterr().out
    assert "mixture        2 stages (steps 0..5 | 6..9)" in text
    assert "src0                  60.00% ->  60.42% |  25.00% ->  25.00%" in text and "0.97 passes" in text


def test_show_step_gives_the_composition_of_a_mixture_step(out, capsys):
    m = read_manifest(out)
    assert main(["shards", "show", out, "--step", "7", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["mixture_stage"] == 2 and view["rows"] == R
    assert [x["rows"] for x in view["sources"]] == m.steps[7].source_rows
    assert [x["weight"] for x in view["sources"]] == [0.25, 0.25, 0.5]
    assert sum(x["tokens"] for x in view["sources"]) == view["tokens"] == m.steps[7].tokens
    assert view["documents"] == m.steps[7].documents and view["pieces"] == m.steps[7].pieces
    assert main(["shards", "show", out, "--step", "7"]) == 0
    text = capsys.readouterr().out
    assert "mixture stage 2 of 2" in text and "weight" in text
