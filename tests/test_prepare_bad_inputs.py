"""Bad inputs: malformed records go to rejects/ with the reason and the job carries on; a missing
input, an unreadable tokenizer or a finished output stop the job before any work."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from steppack.pipeline.sources import discover
from steppack.shards import read_manifest
from steppack.shards.verify import verify

from .test_prepare_support import check_round_trip, expected_documents, parse, prepare

GOOD = [f"Let x = {i}. Then x^2 = {i * i}, and the sum 1 + ... + x is {i * (i + 1) // 2}." for i in range(60)]


def jsonl(records) -> bytes:
    return "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(records)).encode()


@pytest.fixture
def bad_corpus(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    lines = jsonl(GOOD[:20]).splitlines(keepends=True)
    lines[3] = b'{"text": "unterminated\n'                      # bad JSON
    lines[5] = b'{"body": "no text field"}\n'                   # missing field
    lines[7] = b'{"text": "caf\xe9 latin-1 bytes"}\n'          # undecodable bytes
    lines[9] = b'{"text": 17}\n'                                # not a string
    lines[11] = b'{"text": "   \\n\\t  "}\n'                   # whitespace only: dropped, not rejected
    lines[13] = b'{"text": ""}\n'                               # empty: dropped
    lines[15] = b'[1, 2]\n'                                     # not an object
    lines[17] = b'{"text": "lone \\ud800 surrogate"}\n'           # valid JSON, not valid Unicode text
    (d / "mixed.jsonl").write_bytes(b"".join(lines))
    full = jsonl(GOOD[20:60] * 40)                               # 1600 records, so a cut lands mid-file
    gz = gzip.compress(full, mtime=0)
    (d / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])         # truncated gzip
    zs = zstandard.ZstdCompressor().compress(full)
    (d / "cut.jsonl.zst").write_bytes(zs[: len(zs) // 2])        # truncated zstd
    (d / "ok.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(GOOD[20:30])))
    pq.write_table(pa.table({"text": [GOOD[40], None, GOOD[41]]}), d / "nulls.parquet")
    # pyarrow does not check a string column's UTF-8 on read (to_pylist raised: the job died).
    latin = pa.array([GOOD[42].encode(), "caf\xe9".encode("latin-1")], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": latin}), d / "latin1.parquet")
    (d / "latin1.txt").write_bytes("na\xefve".encode("latin-1"))  # text file that is not UTF-8
    (d / "good.txt").write_text(GOOD[50] * 30)
    return d


def test_bad_records_are_rejected_with_reasons_and_good_ones_all_kept(tmp_path, bad_corpus):
    out = str(tmp_path / "out")
    argv = ["--input", str(bad_corpus / "*"), "--output", out, "--seq-len", "64", "--rows-per-step", "4",
            "--workers", "2"]
    assert prepare(*argv) == 0
    assert verify(out) == []
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects", "rejects.jsonl"))]
    by = {(os.path.basename(r["file"]), r["record"]): r["reason"] for r in rejects}
    assert by[("mixed.jsonl", 3)] == "bad_json"
    assert by[("mixed.jsonl", 5)] == "missing_field"
    assert by[("mixed.jsonl", 7)] == "bad_utf8"
    assert by[("mixed.jsonl", 9)] == "bad_field"
    assert by[("mixed.jsonl", 15)] == "bad_json"
    assert by[("mixed.jsonl", 17)] == "bad_utf8"  # no tokenizer takes it (tokenizers raised: the job died)
    assert by[("nulls.parquet", 1)] == "missing_field"
    assert by[("latin1.parquet", 1)] == "bad_utf8"
    assert by[("latin1.txt", 0)] == "bad_utf8"
    assert [r["reason"] for r in rejects if r["file"].endswith("cut.jsonl.gz")] == ["truncated"]
    assert [r["reason"] for r in rejects if r["file"].endswith("cut.jsonl.zst")] == ["truncated"]
    assert all(r["detail"] for r in rejects)
    # Every good document is kept and decodes back; read = kept + dropped for documents and tokens.
    report = check_round_trip(out, parse(*argv))
    d = report["documents"]
    assert d["dropped_by_reason"]["empty"] == 2
    assert d["dropped_by_reason"]["bad_json"] == 2 and d["dropped_by_reason"]["truncated"] == 2
    assert report["rejects"] == len(rejects) == 11
    gz_kept = [k for k in expected_documents(parse(*argv))[0]]
    assert len(gz_kept) == d["kept"]
    assert d["kept"] > 20 - 8 + 10 + 2 + 1 + 1 + 100  # the records before each cut are kept


ROWS = [f"Row {i}: {i} squared is {i * i}, and {i} cubed is {i ** 3}." for i in range(400)]


def damage_row_group(path, group: int) -> None:
    """Overwrite 16 bytes in the middle of one row group's text column chunk (snappy-compressed
    pages: pyarrow then refuses that row group, and only it)."""
    col = pq.ParquetFile(path).metadata.row_group(group).column(0)
    first = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    at = first + col.total_compressed_size // 2
    data[at : at + 16] = b"\xa5" * 16
    path.write_bytes(bytes(data))
    pf = pq.ParquetFile(path)
    with pytest.raises((OSError, pa.ArrowException)):
        pf.read_row_group(group)
    for g in set(range(pf.metadata.num_row_groups)) - {group}:
        assert pf.read_row_group(g).column("text").to_pylist() == ROWS[g * 100 : (g + 1) * 100]


@pytest.mark.parametrize("unit_mb", ["1", "0.001"])  # one unit reads all 4 row groups | one unit each
def test_a_damaged_parquet_row_group_costs_exactly_its_records(tmp_path, unit_mb):
    # Before: the read stopped at the damaged row group; the records of the row groups after it
    # vanished and one reject named record 0 (one unit), or none at all (the damage in unit 1 of 4),
    # while read = kept + dropped still held.
    path = tmp_path / "four.parquet"
    pq.write_table(pa.table({"text": ROWS, "n": list(range(400))}), path, row_group_size=100)
    damage_row_group(path, 1)
    out = str(tmp_path / "out")
    argv = ["--input", str(path), "--output", out, "--seq-len", "64", "--rows-per-step", "4",
            "--unit-mb", unit_mb, "--workers", "2"]
    assert len(discover(parse(*argv))[0]) == (1 if unit_mb == "1" else 4)
    assert prepare(*argv) == 0
    assert verify(out) == []
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects", "rejects.jsonl"))]
    assert [r["record"] for r in rejects] == list(range(100, 200))
    assert {(r["file"], r["reason"]) for r in rejects} == {(str(path), "unreadable")}
    assert all("row group 1 " in r["detail"] and "records 100-199" in r["detail"] for r in rejects)
    want, _ = expected_documents(parse(*argv))
    assert sorted(t for _, t in want.values()) == sorted(ROWS[:100] + ROWS[200:])
    report = check_round_trip(out, parse(*argv))  # the 300 good records decode back from the steps
    assert report["documents"] == {"read": 400, "kept": 300, "dropped": 100,
                                   "dropped_by_reason": {"unreadable": 100}}
    assert report["rejects"] == 100


def test_a_parquet_file_whose_footer_cannot_be_read_is_one_reject_and_the_job_carries_on(tmp_path):
    # Before: discovery raised InputError and the whole job stopped before any work.
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"text": ROWS[:50]}), d / "good.parquet")
    pq.write_table(pa.table({"text": ROWS[50:100]}), d / "cut.parquet")
    (d / "cut.parquet").write_bytes((d / "cut.parquet").read_bytes()[:-20])  # footer and magic cut off
    out = str(tmp_path / "out")
    argv = ["--input", str(d / "*.parquet"), "--output", out, "--seq-len", "64", "--rows-per-step", "4",
            "--workers", "1"]
    assert prepare(*argv) == 0
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects", "rejects.jsonl"))]
    assert [(os.path.basename(r["file"]), r["record"], r["reason"]) for r in rejects] == [
        ("cut.parquet", 0, "unreadable")]
    assert "footer" in rejects[0]["detail"]
    report = check_round_trip(out, parse(*argv))
    assert report["documents"] == {"read": 51, "kept": 50, "dropped": 1, "dropped_by_reason": {"unreadable": 1}}


def test_a_parquet_page_whose_checksum_fails_is_rejected_not_read_as_other_text(tmp_path):
    from steppack.pipeline.sources import Reject, read_unit

    path = tmp_path / "crc.parquet"
    pq.write_table(pa.table({"text": ROWS}), path, row_group_size=100, compression="none", write_page_checksum=True)
    data = path.read_bytes()
    at = data.index(ROWS[150].encode()) + len("Row 150: 150 ")
    path.write_bytes(data[:at] + b"XXXXXXX" + data[at + 7:])  # "squared" -> "XXXXXXX": still UTF-8
    assert pq.read_table(path).column("text")[150].as_py() == ROWS[150].replace("squared", "XXXXXXX")
    cfg = parse("--input", str(path), "--output", str(tmp_path / "out"))
    got = [it for u in discover(cfg)[0] for it in read_unit(u)]
    assert [it.record for it in got if isinstance(it, Reject)] == list(range(100, 200))
    assert all("CRC" in it.detail for it in got if isinstance(it, Reject))
    assert [it for it in got if not isinstance(it, Reject)] == [(i, ROWS[i]) for i in range(400) if not 100 <= i < 200]


def test_min_and_max_chars_drop_documents_by_reason(tmp_path, bad_corpus):
    out = str(tmp_path / "out")
    argv = ["--input", str(bad_corpus / "mixed.jsonl"), "--input", str(bad_corpus / "good.txt"), "--output", out,
            "--seq-len", "64", "--rows-per-step", "2", "--min-chars", "60", "--max-chars", "1000", "--workers", "1"]
    assert prepare(*argv) == 0
    report = check_round_trip(out, parse(*argv))
    reasons = report["documents"]["dropped_by_reason"]
    assert reasons["too_long"] == 1 and reasons["too_short"] > 0
    assert report["tokens"]["dropped_by_reason"]["too_long"] > 0


def test_a_missing_input_stops_the_job_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare("--input", str(tmp_path / "nope" / "*.jsonl"), "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert "matches no file" in err and "Traceback" not in err
    assert not out.exists()


def test_an_unreadable_tokenizer_stops_the_job_before_any_work(tmp_path, bad_corpus, capsys):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    out = tmp_path / "out"
    assert prepare("--input", str(bad_corpus / "good.txt"), "--output", str(out), "--tokenizer", str(bad)) == 2
    assert "cannot load tokenizer" in capsys.readouterr().err
    assert prepare("--input", str(bad_corpus / "good.txt"), "--output", str(out),
                   "--tokenizer", str(tmp_path / "missing.json")) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert not out.exists()


def test_a_finished_output_is_kept_unless_overwrite(tmp_path, bad_corpus, capsys):
    out = str(tmp_path / "out")
    argv = ["--input", str(bad_corpus / "good.txt"), "--output", out, "--seq-len", "64", "--rows-per-step", "2",
            "--workers", "1"]
    assert prepare(*argv) == 0
    before = read_manifest(out)
    assert prepare(*argv, "--seq-len", "32") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert read_manifest(out) == before
    assert prepare(*argv, "--seq-len", "32", "--overwrite") == 0
    assert read_manifest(out).seq_len == 32 and verify(out) == []


def test_global_batch_tokens_that_seq_len_does_not_divide_names_the_nearest_values(tmp_path, capsys):
    assert prepare("--input", "x.jsonl", "--output", str(tmp_path), "--seq-len", "4096",
                   "--global-batch-tokens", "4200000") == 2
    err = capsys.readouterr().err
    assert "4,198,400 (1025 rows)" in err and "4,202,496 (1026 rows)" in err


def test_hf_save_to_disk_directory_is_an_input(tmp_path):
    import datasets

    d = str(tmp_path / "hf")
    datasets.Dataset.from_dict({"question": GOOD[:30], "answer": [str(i) for i in range(30)]}).save_to_disk(d)
    out = str(tmp_path / "out")
    argv = ["--input", d, "--text-field", "{question}\n#### {answer}", "--output", out, "--seq-len", "32",
            "--rows-per-step", "4", "--unit-mb", "0.001", "--workers", "2"]
    assert prepare(*argv) == 0
    report = check_round_trip(out, parse(*argv))
    assert report["documents"]["kept"] == 30


def test_a_misspelt_flag_is_refused_not_silently_passed_to_beam(tmp_path, capsys):
    assert prepare("--input", "x.jsonl", "--output", str(tmp_path / "o"), "--seqlen", "512") == 2
    assert "unknown flag --seqlen" in capsys.readouterr().err


def test_a_corpus_with_nothing_usable_gives_an_empty_but_complete_output(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b'{"text": "  "}\n{"nope": 1}\n')
    out = str(tmp_path / "out")
    argv = ["--input", str(d / "a.jsonl"), "--output", out, "--seq-len", "16", "--rows-per-step", "2", "--workers", "1"]
    assert prepare(*argv) == 0
    m = read_manifest(out)
    assert m.num_steps == 0 and m.remainder is None and verify(out) == []
    report = check_round_trip(out, parse(*argv))
    assert report["documents"] == {"read": 2, "kept": 0, "dropped": 2,
                                   "dropped_by_reason": {"empty": 1, "missing_field": 1}}


def test_an_input_without_a_single_record_gives_an_empty_but_complete_output(tmp_path):
    # No document, no reject: nothing at all reaches the job's statistics.
    (tmp_path / "a.jsonl").write_bytes(b"")
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "a.jsonl"), "--output", out, "--seq-len", "16", "--rows-per-step", "2"]
    assert prepare(*argv) == 0
    assert read_manifest(out).num_steps == 0 and verify(out) == []
    report = check_round_trip(out, parse(*argv))
    assert report["documents"] == {"read": 0, "kept": 0, "dropped": 0, "dropped_by_reason": {}}


def test_deeply_nested_and_oversized_json_are_rejects_with_reasons_not_a_crash(tmp_path):
    from steppack.pipeline.config import build
    from steppack.pipeline.sources import Reject, discover, read_unit

    d = tmp_path / "in"
    d.mkdir()
    (d / "odd.jsonl").write_bytes(b"\n".join([
        b'{"text": "fine"}',
        b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}",   # deeper than any parser's stack
        b'{"text": "big int", "n": 123456789012345678901234567890}',  # past 64 bits: still a record
        b'{"text": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"}',            # UTF-8, escapes, a surrogate pair
    ]) + b"\n")
    cfg = build(None, str(tmp_path), {"input": [str(d / "*.jsonl")], "output": str(tmp_path / "o")})
    got = [it for u in discover(cfg)[0] for it in read_unit(u)]
    assert got[0] == (0, "fine") and got[2] == (2, "big int") and got[3] == (3, "café é 😀")
    assert isinstance(got[1], Reject) and got[1].reason == "bad_json" and "nested too deeply" in got[1].detail


def test_lists_objects_bytes_and_booleans_in_a_template_are_rejects_not_their_repr_in_the_text(tmp_path):
    # Before: a template formatted str() of any value into the training text: "[1, 2]", "{'x': 1}",
    # "b'\\x00\\x01'", "True", "nan" (a Parquet binary, list or struct column alike), and an integer past
    # 64 bits rounded to "1.2345678901234568e+29" (orjson reads it as a float).
    d = tmp_path / "in"
    d.mkdir()
    (d / "qa.jsonl").write_bytes(b"\n".join([
        b'{"q": "What is 2 + 2?", "a": 4}',            # numbers are values a template writes out
        b'{"q": "Half of 3?", "a": 1.5}',
        b'{"q": "Which?", "a": [1, 2]}',
        b'{"q": "Where?", "a": {"x": 1}}',
        b'{"q": "True?", "a": true}',
        b'{"q": ["not", "text"], "a": "x"}',
        b'{"q": "Not a number?", "a": NaN}',           # json takes NaN (orjson does not)
        b'{"q": "Big?", "a": 123456789012345678901234567890}',  # orjson: 1.2345678901234568e+29
        b'{"q": "2**64 - 1?", "a": 18446744073709551615}',     # still an int: written exactly
    ]) + b"\n")
    q = ["First?", "Second?"]
    pq.write_table(pa.table({"q": q, "a": pa.array([b"\x00\x01", b"ok"], pa.binary())}), d / "binary.parquet")
    pq.write_table(pa.table({"q": q, "a": pa.array([[1, 2], []], pa.list_(pa.int64()))}), d / "list.parquet")
    pq.write_table(pa.table({"q": q, "a": pa.array([{"x": 1}, {"x": 2}])}), d / "struct.parquet")
    pq.write_table(pa.table({"q": q, "a": pa.array([7, 8], pa.int64())}), d / "int.parquet")
    out = str(tmp_path / "out")
    argv = ["--input", str(d / "*"), "--text-field", "{q} = {a}", "--output", out, "--seq-len", "16",
            "--rows-per-step", "2", "--workers", "1"]
    assert prepare(*argv) == 0
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects", "rejects.jsonl"))]
    by = {(os.path.basename(r["file"]), r["record"]): (r["reason"], r["detail"]) for r in rejects}
    assert sorted(by) == sorted([("qa.jsonl", i) for i in (2, 3, 4, 5, 6, 7)] + [(f, i) for f in (
        "binary.parquet", "list.parquet", "struct.parquet") for i in (0, 1)])
    assert {reason for reason, _ in by.values()} == {"bad_field"}
    assert "'a' is a list" in by[("qa.jsonl", 2)][1] and "'q' is a list" in by[("qa.jsonl", 5)][1]
    assert "'a' is a dict" in by[("qa.jsonl", 3)][1] and "'a' is a bool" in by[("qa.jsonl", 4)][1]
    assert "not a finite number" in by[("qa.jsonl", 6)][1] and "too large to write exactly" in by[("qa.jsonl", 7)][1]
    assert "bytes (a binary column" in by[("binary.parquet", 1)][1]
    want, _ = expected_documents(parse(*argv))
    assert sorted(t for _, t in want.values()) == sorted([
        "What is 2 + 2? = 4", "Half of 3? = 1.5", "2**64 - 1? = 18446744073709551615",
        "First? = 7", "Second? = 8"])
    report = check_round_trip(out, parse(*argv))
    assert report["documents"] == {"read": 17, "kept": 5, "dropped": 12, "dropped_by_reason": {"bad_field": 12}}


def test_dangling_and_looping_symlinks_and_a_directory_are_unreadable_rejects_not_skipped_or_a_crash(tmp_path):
    # Before: Beam's match left out a dangling symlink or a symlink loop without a word (its listing
    # skips a path whose size it cannot read), a direct path to one "matched no file" and stopped
    # the job, and a directory named as a .txt input stopped it with IsADirectoryError.
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.txt").write_text(GOOD[0])
    (d / "good.jsonl").write_bytes(jsonl(GOOD[1:4]))
    os.symlink(tmp_path / "gone.jsonl", d / "dangling.jsonl")
    os.symlink(tmp_path / "gone.parquet", d / "dangling.parquet")
    os.symlink("loop-b.txt", d / "loop-a.txt")
    os.symlink("loop-a.txt", d / "loop-b.txt")
    os.symlink(tmp_path / "gone.txt", tmp_path / "named.txt")
    (tmp_path / "folder.txt").mkdir()
    out = str(tmp_path / "out")
    argv = ["--input", str(d / "*"), "--input", str(tmp_path / "named.txt"), "--input", str(tmp_path / "folder.txt"),
            "--output", out, "--seq-len", "16", "--rows-per-step", "2", "--workers", "1"]
    assert prepare(*argv) == 0
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects", "rejects.jsonl"))]
    by = {os.path.relpath(r["file"], tmp_path): (r["record"], r["reason"], r["detail"]) for r in rejects}
    assert sorted(by) == ["folder.txt", "in/dangling.jsonl", "in/dangling.parquet", "in/loop-a.txt",
                          "in/loop-b.txt", "named.txt"]
    assert {(record, reason) for record, reason, _ in by.values()} == {(0, "unreadable")}
    assert "dangling symlink" in by["in/dangling.jsonl"][2] and "gone.jsonl" in by["in/dangling.jsonl"][2]
    assert "dangling symlink" in by["in/dangling.parquet"][2] and "dangling symlink" in by["named.txt"][2]
    assert "symlink loop" in by["in/loop-a.txt"][2] and "symlink loop" in by["in/loop-b.txt"][2]
    assert "a directory" in by["folder.txt"][2]
    report = check_round_trip(out, parse(*argv))
    assert report["documents"] == {"read": 10, "kept": 4, "dropped": 6, "dropped_by_reason": {"unreadable": 6}}


@pytest.mark.parametrize("name", ["gone.txt", "gone.jsonl", "gone.parquet"])
def test_a_file_that_cannot_be_opened_when_read_is_an_unreadable_reject(tmp_path, name):
    # Before: the text reader let the OSError out (the job stopped); JSONL and Parquet made a reject.
    from steppack.pipeline.sources import Reject, read_unit

    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"text": GOOD[:2]}), path)
    else:
        path.write_bytes(jsonl(GOOD[:2]) if name.endswith(".jsonl") else GOOD[0].encode())
    units = discover(parse("--input", str(path), "--output", str(tmp_path / "out")))[0]
    path.unlink()  # gone between listing and reading (an object store's file deleted, a disk lost)
    got = [it for u in units for it in read_unit(u)]
    assert [(type(it), it.record, it.reason) for it in got] == [(Reject, 0, "unreadable")]
    assert "No such file" in got[0].detail


def test_a_record_over_max_doc_bytes_is_a_too_large_reject_in_every_format(tmp_path):
    # Before: there was no cap; a record of any size was read whole, parsed and tokenized (a 50 MB
    # JSONL line took 1.8 GB of memory).
    import datasets

    cap = 4096
    mid = " ".join(GOOD)[: cap - 200]  # a long document under the cap: kept
    lines = "".join(json.dumps({"text": t}) + "\n" for t in [GOOD[0], "y" * (3 * cap), mid, GOOD[3]])
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text(lines)
    (d / "b.jsonl.gz").write_bytes(gzip.compress(lines.encode(), mtime=0))
    (d / "big.txt").write_text("w " * cap)
    (d / "small.txt").write_text(GOOD[5])
    pq.write_table(pa.table({"text": [GOOD[6], "v" * (2 * cap), GOOD[7]]}), d / "c.parquet")
    datasets.Dataset.from_dict({"text": [GOOD[8], "u" * (cap + 1)]}).save_to_disk(str(tmp_path / "hf"))
    out = str(tmp_path / "out")
    argv = ["--input", str(d / "*"), "--input", str(tmp_path / "hf"), "--max-doc-bytes", str(cap),
            "--output", out, "--seq-len", "64", "--rows-per-step", "4", "--workers", "1"]
    assert prepare(*argv) == 0
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects", "rejects.jsonl"))]
    by = {(os.path.relpath(r["file"], tmp_path), r["record"]): (r["reason"], r["detail"]) for r in rejects}
    assert by == {
        ("in/a.jsonl", 1): ("too_large", "line 2: 12,300 bytes, over max_doc_bytes 4,096 (--max-doc-bytes)"),
        ("in/b.jsonl.gz", 1): ("too_large", "line 2: 12,300 bytes, over max_doc_bytes 4,096 (--max-doc-bytes)"),
        ("in/big.txt", 0): ("too_large", "8,192 bytes, over max_doc_bytes 4,096 (--max-doc-bytes)"),
        ("in/c.parquet", 1): ("too_large", "8,192 bytes, over max_doc_bytes 4,096 (--max-doc-bytes)"),
        ("hf", 1): ("too_large", "4,097 bytes, over max_doc_bytes 4,096 (--max-doc-bytes)"),
    }
    want, _ = expected_documents(parse(*argv))
    assert sorted(t for _, t in want.values()) == sorted(
        [GOOD[0], mid, GOOD[3]] * 2 + [GOOD[5], GOOD[6], GOOD[7], GOOD[8]])
    report = check_round_trip(out, parse(*argv))
    assert report["documents"] == {"read": 15, "kept": 10, "dropped": 5, "dropped_by_reason": {"too_large": 5}}
    # 0: no limit. The default is 16 MiB.
    from steppack.pipeline.sources import Reject, read_unit

    units = discover(parse(*argv, "--max-doc-bytes", "0"))[0]
    assert not [it for u in units for it in read_unit(u) if isinstance(it, Reject)]
    assert parse("--input", "x.jsonl", "--output", out).max_doc_bytes == 16 << 20
    from steppack.pipeline.config import build

    assert build({"max_doc_bytes": 1024}, str(tmp_path), {"input": ["x.jsonl"], "output": out}).max_doc_bytes == 1024


def test_a_jsonl_line_over_the_cap_is_passed_over_in_pieces_never_held_whole(tmp_path):
    # Before: the 64 MiB line was read into one bytes object, then parsed into a 64 MiB str.
    import tracemalloc

    from steppack.pipeline.sources import read_unit

    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "before"}\n{"text": "')
        for _ in range(64):
            f.write(b"x" * (1 << 20))
        f.write(b'"}\n{"text": "after"}\n')
    units = discover(parse("--input", str(path), "--output", str(tmp_path / "out"), "--unit-mb", "1000",
                           "--max-doc-bytes", str(1 << 20)))[0]
    tracemalloc.start()
    try:
        got = [it for u in units for it in read_unit(u)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got[0] == (0, "before") and got[2] == (2, "after")
    assert got[1].reason == "too_large" and got[1].detail.startswith(f"line 2: {(64 << 20) + 12:,} bytes")
    assert peak < 4 << 20  # 64 KiB reads (1.1 MiB measured); before: 896 MiB (tracemalloc's peak)
