"""Pure pieces of the prepare job: keys, the step plan, config merging, text making, splitting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given
from hypothesis import strategies as st

from steppack.pipeline.config import build, rows_from_batch_tokens, text_fields
from steppack.pipeline.plan import Slice, Stream, doc_id, make_plan, permutation, quotas, shuffle_key
from steppack.pipeline.schedule import deal_order, loads_of
from steppack.pipeline.sources import detect_format, make_text
from steppack.pipeline.tokenize import split_text
from steppack.pipeline.transforms import SumDicts
from steppack.shards.errors import ConfigError


def test_doc_ids_and_shuffle_keys_are_stable_known_values():
    # Pinned: a change here changes every output's order and ids; it must be on purpose. (The
    # values are blake2b's, so they are the same in every process and on every platform.)
    assert doc_id("gsm8k", "train.jsonl.zst", 0) == 0x5C92CADE125A9189
    assert doc_id("a", "b", 0) == 0x1062C8C7520647C6
    assert doc_id("gsm8k", "train.jsonl.zst", 0) != doc_id("gsm8k", "train.jsonl.zst", 1)
    assert (shuffle_key(0, 1), shuffle_key(1, 1)) == (0xCF304A190C6B950F, 0x369DF6F01705292F)


def test_plan_matches_the_docstring_trace():
    plan = make_plan([Stream("", [("b0", 5), ("b1", 4), ("tail", 2)])], [(2, [Fraction(1)])], 4, seed=0)
    assert plan.steps == [[Slice("b0", 0, 4)], [Slice("b0", 4, 5), Slice("b1", 0, 3)]]
    assert plan.remainder == [Slice("b1", 3, 4), Slice("tail", 0, 2)] and plan.remainder_rows == [3]


@given(st.lists(st.integers(min_value=0, max_value=30), max_size=8), st.integers(min_value=1, max_value=9))
def test_plan_covers_every_row_once_with_exact_steps(counts, rps):
    files = [(f"f{i}", n) for i, n in enumerate(counts)]
    plan = make_plan([Stream("", files)], [(None, [Fraction(1)])], rps, seed=0)
    assert all(sum(s.stop - s.start for s in step) == rps for step in plan.steps)
    assert len(plan.steps) == sum(counts) // rps and plan.remainder_rows == [sum(counts) % rps]
    seen = [(s.file, r) for step in plan.steps + [plan.remainder] for s in step for r in range(s.start, s.stop)]
    assert seen == [(f, r) for f, n in files for r in range(n)]


DEEPSEEKMATH_7B = [Fraction(56, 100), Fraction(4, 100), Fraction(10, 100), Fraction(20, 100), Fraction(10, 100)]


def check_quotas(weights, rows_per_step, n):
    done = [0] * len(weights)
    for s, q in zip(range(n), quotas(weights, rows_per_step)):
        assert sum(q) == rows_per_step and min(q) >= 0
        for i, w in enumerate(weights):
            done[i] += q[i]
            assert abs(done[i] - w * rows_per_step * (s + 1)) < 1, (s, i)


@pytest.mark.parametrize("rows_per_step", [1024, 37])
def test_deepseekmath_7b_quotas_hold_at_every_step_and_prefix(rows_per_step):
    check_quotas(DEEPSEEKMATH_7B, rows_per_step, 1500)
    first = next(quotas(DEEPSEEKMATH_7B, 1024))
    assert first == [574, 41, 102, 205, 102]  # 573.44 / 40.96 / 102.4 / 204.8 / 102.4 on average


@given(st.lists(st.integers(0, 40), min_size=1, max_size=7).filter(any), st.integers(1, 40))
def test_quotas_hold_for_any_weights(raw, rows_per_step):
    check_quotas([Fraction(x, sum(raw)) for x in raw], rows_per_step, 200)


def test_a_short_stream_is_repeated_each_pass_a_fresh_order_of_every_row():
    stream = Stream("s", [("a", 7), ("b", 5), ("c", 9)])
    plan = make_plan([stream], [(5, [Fraction(1)])], 10, seed=1)  # 50 rows of 21: 2.38 passes
    assert plan.used == [50] and plan.remainder == []

    def rows_of(slices):
        return [(s.file, int(r)) for s in slices for r in
                ((range(s.start, s.stop)) if s.order < 0 else permutation(dict(stream.files)[s.file], s.order)[s.start:s.stop])]

    taken = rows_of([s for step in plan.steps for s in step])
    everything = sorted((f, r) for f, n in stream.files for r in range(n))
    passes = [taken[:21], taken[21:42]]
    assert sorted(passes[0]) == sorted(passes[1]) == everything
    assert passes[0] != passes[1]  # a fresh shuffle, not the same order again
    assert taken[:21] == [(f, r) for f, n in stream.files for r in range(n)]  # pass 0 as stored


def test_an_open_stage_stops_before_a_source_runs_out_and_keeps_the_rest():
    streams = [Stream("a", [("a", 30)]), Stream("b", [("b", 100)])]
    plan = make_plan(streams, [(None, [Fraction(1, 2), Fraction(1, 2)])], 4, seed=0)
    assert len(plan.steps) == 15 and plan.used == [30, 30] and plan.remainder_rows == [0, 70]


def test_stages_follow_one_another_each_with_its_own_quotas():
    streams = [Stream("a", [("a", 100)]), Stream("b", [("b", 100)])]
    plan = make_plan(streams, [(3, [Fraction(3, 4), Fraction(1, 4)]), (2, [Fraction(0), Fraction(1)])], 4, seed=0)
    assert plan.step_rows == [[3, 1], [3, 1], [3, 1], [0, 4], [0, 4]] and plan.stage_steps == [3, 2]
    assert plan.steps[3] == [Slice("b", 3, 7)]  # stream b goes on where stage 0 left it


def test_a_stream_s_slices_do_not_depend_on_the_other_streams_data():
    # Ablation pairs: change stream b's files; stream a's rows land in the same steps.
    a = Stream("a", [("a0", 13), ("a1", 8)])
    w = [Fraction(1, 3), Fraction(2, 3)]
    one = make_plan([a, Stream("b", [("b0", 5)])], [(9, w)], 6, seed=4)
    two = make_plan([a, Stream("b", [("x0", 50), ("x1", 7)])], [(9, w)], 6, seed=4)
    assert [[s for s in st if s.file.startswith("a")] for st in one.steps] == \
        [[s for s in st if s.file.startswith("a")] for st in two.steps]
    assert [q[0] for q in one.step_rows] == [q[0] for q in two.step_rows]


def test_permutation_is_a_pinned_seeded_permutation():
    p = permutation(10, 7)
    assert sorted(p.tolist()) == list(range(10)) and p.tolist() != list(range(10))
    assert p.tolist() == permutation(10, 7).tolist() != permutation(10, 8).tolist()
    assert p.tolist() == PINNED_PERMUTATION  # a change here changes every output's bytes


PINNED_PERMUTATION = [0, 2, 4, 9, 6, 7, 8, 5, 1, 3]


def test_rows_from_batch_tokens():
    assert rows_from_batch_tokens(4194304, 4096) == 1024
    with pytest.raises(ConfigError, match="4,194,304 \\(1024 rows\\) or 4,198,400 \\(1025 rows\\)"):
        rows_from_batch_tokens(4194305, 4096)
    with pytest.raises(ConfigError, match="4,096 \\(1 row\\)"):
        rows_from_batch_tokens(100, 4096)


def test_flags_override_the_file_and_relative_paths_become_absolute(tmp_path):
    file = {"seq_len": 512, "rows_per_step": 8, "output": "out",
            "source": [{"name": "a", "paths": ["data/*.jsonl"], "text": "{q} {a}"}]}
    cfg = build(file, "/base", {"seq_len": 1024, "output": None})
    assert cfg.seq_len == 1024 and cfg.rows_per_step == 8 and cfg.output == "/base/out"
    assert cfg.sources[0].paths == ("/base/data/*.jsonl",)
    cfg = build(file, "/base", {"global_batch_tokens": 4096}, cwd="/cwd")
    assert cfg.rows_per_step == 8
    cfg = build(None, "/x", {"input": ["gs://b/*.parquet", "rel/x.jsonl"], "output": "o"}, cwd="/cwd")
    assert cfg.sources[0].paths == ("gs://b/*.parquet", "/cwd/rel/x.jsonl") and cfg.output == "/cwd/o"
    with pytest.raises(ConfigError, match="unknown key"):
        build({"seqlen": 3}, "/x", {"output": "o", "input": ["a"]})
    with pytest.raises(ConfigError, match="no input"):
        build({}, "/x", {"output": "o"})


def test_text_templates_and_fields():
    assert text_fields("text") == ("text",)
    assert text_fields("{question}\n\n{answer}") == ("question", "answer")
    assert make_text("{q}: {a}", ("q", "a"), {"q": "Q", "a": 3}) == "Q: 3"
    assert make_text("{q}: {a}", ("q", "a"), {"q": "Q"})[0] == "missing_field"
    assert make_text("text", ("text",), {"text": 3})[0] == "bad_field"
    with pytest.raises(ConfigError):
        text_fields("{}")


def test_formats_come_from_extensions():
    assert detect_format("a/b.jsonl.zst") == ("jsonl", "zstd")
    assert detect_format("b.JSONL.gz") == ("jsonl", "gzip")
    assert detect_format("b.parquet") == ("parquet", None)
    assert detect_format("x.tex") == ("text", None)
    with pytest.raises(ConfigError, match="format"):
        detect_format("x.csv")


@given(st.text(alphabet="ab \n", max_size=200), st.integers(min_value=2, max_value=20))
def test_split_text_pieces_join_back_and_respect_the_limit(text, limit):
    pieces = split_text(text, limit)
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces)


def test_sum_dicts_combines_stats_in_a_pipeline():
    with BeamTestPipeline(runner=FnApiRunner()) as p:  # named: the default DirectRunner may fetch Prism
        got = (p | beam.Create([{"a": 1}, {"a": 2, "b": 1}, {}]) | beam.CombineGlobally(SumDicts()))
        assert_that(got, equal_to([{"a": 3, "b": 1}]))


def test_deal_order_matches_the_docstring_trace():
    w = [9, 8, 7, 6, 5, 4, 3]
    assert sorted(loads_of(deal_order(w, 2), w, 2)) == [20, 22]
    plain = sorted(range(len(w)), key=lambda i: -w[i])  # heaviest first, dealt as it comes
    assert loads_of(plain, w, 2) == [24, 18]


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=40), st.integers(min_value=1, max_value=5))
def test_deal_order_deals_every_unit_once_evenly_and_heaviest_first(weights, workers):
    order = deal_order(weights, workers)
    assert sorted(order) == list(range(len(weights)))
    loads = loads_of(order, weights, workers)
    if weights:
        # Rounds of one unit per worker, each round's heaviest to the least loaded worker: no
        # worker ends more than the heaviest unit above another.
        assert max(loads) - min(loads) <= max(weights) + 1e-9
    for w in range(workers):  # each worker works through its share heaviest first
        share = [weights[i] for i in order[w::workers]]
        assert share == sorted(share, reverse=True)


def test_read_batches_fill_across_units_and_keep_every_record_once(tmp_path):
    from steppack.pipeline.sources import discover
    from steppack.pipeline.transforms import BATCH_DOCS, ReadFn

    for i in range(3):  # one document per text file: one unit each
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}")
    (tmp_path / "many.jsonl").write_text("".join(f'{{"text": "record {i}"}}\n' for i in range(BATCH_DOCS + 44)))
    (tmp_path / "bad.jsonl").write_text('{"text": "kept"}\nnot json\n')
    cfg = build(None, str(tmp_path), {"input": [str(tmp_path / "*")], "output": str(tmp_path / "out")})
    units, _ = discover(cfg)
    fn = ReadFn()
    fn.start_bundle()
    out = [o for u in units for o in fn.process(u)] + [w.value for w in fn.finish_bundle()]
    batches = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    rejects = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == "rejects"]
    assert [sum(len(p[-1]) for p in b) for b in batches] == [BATCH_DOCS, 3 + 44 + 1]
    # bad.jsonl, doc0..2.txt, then many.jsonl until the first batch is full
    assert [p[2] for p in batches[0]] == ["bad.jsonl", "doc0.txt", "doc1.txt", "doc2.txt", "many.jsonl"]
    got = sorted((key, record, text) for b in batches for _, _, key, _, records in b for record, text in records)
    assert len(got) == len(set(got)) == BATCH_DOCS + 44 + 3 + 1
    assert [(r["reason"], r["record"]) for r in rejects] == [("bad_json", 1)]


def test_compressed_jsonl_reads_every_member_and_frame_and_rejects_damage(tmp_path):
    import gzip
    import zlib

    import zstandard

    from steppack.pipeline.sources import discover, read_unit

    import random

    rnd = random.Random(0)
    n = 20000  # ~1 MB of JSON, ~0.6 MB gzipped: several 64 KiB pieces of input
    lines = [f'{{"text": "record {i} {rnd.getrandbits(128):032x}"}}' for i in range(n)]
    blob = "\n".join(lines).encode()  # no newline after the last record
    third = len(blob) // 3
    cut = [blob[:third], blob[third:2 * third], blob[2 * third:]]  # members end mid-line
    (tmp_path / "multi.jsonl.gz").write_bytes(b"".join(gzip.compress(c, mtime=0) for c in cut) + b"\0" * 8)
    z = zstandard.ZstdCompressor()
    (tmp_path / "multi.jsonl.zst").write_bytes(b"".join(z.compress(c) for c in cut))
    whole = gzip.compress(blob, mtime=0)
    bad_crc = whole[:-8] + bytes([whole[-8] ^ 1]) + whole[-7:]  # the trailer's CRC32, one bit off
    (tmp_path / "crc.jsonl.gz").write_bytes(bad_crc)
    cfg = build(None, str(tmp_path), {"input": [str(tmp_path / "*")], "output": str(tmp_path / "out")})
    units, _ = discover(cfg)
    got: dict[str, list] = {}
    for u in units:
        got.setdefault(u.key, []).extend(read_unit(u))
    want = [(i, lines[i][10:-2]) for i in range(n)]
    assert sorted(got["multi.jsonl.gz"]) == want
    assert sorted(got["multi.jsonl.zst"]) == want
    # zlib checks a member's CRC at its end: the records of the pieces before the last are kept,
    # the rest of the file is one reject (as for a truncated file), never silently accepted.
    rejects = [r for r in got["crc.jsonl.gz"] if hasattr(r, "reason")]
    records = sorted(r for r in got["crc.jsonl.gz"] if not hasattr(r, "reason"))
    assert 0 < len(records) < n and records == want[: len(records)]
    assert [(r.reason, r.record) for r in rejects] == [("truncated", len(records))]
    with pytest.raises(zlib.error):
        zlib.decompress(bad_crc, wbits=31)  # the damage is real


def test_spills_and_row_files_go_through_arrow_without_pandas(tmp_path):
    # pyarrow's numpy conversions import pandas (~0.45 s) on first use; a worker never needs it.
    code = (
        "import sys, numpy as np\n"
        "from pipeline import buckets as bk\n"
        "from steppack.pipeline.packing import Doc\n"
        "from shards import RowBlock, open_step, write_step\n"
        "out = sys.argv[1]\n"
        "docs = [Doc(np.arange(n, dtype=np.uint32) + 7, 100 + n, n % 3) for n in (5, 1, 9)]\n"
        "bk.write_spill(out + '/s.arrow', [3, 1, 2], docs)\n"
        "b = bk.read_bucket([out + '/s.arrow'], np.uint32)  # in key order: the 1, 9 and 5 tokens\n"
        "rows = RowBlock(b.tokens[:8].reshape(2, 4), np.array([0, 1, 2]), np.array([4, 4], np.int32), b.doc_ids[:2], b.sources[:2])\n"
        "write_step(out, 'x.arrow', rows, seq_len=4, dtype='uint32', step=None)\n"
        "back = open_step(out + '/x.arrow').read()\n"
        "print('pandas' in sys.modules, b.keys.tolist(), b.lens.tolist(), back.tokens.tolist(), back.doc_ids.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[0] == "False"
    assert out.split(" ", 1)[1].strip() == "[1, 2, 3] [1, 9, 5] [[7, 7, 8, 9], [10, 11, 12, 13]] [101, 109]"


GOAWAY = r"""
import sys, threading, time
if "--quiet" in sys.argv:
    from steppack.pipeline.logs import quiet_grpc
    quiet_grpc()
