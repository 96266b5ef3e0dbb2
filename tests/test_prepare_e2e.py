"""`steppack prepare` end to end through the CLI, on the bundled sample and on the shared corpus."""

from __future__ import annotations

import json
import os

import pytest

from steppack.shards import read_manifest
from steppack.shards.verify import verify

from .test_prepare_support import SAMPLES, check_round_trip, corpus, parse, prepare  # noqa: F401 (fixture)

JOB = os.path.join(SAMPLES, "job.toml")


def test_prepare_sample_gives_exact_steps_that_decode_to_every_document(tmp_path):
    out = str(tmp_path / "out")
    assert prepare("--config", JOB, "--output", out, "--workers", "2") == 0
    assert verify(out) == []
    m = read_manifest(out)
    assert m.packing == "concat" and m.dtype == "uint32" and m.seq_len == 512 and m.rows_per_step == 16
    assert m.num_steps > 10 and m.tokenizer.add_bos and m.tokenizer.add_eos
    assert [s.name for s in m.sources] == ["gsm8k", "math500", "stackmathqa", "mathlib3", "proofnet-tex"]
    report = check_round_trip(out, parse("--config", JOB, "--output", out))
    assert report["padding_tokens"] < 512  # concat pads only the final row, which is in the remainder
    assert m.remainder is not None and report["rows"]["remainder"] == m.remainder.rows
    assert not os.path.exists(os.path.join(out, "_work"))
    # Golden: these change only on purpose (tokenizer, shuffle, packing or sample changes).
    assert (report["documents"]["read"], report["tokens"]["read"], report["steps"], report["rows"]["remainder"],
            report["padding_tokens"], report["cuts"]) == (676, 311991, 38, 2, 329, 607)
    assert rows_digest(out) == GOLDEN_SAMPLE_ROWS


GOLDEN_SAMPLE_ROWS = "c2ffca0485198e35937ee3a9fa2ffdb65101a5b4eaef32cef2137867ee642baf"


def rows_digest(out: str) -> str:
    """sha256 over every row's columns, steps then remainder: the content, not the file layout."""
    import hashlib

    from steppack.shards import open_step

    m = read_manifest(out)
    h = hashlib.sha256()
    for info in m.steps + ([m.remainder] if m.remainder else []):
        with open_step(os.path.join(out, info.file)) as f:
            b = f.read()
            for a in (b.tokens, b.doc_lens, b.doc_ids, b.source):
                h.update(a.tobytes())
    return h.hexdigest()


def test_prepare_bestfit_with_small_pieces_still_decodes_every_document(tmp_path):
    out = str(tmp_path / "out")
    argv = ["--config", JOB, "--output", out, "--packing", "bestfit", "--seq-len", "256",
            "--piece-chars", "3000", "--bucket-mb", "1", "--unit-mb", "0.05", "--workers", "2"]
    assert prepare(*argv) == 0
    assert verify(out) == []
    report = check_round_trip(out, parse(*argv))
    assert read_manifest(out).packing == "bestfit"
    assert report["buckets"] == 1 and report["padding_tokens"] > 0


def test_global_batch_tokens_sets_rows_per_step(tmp_path):
    out = str(tmp_path / "out")
    assert prepare("--config", JOB, "--output", out, "--global-batch-tokens", "16384", "--workers", "1") == 0
    assert read_manifest(out).rows_per_step == 32


CORPUS_JOB = """
seq_len = 4096
rows_per_step = 64
seed = 7
bucket_mb = 2

[[source]]
name = "gsm8k"
paths = ["{c}/gsm8k/*.jsonl.zst"]
text = "Question: {{question}}\\nAnswer: {{answer}}"

[[source]]
name = "math"
paths = ["{c}/math/test.jsonl.zst", "{c}/math/math500.jsonl"]
text = "{{problem}}\\n\\n{{solution}}"

[[source]]
name = "proofnet"
paths = ["{c}/proofnet/*.jsonl"]
text = "{{nl_statement}}\\n\\n{{nl_proof}}\\n\\n{{formal_statement}}"

[[source]]
name = "proofnet-tex"
paths = ["{c}/proofnet/tex/*.tex"]

[[source]]
name = "stackmathqa"
paths = ["{c}/stackmathqa/stackmathqa.parquet"]
text = "{{Q}}\\n\\n{{A}}"

[[source]]
name = "mathlib3"
paths = ["{c}/mathlib3/mathlib3.jsonl.gz"]

[[source]]
name = "champ"
paths = ["{c}/champ/champ.jsonl"]
"""


def test_prepare_whole_shared_corpus_every_format_round_trips_and_the_fast_engine_is_hf_on_every_document(
        tmp_path, corpus):
    # One run does both (each was a whole-corpus run of its own): every kept document's ids are
    # checked against HF tokenizers' (--verify-tokenizer all) and not one differs, so the fast
    # engine wrote the reference's bytes. bestfit round trips: the sample tests above.
    job = tmp_path / "corpus.toml"
    job.write_text(CORPUS_JOB.format(c=corpus))
    out = str(tmp_path / "out")
    argv = ["--config", str(job), "--output", out, "--workers", "2", "--verify-tokenizer", "all"]
    assert prepare(*argv) == 0
    assert verify(out) == []
    report = check_round_trip(out, parse(*argv))
    m = read_manifest(out)
    assert report["documents"]["kept"] > 16000 and len(m.sources) == 7 and all(s.documents for s in m.sources)
    assert report["buckets"] > 1
    fast = report["tokenizer"]
    assert fast["library"] == "fastokens" and m.tokenizer_engine["name"] == "fast"
    assert fast["mismatches"] == 0 and fast["checked"] == report["documents"]["kept"]
    json.dumps(report)


def test_a_tokenizer_json_path_is_shipped_to_workers_and_recorded(tmp_path):
    from steppack.shards import tokenizer as shtok

    path = shtok.resolve_path("deepseek-llm")
    out = str(tmp_path / "out")
    argv = ["--input", os.path.join(SAMPLES, "math", "math500.jsonl"), "--text-field", "{problem}\n{solution}",
            "--output", out, "--seq-len", "128", "--rows-per-step", "8", "--tokenizer", path,
            "--eos-token", "<｜end▁of▁sentence｜>", "--workers", "2"]
    assert prepare(*argv) == 0
    m = read_manifest(out)
    assert m.tokenizer.name == path and not m.tokenizer.add_bos and m.tokenizer.add_eos
    assert m.tokenizer.sha256 == shtok.file_sha256(path)
    check_round_trip(out, parse(*argv))


def test_dataflow_with_local_paths_is_refused_before_submission(tmp_path, capsys):
    argv = ["--config", JOB, "--output", "gs://bucket/out", "--runner", "DataflowRunner", "--project", "p",
            "--region", "r", "--temp_location", "gs://bucket/tmp"]
    assert prepare(*argv) == 2
    assert "Dataflow workers cannot read it" in capsys.readouterr().err
    assert prepare("--config", JOB, "--output", str(tmp_path), *argv[4:]) == 2
    assert "Give a gs:// output" in capsys.readouterr().err
