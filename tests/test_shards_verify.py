"""`steppack shards verify` catches every corruption it promises to, naming the file."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from shards import RowBlock, read_manifest, step_file_name, write_manifest
from shards.verify import verify
from shards.writer import file_info, to_table
from steppack.cli import main
from tests.shardgen import make_output, random_rows

SEQ, ROWS = 32, 8


@pytest.fixture
def out(tmp_path):
    d = str(tmp_path / "out")
    make_output(d, num_steps=3, rows_per_step=ROWS, seq_len=SEQ, vocab_size=500, remainder_rows=2)
    return d


def replace_step(out: str, step: int, block: RowBlock, *, seq_len=SEQ, dtype="uint32", meta_step=None):
    """Write a step file the way a buggy writer would (no checks) and make the manifest agree with its bytes,
    so that only the content checks can catch it."""
    table = to_table(block, seq_len, dtype, step if meta_step is None else meta_step)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=8)
    data = sink.getvalue().to_pybytes()
    rel = step_file_name(step)
    with open(os.path.join(out, rel), "wb") as f:
        f.write(data)
    m = read_manifest(out)
    steps = list(m.steps)
    steps[step] = dataclasses.replace(file_info(rel, block, data), tokens=steps[step].tokens)
    write_manifest(out, dataclasses.replace(m, steps=steps))


def good_block(n=ROWS, seq_len=SEQ, dtype="uint32", vocab=500):
    rows, _ = random_rows(np.random.default_rng(1), n, seq_len, vocab, eos=vocab - 1)
    return RowBlock.from_rows(rows, seq_len, dtype)


def only_problem(out):
    problems = verify(out)
    assert len(problems) == 1, problems
    return problems[0]


def test_a_sound_output_has_no_problems(out):
    assert verify(out) == []
    assert main(["shards", "verify", out]) == 0


def test_missing_manifest_means_incomplete_output(out):
    os.remove(os.path.join(out, "manifest.json"))
    assert "incomplete" in only_problem(out)


def test_missing_step_file_is_named(out):
    os.remove(os.path.join(out, step_file_name(1)))
    p = only_problem(out)
    assert step_file_name(1) in p and "missing" in p


def test_extra_step_file_is_named(out):
    with open(os.path.join(out, step_file_name(7)), "wb") as f:
        f.write(b"x")
    p = only_problem(out)
    assert step_file_name(7) in p and "not in the manifest" in p


def test_changed_byte_fails_the_checksum(out):
    path = os.path.join(out, step_file_name(2))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    p = only_problem(out)
    assert step_file_name(2) in p and "sha256" in p


def test_truncated_file_is_caught_by_its_size(out):
    path = os.path.join(out, step_file_name(0))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-100])
    p = only_problem(out)
    assert step_file_name(0) in p and "bytes" in p


def test_step_with_the_wrong_number_of_rows(out):
    block = good_block(n=ROWS - 2)
    replace_step(out, 1, block)
    problems = [p for p in verify(out) if "rows_per_step" in p]
    assert problems and step_file_name(1) in problems[0] and f"has {ROWS - 2} rows" in problems[0]


def test_step_with_the_wrong_seq_len(out):
    replace_step(out, 0, good_block(seq_len=SEQ * 2), seq_len=SEQ * 2)
    p = only_problem(out)
    assert step_file_name(0) in p and f"seq_len {SEQ * 2}" in p


def test_step_with_the_wrong_dtype(out):
    replace_step(out, 0, good_block(dtype="uint16"), dtype="uint16")
    p = only_problem(out)
    assert step_file_name(0) in p and "uint16" in p


def test_token_id_at_or_above_the_vocabulary(out):
    block = good_block()
    block.tokens[5, 3] = 500
    replace_step(out, 2, block)
    p = only_problem(out)
    assert step_file_name(2) in p and "row 5" in p and "500" in p


def test_doc_lens_that_do_not_add_up(out):
    block = good_block()
    lens = block.doc_lens.copy()
    lens[block.piece_offsets[4]] += 3  # row 4 now claims 35 tokens in a 32-token row
    replace_step(out, 1, dataclasses.replace(block, doc_lens=lens))
    p = only_problem(out)
    assert step_file_name(1) in p and "row 4" in p and "more than seq_len" in p


def test_doc_lens_that_disagree_with_the_manifest_token_count(out):
    block = good_block()
    lens = block.doc_lens.copy()
    lens[block.piece_offsets[4]] -= 1  # now one token of padding the manifest does not know about
    replace_step(out, 1, dataclasses.replace(block, doc_lens=lens))
    p = only_problem(out)
    assert step_file_name(1) in p and "doc_lens add up to" in p


def test_file_claiming_another_step_index(out):
    replace_step(out, 1, good_block(), meta_step=5)
    p = only_problem(out)
    assert step_file_name(1) in p and "step 5" in p


def test_unknown_format_version_names_the_version(out):
    path = os.path.join(out, "manifest.json")
    d = json.load(open(path))
    d["format_version"] = 3
    json.dump(d, open(path, "w"))
    assert "version 3" in only_problem(out)


def test_world_size_that_does_not_divide_is_reported(out):
    problems = verify(out, world_size=3)
    assert len(problems) == 1 and "3 ranks" in problems[0]
    assert verify(out, world_size=4, micro_batch=2) == []


def test_cli_exits_non_zero_with_one_line_per_problem(out, capsys):
    os.remove(os.path.join(out, step_file_name(0)))
    os.remove(os.path.join(out, step_file_name(2)))
    assert main(["shards", "verify", out]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and step_file_name(0) in lines[0] and step_file_name(2) in lines[1]