import grpc
from concurrent import futures

def echo(requests, context):
    for r in requests:
        yield r

handler = grpc.method_handlers_generic_handler("t.T", {"S": grpc.stream_stream_rpc_method_handler(echo)})
server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
stop = threading.Event()

def requests():
    while not stop.is_set():
        yield b"x"
        time.sleep(0.01)

replies = channel.stream_stream("/t.T/S")(requests())
next(replies)  # a worker's stream is open
server.stop(None)  # and the runner shuts its server down, as at the end of a local job
time.sleep(0.3)
try:
    for _ in replies:
        pass
except grpc.RpcError:
    pass
stop.set()
"""


def test_workers_do_not_print_grpc_shutdown_chatter():
    """The `Got goaway [2] ... Cancelling all calls` line a worker printed at the end of some jobs:
    gRPC prints it as this script stands (whether the client sees the GOAWAY before the socket
    closes is a race, hence up to 5 tries), and never once quiet_grpc() has run first."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}

    def stderr(*flag):
        return subprocess.run([sys.executable, "-c", GOAWAY, *flag], capture_output=True, text=True,
                              env=env, timeout=60).stderr

    # The line this guards against still happens without it.
    assert any("Got goaway" in stderr() for _ in range(5))
    for _ in range(3):
        out = stderr("--quiet")
        assert "Got goaway" not in out, out


