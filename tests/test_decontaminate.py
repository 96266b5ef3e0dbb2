"""Decontamination (DeepSeekMath's n-gram rule), exact dedup and `shards audit`.

The rule itself on small real-looking texts (no corpus needed); then prepare end to end on the
shared corpus with GSM8K test and MATH test as benchmarks, and the audit of outputs made with and
without decontamination against what prepare dropped."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from steppack.pipeline import grams
from steppack.pipeline.decontaminate import Index, Item, item_grams
from steppack.pipeline.plan import doc_id
from steppack.shards import open_step, read_manifest
from steppack.shards.format import REJECTS_DIR, REPORT_NAME
from steppack.shards.verify import verify

from .test_prepare_support import CORPUS, prepare
from steppack.cli import main as steppack_main

QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
            "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
            "per fresh duck egg. How much in dollars does she make every day at the farmers' market?")
FILLER = ("The theory of modular forms connects number theory with complex analysis, and its methods reach "
          "far beyond the questions that first motivated them. ") * 8
COPY = "Let $p$ be a prime. Then $p$ divides $a^p - a$ for every integer $a$."
CHINESE = "小明有五个苹果，他给了小红两个，又买了三个，现在他有几个苹果？"


def index_of(*texts: str, n: int = 10, min_n: int = 3, bench: str = "b") -> Index:
    items = [Item(bench, "f", i) for i in range(len(texts))]
    return Index([item_grams(items, list(texts), n, min_n)], n, min_n)


def one_word_changed_per_window(text: str, n: int = 10) -> str:
    """Every n-word window of the text with one word changed: every (n//2)-th word replaced."""
    out = []
    for i, w in enumerate(text.split()):
        out.append("zebra" if i % (n // 2) == n // 4 else w)
    return " ".join(out)


def test_words_are_nfkc_case_folded_runs_of_letters_and_digits_and_each_cjk_character():
    w = grams.words(["Ｈello, WORLD! x²=ﬁve; Straße", "", "ab中文c"])
    words = [w.text[s:e].casefold() for s, e in zip(w.starts.tolist(), w.ends.tolist())]
    assert words == ["hello", "world", "x2", "five", "strasse", "ab", "中", "文", "c"]
    assert w.doc.tolist() == [0, 0, 0, 0, 0, 2, 2, 2, 2]
    same = {}
    for word, h in zip(words, w.hashes.tolist()):
        same.setdefault(word, h)
        assert same[word] == h
    assert len(set(w.hashes.tolist())) == len(set(words))


def test_grams_never_span_two_documents():
    w = grams.words(["a b c", "d e f"])
    h, at = grams.gram_hashes(w, 3)
    assert at.tolist() == [0, 3]
    assert grams.gram_hashes(grams.words(["a b c d e f"]), 3)[0].size == 4


def test_a_question_planted_in_a_long_document_is_found_and_one_word_changed_per_window_is_not():
    index = index_of(QUESTION)
    planted = FILLER + " As an exercise: " + QUESTION.upper().replace(" ", "   ") + " " + FILLER
    changed = FILLER + one_word_changed_per_window(QUESTION) + FILLER
    found = index.match_texts([FILLER, planted, changed])
    assert list(found) == [1]
    assert found[1].grams == "janet s ducks lay 16 eggs per day she eats"
    assert found[1].item == Item("b", "f", 0)


def test_a_chinese_benchmark_text_is_matched_by_characters():
    index = index_of(CHINESE)
    doc = "练习题：" + CHINESE.replace("，", " ").replace("？", "") + " 答案是六个。"
    hanzi = [c for c in CHINESE if c not in "，？"]
    other = "".join("梨" if i % 5 == 2 else c for i, c in enumerate(hanzi))  # one in every 10 characters changed
    assert list(index.match_texts([doc, other, FILLER])) == [0]


def test_short_benchmark_texts_match_whole_and_shorter_ones_are_ignored():
    index = index_of("the answer is 42 exactly", "x = 2", n=10, min_n=3)
    assert index.short == {"b": 1} and index.texts == {"b": 2}
    assert index.lengths == (5,)
    found = index.match_texts(["we know The answer is 42, EXACTLY as shown", "the answer is 42 and not exact",
                               "x = 2 is everywhere: x = 2"])
    assert list(found) == [0] and found[0].grams == "the answer is 42 exactly" and found[0].n == 5


def test_the_index_is_the_same_whatever_order_its_parts_come_in():
    a = item_grams([Item("a", "f", 0)], [QUESTION], 10, 3)
    b = item_grams([Item("b", "g", 1), Item("b", "g", 0)], [CHINESE, FILLER], 10, 3)
    one, two = Index([a, b], 10, 3), Index([b, a], 10, 3)
    assert np.array_equal(one.keys, two.keys) and np.array_equal(one.owner, two.owner)
    assert np.array_equal(one.bitmap, two.bitmap) and one.items == two.items


def test_dedup_key_ignores_case_and_spacing_but_not_punctuation():
    assert grams.dedup_key("Hello  World\n") == grams.dedup_key("hello world")
    assert grams.dedup_key("x^2 + 1") != grams.dedup_key("x2 + 1")


# ---------------------------------------------------------------- prepare and audit end to end

def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One corpus (GSM8K test, MATH500, ProofNet valid, planted documents) prepared with and without
    decontamination against GSM8K test and MATH test (and a Chinese text and short texts)."""
    if not os.path.isdir(CORPUS):
        pytest.skip(f"the shared corpus is not at {CORPUS}")
    corpus = CORPUS
    tmp = tmp_path_factory.mktemp("decontam")
    with open(os.path.join(corpus, "gsm8k", "test.jsonl.zst"), "rb") as f:
        import zstandard

        first = json.loads(zstandard.ZstdDecompressor().stream_reader(f).read(1 << 16).split(b"\n")[0])
    planted = write_jsonl(tmp / "planted.jsonl", [
        {"text": FILLER + first["question"] + FILLER},
        {"text": FILLER + one_word_changed_per_window(first["question"]) + FILLER},
        {"text": FILLER + "练习：" + CHINESE + FILLER},
        {"text": FILLER + "so the answer is 42 exactly. " + FILLER},
        {"text": FILLER + "x = 2 " + FILLER},
    ])
    extra = write_jsonl(tmp / "cmath.jsonl", [{"text": CHINESE}, {"text": "the answer is 42 exactly"}, {"text": "x = 2"}])
    (tmp / "copies").mkdir()
    write_jsonl(tmp / "copies" / "b.jsonl", [{"text": COPY.upper()}, {"text": "another document " * 20}, {"text": COPY}])
    write_jsonl(tmp / "copies" / "a.jsonl", [{"text": "one more " * 30}, {"text": "  " + COPY.replace(" ", "\n ")}])
    job = tmp / "job.toml"
    job.write_text(f"""
seq_len = 256
rows_per_step = 8
dedup = "exact"
[[source]]
name = "copies"
paths = ["{tmp}/copies/*.jsonl"]
[[source]]
name = "gsm8k"
paths = ["{corpus}/gsm8k/test.jsonl.zst"]
text = "Question: {{question}}\\nAnswer: {{answer}}"
[[source]]
name = "math"
paths = ["{corpus}/math/test.jsonl.zst", "{corpus}/math/math500.jsonl"]
text = "{{problem}}\\n\\n{{solution}}"
[[source]]
name = "proofnet"
paths = ["{corpus}/proofnet/valid.jsonl"]
text = "{{nl_statement}}\\n\\n{{nl_proof}}"
[[source]]
name = "planted"
paths = ["{planted}"]
[decontaminate]
[[decontaminate.benchmark]]
name = "gsm8k-test"
paths = ["{corpus}/gsm8k/test.jsonl.zst"]
text = "{{question}} {{answer}}"
[[decontaminate.benchmark]]
name = "math-test"
paths = ["{corpus}/math/test.jsonl.zst"]
text = "{{problem}} {{solution}}"
[[decontaminate.benchmark]]
name = "extra"
paths = ["{extra}"]
""")
    plain = job.with_name("plain.toml")
    plain.write_text(job.read_text().split("[decontaminate]")[0])
    outs = {}
    # Different worker counts and read units: dedup keeps the same copy in both.
    for name, cfg, workers, unit_mb in (("clean", job, "2", "1"), ("plain", plain, "1", "0.01")):
        outs[name] = str(tmp / name)
        assert prepare("--config", str(cfg), "--output", outs[name], "--workers", workers, "--unit-mb", unit_mb) == 0
    return outs, planted, corpus


def rejects_of(out: str) -> list[dict]:
    with open(os.path.join(out, REJECTS_DIR, "rejects.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_prepare_drops_every_benchmark_document_the_planted_ones_and_counts_them(outputs):
    outs, planted, corpus = outputs
    rejects = [r for r in rejects_of(outs["clean"]) if r["reason"] == "contaminated"]
    by_file = {}
    for r in rejects:
        by_file.setdefault(os.path.relpath(r["file"], corpus) if r["file"] != planted else "planted", set()).add(
            r["record"])
    assert by_file["gsm8k/test.jsonl.zst"] == set(range(1319))  # every GSM8K test question
    assert by_file["math/test.jsonl.zst"] == set(range(5000))  # every MATH test problem
    assert by_file["math/math500.jsonl"] == set(range(500))  # MATH500 is part of MATH test
    assert by_file["planted"] == {0, 2, 3}  # planted, Chinese, 5 words; not: changed, 2 words
    chinese = next(r for r in rejects if r["file"] == planted and r["record"] == 2)
    assert chinese["benchmark"] == "extra" and chinese["grams"] == " ".join([c for c in CHINESE if c not in "，？"][:10])
    report = json.load(open(os.path.join(outs["clean"], REPORT_NAME)))
    d = report["decontamination"]
    assert d["benchmarks"]["extra"]["ignored_short"] == 1
    assert sum(b["documents_dropped"] for b in d["benchmarks"].values()) == len(rejects)
    assert report["documents"]["dropped_by_reason"]["contaminated"] == len(rejects)
    # Not tokenized: no token is counted for a contaminated document.
    assert "contaminated" not in report["tokens"]["dropped_by_reason"]
    assert report["documents"]["read"] == report["documents"]["kept"] + report["documents"]["dropped"]
    assert verify(outs["clean"]) == []


def audit_json(out: str, *argv: str, capsys) -> tuple[int, dict]:
    rc = steppack_main(["shards", "audit", out, "--json", *argv])
    return rc, json.loads(capsys.readouterr().out)


def test_audit_finds_exactly_what_prepare_dropped_and_nothing_in_the_decontaminated_output(outputs, capsys, tmp_path):
    outs, planted, corpus = outputs
    # Every benchmark of the job, each with its own --text.
    extra = os.path.join(os.path.dirname(planted), "cmath.jsonl")
    argv = ["--benchmark", f"{corpus}/gsm8k/test.jsonl.zst", "--text", "{question} {answer}",
            "--benchmark", f"{corpus}/math/test.jsonl.zst", "--text", "{problem} {solution}",
            "--benchmark", extra, "--text", "text"]
    rc, clean = audit_json(outs["clean"], *argv, capsys=capsys)
    assert rc == 0 and clean["clean"] and clean["findings"] == []
    rc, plain = audit_json(outs["plain"], *argv, capsys=capsys)
    assert rc == 1
    found = {f["doc_id"] for f in plain["findings"]}
    dropped = {r["doc_id"] for r in rejects_of(outs["clean"]) if r["reason"] == "contaminated"}
    deduped = {r["doc_id"] for r in rejects_of(outs["plain"]) if r["reason"] == "duplicate"}  # not in the output
    assert found == dropped - deduped and len(found) >= 1319 + 5000 + 3
    # GSM8K test alone: one --text for every --benchmark.
    rc, gsm = audit_json(outs["plain"], "--benchmark", f"{corpus}/gsm8k/test.jsonl.zst",
                         "--text", "{question} {answer}", capsys=capsys)
    assert {f["doc_id"] for f in gsm["findings"]} == {
        r["doc_id"] for r in rejects_of(outs["clean"]) if r.get("benchmark") == "gsm8k-test"}
    f = next(f for f in plain["findings"] if f["grams"].startswith("janet s ducks"))
    assert f["source"] in ("gsm8k", "planted") and f["places"]
    m = read_manifest(outs["plain"])
    assert all(p.get("step", 0) < m.num_steps for f in plain["findings"] for p in f["places"])
    # The ids prepare reports are the ids of the documents read (source, file key, record).
    ids = {f"{doc_id('planted', 'planted.jsonl', 0):016x}"}
    assert ids <= found


def test_audit_of_a_missing_benchmark_is_one_line(outputs, capsys):
    outs, _, _ = outputs
    assert steppack_main(["shards", "audit", outs["plain"], "--benchmark", "/nonexistent/*.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "matches no file" in err and "Traceback" not in err


def test_dedup_keeps_the_first_of_n_copies_whatever_the_worker_count(outputs):
    outs, _, _ = outputs
    dups = {}
    for name, out in outs.items():
        dups[name] = sorted((os.path.basename(r["file"]), r["record"], r["kept_doc_id"])
                            for r in rejects_of(out) if r["reason"] == "duplicate" and r["source"] == "copies")
        report = json.load(open(os.path.join(out, REPORT_NAME)))
        # Without decontamination MATH500's 500 problems and their MATH test twins are copies (the
        # MATH500 ones kept: file key math500.jsonl sorts first); with it, all are contaminated first.
        assert report["documents"]["dropped_by_reason"]["duplicate"] == (2 if name == "clean" else 502)
        copies = next(s for s in report["sources"] if s["name"] == "copies")
        assert copies["documents"] == 3
        m = read_manifest(out)
        ids = set()
        for info in m.steps + ([m.remainder] if m.remainder else []):
            with open_step(os.path.join(out, info.file)) as f:
                ids |= set(f.read_doc_ids().tolist())
        kept = {doc_id("copies", k, r) for k, r in (("a.jsonl", 0), ("a.jsonl", 1), ("b.jsonl", 1))}
        gone = {doc_id("copies", "b.jsonl", r) for r in (0, 2)}
        assert kept <= ids and not gone & ids
    kept = f"{doc_id('copies', 'a.jsonl', 1):016x}"  # the first copy: file key a.jsonl before b.jsonl
    assert dups["clean"] == dups["plain"] == [("b.jsonl", 0, kept), ("b.jsonl", 2, kept)]


def test_cjk_punctuation_is_not_a_word():
    w = grams.words(["ジョン・スミス"])
    assert [w.text[s:e] for s, e in zip(w.starts.tolist(), w.ends.tolist())] == list("ジョンスミス")


def test_a_decontaminate_key_that_is_not_a_table_is_one_line():
    from steppack.pipeline.config import build
    from steppack.shards.errors import ConfigError

    for bad in ("gsm8k.jsonl", True, ["a", "b"]):
        with pytest.raises(ConfigError, match=r"\[decontaminate\]"):
            build({"decontaminate": bad, "output": "o"}, "/x", {"input": ["a.jsonl"]})


def test_audit_checks_each_piece_of_a_document_whose_order_is_not_recorded():
    # A short benchmark text as a whole document, repeated by a mixture (identical copies), and a
    # document cut into pieces whose order the output does not record.
    from steppack.pipeline.audit import Audit, _Checker, texts_of
    from steppack.shards import tokenizer as shtok

    tok = shtok.load("deepseek-llm")
    bos, eos = shtok.special_ids("deepseek-llm", tok)
    ids = lambda text: np.array(tok.encode(text, add_special_tokens=False).ids, np.int64)  # noqa: E731
    whole = np.concatenate([[bos], ids("the answer is 42 exactly"), [eos]])
    parts, known = texts_of([whole, whole.copy(), whole.copy()], bos, eos)
    assert known and len(parts) == 1 and parts[0][1:] == (False, False)
    a, b, c, d = (ids(t) for t in (FILLER[:200], " " + QUESTION, " and so on", " more text"))
    pieces = [np.concatenate([[bos], a]), b, c, np.concatenate([d, [eos]])]
    parts, known = texts_of(pieces, bos, eos)
    assert not known
    assert [(cs, ce) for _, cs, ce in parts[:4]] == [(False, True), (True, True), (True, True), (True, False)]
    index = index_of(QUESTION, "the answer is 42 exactly")
    result = Audit()
    check = _Checker(index, tok, result, ["s"])
    check.add(1, 0, [(0, 0)], texts_of([whole] * 3, bos, eos)[0])
    check.add(2, 0, [(0, 1)], parts)
    check.add(3, 0, [(0, 2)], [(ids("the answer is 42"), False, False)])
    check.flush()
    assert [(f.doc_id, f.match.n) for f in result.findings] == [(1, 5), (2, 10)]


def test_a_benchmark_that_gives_no_text_stops_prepare_and_audit(outputs, capsys, tmp_path):
    outs, _, corpus = outputs
    assert steppack_main(["shards", "audit", outs["plain"], "--benchmark", f"{corpus}/math/test.jsonl.zst",
                          "--text", "{question} {answer}"]) == 2
    err = capsys.readouterr().err
    assert "gave no text" in err and "Traceback" not in err
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "some text " * 20}])
    assert prepare("--input", src, "--output", str(tmp_path / "out"), "--seq-len", "32", "--rows-per-step", "2",
                   "--decontaminate", f"{corpus}/math/test.jsonl.zst", "--decontaminate-text", "{question}") == 2
    err = capsys.readouterr().err
    assert "gave no text to decontaminate against (5,000 records could not be read)" in err
    assert not os.path.exists(tmp_path / "out" / "manifest.json")
