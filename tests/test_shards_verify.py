"""`steppack shards verify` catches every corruption it promises to, naming the file."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from steppack.shards import RowBlock, read_manifest, step_file_name, write_manifest
from steppack.shards.verify import verify
from steppack.shards.writer import file_info, to_table
from steppack.cli import main
from tests.shardgen import make_output, random_rows, write_output

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
    """Rows of documents of their own (ids from 10**6: the fixture's documents keep theirs)."""
    rows, _ = random_rows(np.random.default_rng(1), n, seq_len, vocab, eos=vocab - 1, first_doc=10**6)
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


# --- document ids: two documents must not share one ---------------------------------------------
# Hand-built rows of 8 tokens; a document's tokens are its id (so a row reads as its documents).


def row(*docs, seq_len=8):
    """A row of (doc_id, length[, source]) pieces, padded with 499."""
    tokens, lens, ids, srcs = [], [], [], []
    for d in docs:
        doc_id, n, src = (*d, 0) if len(d) == 2 else d
        tokens += [doc_id % 499] * n
        lens.append(n)
        ids.append(doc_id)
        srcs.append(src)
    return tokens + [499] * (seq_len - len(tokens)), lens, ids, srcs


def hand_built(tmp_path, steps, remainder=(), n_sources=1):
    out = str(tmp_path / "hand")
    write_output(out, steps, seq_len=8, remainder=remainder, vocab_size=500, n_sources=n_sources)
    return out


def test_documents_cut_across_rows_and_steps_are_not_mistaken_for_shared_ids(tmp_path):
    # concat: 9 starts mid-row, fills a row, ends at the start of a row (rows shuffled apart);
    # bestfit: 10 is a full-row chunk plus a last chunk between two other documents.
    out = hand_built(tmp_path, [
        [row((1, 3), (9, 5)), row((10, 8))],
        [row((9, 8)), row((11, 3), (10, 2), (12, 3))],
    ], remainder=[row((9, 2), (4, 6))])
    assert verify(out) == []


def test_two_documents_sharing_an_id_are_caught_with_where_they_are(tmp_path):
    # Two pieces of id 2 both end mid-row (another document follows): one id, two documents.
    out = hand_built(tmp_path, [
        [row((2, 5), (1, 3)), row((3, 4), (4, 4))],
        [row((2, 6), (5, 2)), row((7, 8))],
    ])
    p = only_problem(out)
    assert "document id 0000000000000002" in p and "shared by more than one document" in p
    assert "step 0 row 0" in p and "step 1 row 0" in p and "unique id" in p and "--overwrite" in p
    assert main(["shards", "verify", out]) == 1


def test_a_concat_document_cut_again_among_the_bucket_ends_is_one_document(tmp_path):
    # Document 1: its first piece ends a row; the piece that ended its bucket was packed with the
    # other buckets' ends and cut again (mid-row, ends the row); its last piece starts a row.
    out = hand_built(tmp_path, [[row((9, 4), (1, 4)), row((8, 4), (1, 4))], [row((1, 3), (7, 5)), row((6, 8))]])
    assert verify(out) == []
    # A third piece that starts mid-row is one too many.
    out = hand_built(tmp_path / "more", [[row((9, 4), (1, 4)), row((8, 4), (1, 4))], [row((5, 3), (1, 5)), row((6, 8))]])
    assert "0000000000000001" in only_problem(out)


def test_a_shared_id_between_a_step_and_the_remainder_is_located(tmp_path):
    # Both pieces of id 3 end mid-row (each is followed by another document).
    out = hand_built(tmp_path, [[row((3, 4), (4, 4)), row((5, 8))]], remainder=[row((3, 2), (6, 6))])
    p = only_problem(out)
    assert "0000000000000003" in p and "step 0 row 0" in p and "remainder row 0" in p and "end mid-row" in p


def test_one_id_in_two_sources_is_two_documents(tmp_path):
    # Each count alone is fine (one piece starts mid-row, one ends mid-row), but the sources differ.
    out = hand_built(tmp_path, [[row((1, 3, 0), (2, 5, 0)), row((2, 4, 1), (6, 4, 1))]], n_sources=2)
    p = only_problem(out)
    assert "0000000000000002" in p and "source src0" in p and "source src1" in p


def test_many_shared_ids_are_listed_up_to_ten_then_counted(tmp_path):
    steps = [[row((k, 4), (1000 + k + 100 * s, 4)) for k in range(12)] for s in range(2)]
    problems = verify(hand_built(tmp_path, steps))
    assert len(problems) == 11
    assert all("shared by more than one document" in p for p in problems)
    assert "2 more document ids" in problems[-1]


@pytest.mark.parametrize("path", ["/dev/zero", "../other/steps/step-00000000.arrow", "remainder/../../x.arrow",
                                  "steps/step-00000001.arrow"])
def test_a_remainder_path_outside_the_output_or_not_the_remainder_is_refused_unread(tmp_path, path):
    out = str(tmp_path / "out")
    make_output(out, num_steps=2, rows_per_step=4, seq_len=16, vocab_size=100, seed=0, remainder_rows=2)
    m = json.loads(open(os.path.join(out, "manifest.json")).read())
    m["remainder"]["file"] = path
    open(os.path.join(out, "manifest.json"), "w").write(json.dumps(m))
    problems = verify(out)
    assert len(problems) == 1, problems
    assert ("a path outside the output" in problems[0] if ".." in path or path.startswith("/")
            else f"manifest lists {path} as the remainder" in problems[0]), problems