def test_quiet_grpc_keeps_a_users_own_verbosity(monkeypatch):
    from steppack.pipeline.logs import quiet_grpc

    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    quiet_grpc()
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
    quiet_grpc()
    assert os.environ["GRPC_VERBOSITY"] == "DEBUG"


def _jsonl(path, n):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"{path} record {i}"}) + "\n")


def _keys(tmp_path, *patterns):
    from steppack.pipeline.sources import discover

    cfg = build(None, str(tmp_path), {"input": list(patterns), "output": str(tmp_path / "out")})
    units, _ = discover(cfg)
    return sorted({(u.key, os.path.relpath(u.path, tmp_path)) for u in units})


def test_files_of_the_same_name_in_different_folders_get_different_doc_ids(tmp_path):
    # `--input a/*.jsonl --input b/*.jsonl`: record n of a/x.jsonl and of b/x.jsonl once got one id.
    for d in ("a", "b"):
        _jsonl(str(tmp_path / "corpus" / d / "x.jsonl"), 2)
    keys = _keys(tmp_path, str(tmp_path / "corpus/a/*.jsonl"), str(tmp_path / "corpus/b/*.jsonl"))
    assert keys == [("a/x.jsonl", "corpus/a/x.jsonl"), ("b/x.jsonl", "corpus/b/x.jsonl")]


