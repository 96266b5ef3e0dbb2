"""Mixtures and the row shuffle end to end: exact per-step quotas, repetition, stages, ablation
pairs (determinism across runners: test_prepare_runners), and steps that are random samples of rows (no length curriculum)."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction

import numpy as np
import pytest

from steppack.shards import open_step, read_manifest
from steppack.shards.stats import compute
from steppack.shards.verify import verify

from .test_prepare_support import SAMPLES, check_round_trip, parse, prepare
from steppack.cli import main as steppack_main

RECIPE = os.path.join(SAMPLES, "deepseekmath-7b-mix.toml")
WEIGHTS = [Fraction(56, 100), Fraction(4, 100), Fraction(10, 100), Fraction(20, 100), Fraction(10, 100)]


def rows_by_source(out: str) -> np.ndarray:
    """(steps, sources) rows counted in the step files themselves, each row's one source."""
    m = read_manifest(out)
    q = np.zeros((m.num_steps, len(m.sources)), np.int64)
    for s, info in enumerate(m.steps):
        with open_step(os.path.join(out, info.file)) as f:
            b = f.read()
        first = b.source[b.piece_offsets[:-1]]
        for i in range(b.num_rows):
            assert (b.row_source(i) == first[i]).all(), f"step {s} row {i} mixes sources"
        q[s] = np.bincount(first, minlength=len(m.sources))
    return q


def assert_on_quota(q: np.ndarray, weights, rows_per_step: int) -> None:
    assert (q.sum(axis=1) == rows_per_step).all()
    done = np.cumsum(q, axis=0)
    for s in range(len(q)):
        for i, w in enumerate(weights):
            assert abs(done[s, i] - w * rows_per_step * (s + 1)) < 1, (s, i)


def test_bestfit_steps_are_random_samples_of_rows_not_a_length_curriculum(tmp_path):
    # Before rows were shuffled after packing, the first 21 of these 38 steps held only
    # single-document rows (longest documents first) and the length trend was -0.38.
    out = str(tmp_path / "out")
    assert prepare("--config", os.path.join(SAMPLES, "job.toml"), "--output", out, "--packing", "bestfit") == 0
    m = read_manifest(out)
    multi = []
    for info in m.steps:
        with open_step(os.path.join(out, info.file)) as f:
            multi.append(int((np.diff(f.read().piece_offsets) > 1).sum()))
    half = len(multi) // 2
    assert 0.3 < sum(multi[:half]) / sum(multi) < 0.7
    assert abs(compute(out, m)["length_trend"]["correlation_with_step"]) < 0.25


def test_the_7b_recipe_gives_exact_quotas_at_every_prefix_and_loses_no_document(tmp_path):
    out = str(tmp_path / "out")
    argv = ["--config", RECIPE, "--output", out, "--rows-per-step", "37"]
    assert prepare(*argv) == 0
    assert verify(out) == []
    m = read_manifest(out)
    assert [s.source_rows for s in m.steps] == rows_by_source(out).tolist()
    assert_on_quota(rows_by_source(out), WEIGHTS, 37)
    mix = m.mixture
    assert [st.weights for st in mix.stages] == [[0.56, 0.04, 0.1, 0.2, 0.1]]
    # No `steps`: as many as the data gives before the first source runs out, nothing repeated.
    assert max(mix.passes) <= 1 and sorted(mix.passes)[-1] > 0.9
    assert m.remainder.source_rows == mix.remainder_rows
    check_round_trip(out, parse(*argv))  # every document exactly once, steps + remainder


def test_short_sources_are_repeated_and_their_passes_counted(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert steppack_main(["prepare", "--config", RECIPE, "--output", out, "--rows-per-step", "37",
                          "--steps", "120"]) == 0
    printed = capsys.readouterr().out
    assert verify(out) == []
    m = read_manifest(out)
    assert m.num_steps == 120
    q = rows_by_source(out)
    assert_on_quota(q, WEIGHTS, 37)
    used = q.sum(axis=0)
    assert m.mixture.passes == pytest.approx((used / np.array(m.mixture.rows_per_pass)).tolist())
    assert m.mixture.passes[1] > 4  # algebraic-stack: 38 rows asked for 177.6
    assert "passes     deepseekmath-corpus" in printed
    assert "warning    algebraic-stack is repeated" in printed


def test_stages_follow_one_another_with_their_own_quotas(tmp_path):
    # The recipe's sources, their weights moved into two stages (the last one open-ended).
    shutil.copytree(SAMPLES, tmp_path / "s")
    job = tmp_path / "s" / "stages.toml"
    job.write_text(open(RECIPE).read().replace("weight = ", "# weight = ") + (
        "\n[[stage]]\nsteps = 10\nweights = { deepseekmath-corpus = 3, common-crawl = 1 }\n"
        "\n[[stage]]\nweights = { arxiv = 1, github-code = 1 }\n"))
    out = str(tmp_path / "out")
    assert prepare("--config", str(job), "--output", out, "--rows-per-step", "8") == 0
    assert verify(out) == []
    m = read_manifest(out)
    first, second = m.mixture.stages
    assert first.steps == 10 and second.steps == m.num_steps - 10 > 0
    q = rows_by_source(out)
    assert (q[:10] == [6, 0, 0, 0, 2]).all() and (q[10:] == [0, 0, 4, 4, 0]).all()


def test_ablation_pair_differs_only_in_the_changed_source_rows(tmp_path):
    # DeepSeekMath picked its corpus by training on outputs that differ in one source: every other
    # source's rows must be byte-identical and in the same steps and positions.
    samples = tmp_path / "s"
    shutil.copytree(SAMPLES, samples)
    os.remove(samples / "proofnet" / "tex" / "Putnam.tex")
    outs = []
    for name, base in (("full", SAMPLES), ("ablated", str(samples))):
        out = str(tmp_path / name)
        assert prepare("--config", os.path.join(base, "deepseekmath-7b-mix.toml"), "--output", out,
                       "--rows-per-step", "16", "--steps", "20") == 0
        outs.append(out)
    arxiv = 2
    changed = 0
    for s in range(20):
        with open_step(os.path.join(outs[0], f"steps/step-{s:08d}.arrow")) as a, \
                open_step(os.path.join(outs[1], f"steps/step-{s:08d}.arrow")) as b:
            x, y = a.read(), b.read()
        sx, sy = x.source[x.piece_offsets[:-1]], y.source[y.piece_offsets[:-1]]
        assert (sx == sy).all()  # every source's rows sit in the same positions
        for i in range(x.num_rows):
            if sx[i] == arxiv:
                changed += not np.array_equal(x.tokens[i], y.tokens[i])
                continue
            assert np.array_equal(x.tokens[i], y.tokens[i]) and np.array_equal(x.row_doc_ids(i), y.row_doc_ids(i))
    assert changed > 0  # the ablated source itself did change


def test_a_weighted_source_without_a_full_row_stops_the_job_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")
    code = steppack_main(["prepare", "--quiet", "--config", RECIPE, "--output", out, "--seq-len", "40000",
                          "--rows-per-step", "1", "--steps", "3"])
    err = capsys.readouterr().err
    assert code != 0 and "packs into no full row of 40000 tokens" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(out, "manifest.json"))