def test_doc_id_keys_do_not_change_when_the_corpus_moves(tmp_path):
    for root in ("one", "two/deeper"):
        for d in ("a", "b"):
            _jsonl(str(tmp_path / root / d / "x.jsonl"), 1)
    first = [k for k, _ in _keys(tmp_path, str(tmp_path / "one/a/*.jsonl"), str(tmp_path / "one/b/*.jsonl"))]
    moved = [k for k, _ in _keys(tmp_path, str(tmp_path / "two/deeper/a/*.jsonl"),
                                 str(tmp_path / "two/deeper/b/*.jsonl"))]
    assert first == moved == ["a/x.jsonl", "b/x.jsonl"]
    # One glob over the tree: keys relative to the glob's folder, as they always were.
    assert [k for k, _ in _keys(tmp_path, str(tmp_path / "one/*/x.jsonl"))] == ["a/x.jsonl", "b/x.jsonl"]


def test_a_file_matched_twice_is_an_error_naming_it_before_any_work(tmp_path):
    _jsonl(str(tmp_path / "a" / "x.jsonl"), 1)
    with pytest.raises(ConfigError, match=r"a/x\.jsonl.*matched by two of the paths"):
        _keys(tmp_path, str(tmp_path / "a/*.jsonl"), str(tmp_path / "a/x.jsonl"))


def _mix(*weights, stages=None, steps=None):
    file = {"output": "out", "source": [dict({"name": n, "paths": ["x.jsonl"]}, **({"weight": w} if w is not None else {}))
                                        for n, w in zip("abc", weights)]}
    if stages is not None:
        file["stage"] = stages
    if steps is not None:
        file["steps"] = steps
    return build(file, "/base", {})


def test_weights_are_exact_normalised_and_on_every_source_or_none():
    assert _mix(0.56, 0.04, 0.4).mixture() == [(None, [Fraction(14, 25), Fraction(1, 25), Fraction(2, 5)])]
    assert _mix(3, 1, steps=7).mixture() == [(7, [Fraction(3, 4), Fraction(1, 4)])]
    assert _mix(None, None).mixture() is None
    with pytest.raises(ConfigError, match="weight is given for a but not for b"):
        _mix(1, None)
    with pytest.raises(ConfigError, match="must be a number >= 0"):
        _mix(1, -2)
    with pytest.raises(ConfigError, match="every source weight is 0"):
        _mix(0, 0)


def test_stages_are_checked_and_the_last_may_take_the_remaining_steps():
    stages = [{"steps": 4, "weights": {"a": 1}}, {"weights": {"a": 1, "b": 3}}]
    assert _mix(None, None, stages=stages, steps=10).mixture() == [
        (4, [Fraction(1), Fraction(0)]), (6, [Fraction(1, 4), Fraction(3, 4)])]
    with pytest.raises(ConfigError, match="only the last stage may leave them out"):
        _mix(None, None, stages=[{"weights": {"a": 1}}, {"steps": 2, "weights": {"a": 1}}])
    with pytest.raises(ConfigError, match="not one of a, b"):
        _mix(None, None, stages=[{"steps": 2, "weights": {"z": 1}}])
    with pytest.raises(ConfigError, match="both on the sources and in"):
        _mix(1, 1, stages=[{"steps": 2, "weights": {"a": 1}}])
    with pytest.raises(ConfigError, match="stages add up to 4"):
        _mix(None, None, stages=[{"steps": 4, "weights": {"a": 1}}], steps=5)


def test_a_step_larger_than_a_step_file_may_hold_is_refused_before_any_work(tmp_path, capsys):
    from steppack.cli import main

    assert main(["prepare", "--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"),
                 "--rows-per-step", "300000", "--seq-len", "4096"]) == 2
    assert "1,228,800,000 tokens, above the 1,073,741,824" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("template", ["{problem.__class__}", "{problem[0]}", "{problem!r}", "{problem:>99999999}"])
def test_a_template_may_only_name_fields_no_attribute_index_or_format_code(tmp_path, capsys, template):
    from steppack.cli import main

    assert main(["prepare", "--input", str(tmp_path / "x.jsonl"), "--text-field", template, "--output",
                 str(tmp_path / "o")]) == 2
    assert "must name its fields" in capsys.readouterr().err


def test_the_progress_line_of_a_local_prepare_reads_the_workers_progress_folder(tmp_path):
    # Only a non-quiet local prepare starts it; the tests run quiet, which is how a missing import
    # here once reached `make demo` unnoticed.
    import io

    from steppack.pipeline.run import Progress

    (tmp_path / "_work" / "progress").mkdir(parents=True)
    (tmp_path / "_work" / "progress" / "w1.json").write_text(json.dumps({"documents": 3, "tokens": 1200}))
    p = Progress(str(tmp_path), started=0.0, stream=io.StringIO())
    assert p.dir == os.path.join(str(tmp_path), "_work", "progress")
    assert p.snapshot() == (3, 1200)


def test_the_progress_line_never_goes_back_when_the_job_removes_its_work_folder(tmp_path):
    import io
    import shutil
    import time

    from steppack.pipeline.run import Progress

    (tmp_path / "_work" / "progress").mkdir(parents=True)
    (tmp_path / "_work" / "progress" / "w1.json").write_text(json.dumps({"documents": 3, "tokens": 3_000_000}))
    out = io.StringIO()
    p = Progress(str(tmp_path), started=time.time(), stream=out, every=0.01)
    p.start()
    while out.getvalue().count("\n") < 2:
        time.sleep(0.01)
    shutil.rmtree(tmp_path / "_work")  # as the job's last step does, before the launcher stops the line
    n = out.getvalue().count("\n")
    while out.getvalue().count("\n") < n + 2:
        time.sleep(0.01)
    p.finish()
    p.join()
    lines = out.getvalue().splitlines()
    assert all("3.00M tokens, 3 documents tokenized" in line for line in lines), lines


@pytest.mark.parametrize("extra,rows", [([], 2560), (["--rows-per-step", "1024"], 1024),
                                        (["--global-batch-tokens", "4194304"], 1024)])
def test_a_prepare_recipe_fills_in_what_the_file_and_flags_leave_out(tmp_path, extra, rows):
    from steppack.pipeline.transforms import manifest_config

    from .test_prepare_support import parse

    cfg = parse("--input", "x.jsonl", "--output", str(tmp_path), "--recipe", "deepseekmath-7b", *extra)
    assert (cfg.seq_len, cfg.rows_per_step) == (4096, rows)
    assert manifest_config(cfg)["recipe"] == "deepseekmath-7b"  # the manifest records it
