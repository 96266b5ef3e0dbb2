"""The `steppack shards` views through the real command line entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from steppack.shards import FileInfo, Manifest, RowBlock, SourceInfo, TokenizerInfo, step_file_name, write_manifest, write_step
from steppack.shards import tokenizer as tk
from steppack.cli import main
from tests.shardgen import make_output, write_output

DOCS = [
    ("gsm8k", "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."),
    ("math", "Let $f(x) = x^2 + 3x$. Find $f(12)$: we get $144 + 36 = 180$, so the answer is $\\boxed{180}$."),
    ("math", "Ünïcödé and 数学: ∀ε>0 ∃δ>0 such that |x−a|<δ ⟹ |f(x)−f(a)|<ε."),
]


@pytest.fixture
def real_out(tmp_path):
    """One step of one row holding three real documents tokenized with the DeepSeek tokenizer (BOS text EOS)."""
    tok = tk.load("deepseek-llm")
    bos, eos = tk.special_ids("deepseek-llm", tok)
    seq_len = 256
    tokens, lens, ids, srcs = [], [], [], []
    for i, (src, text) in enumerate(DOCS):
        t = [bos] + tok.encode(text, add_special_tokens=False).ids + [eos]
        tokens += t
        lens.append(len(t))
        ids.append(1000 + i)
        srcs.append(0 if src == "gsm8k" else 1)
    pad = eos
    tokens += [pad] * (seq_len - len(tokens))
    block = RowBlock.from_rows([(tokens, lens, ids, srcs)], seq_len, "uint32")
    out = str(tmp_path / "out")
    info = write_step(out, step_file_name(0), block, seq_len=seq_len, dtype="uint32", step=0)
    path = tk.resolve_path("deepseek-llm")
    write_manifest(out, Manifest(
        seq_len=seq_len, rows_per_step=1, dtype="uint32", packing="bestfit", seed=0, steps=[info],
        tokenizer=TokenizerInfo(name="deepseek-llm", sha256=tk.file_sha256(path), vocab_size=tok.get_vocab_size(),
                                bos_id=bos, eos_id=eos, pad_id=pad, add_bos=True, add_eos=True),
        sources=[SourceInfo(name="gsm8k", documents=1, tokens=lens[0]), SourceInfo(name="math", documents=2, tokens=sum(lens[1:]))],
    ))
    return out


def run_json(capsys, *argv):
    assert main(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_show_decodes_a_row_back_to_the_exact_text_of_its_documents(real_out, capsys):
    view = run_json(capsys, "shards", "show", real_out, "--step", "0", "--row", "0")
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    assert [p["text"] for p in view["pieces"]] == [bos + text + eos for _, text in DOCS]
    assert [p["source"] for p in view["pieces"]] == [src for src, _ in DOCS]
    assert view["padding"] == 256 - sum(len(p["tokens"]) for p in view["pieces"])


def test_show_marks_each_piece_with_its_source_and_document(real_out, capsys):
    assert main(["shards", "show", real_out, "--step", "0", "--row", "0"]) == 0
    text = capsys.readouterr().out
    assert text.count("──── piece ") == 3 and "source math · doc 00000000000003e9" in text
    assert DOCS[2][1] in text


def test_show_tokens_prints_ids_without_a_tokenizer(tmp_path, capsys):
    make_output(str(tmp_path), num_steps=1, rows_per_step=2, seq_len=16)
    assert main(["shards", "show", str(tmp_path), "--step", "0", "--row", "1", "--tokens"]) == 0
    assert "piece 1/" in capsys.readouterr().out


def test_show_without_the_tokenizer_says_what_to_do(tmp_path, capsys):
    make_output(str(tmp_path), num_steps=1, rows_per_step=2, seq_len=16)
    assert main(["shards", "show", str(tmp_path), "--step", "0", "--row", "0"]) == 2
    assert "--tokens" in capsys.readouterr().err


def test_show_refuses_a_step_outside_the_output(real_out, capsys):
    assert main(["shards", "show", real_out, "--step", "4"]) == 2
    assert "steps 0..0" in capsys.readouterr().err


def test_ls_lists_every_step_and_the_remainder(tmp_path, capsys):
    m = make_output(str(tmp_path), num_steps=3, rows_per_step=4, seq_len=16, remainder_rows=1)
    listing = run_json(capsys, "shards", "ls", str(tmp_path))
    assert [e["step"] for e in listing] == ["0", "1", "2", "remainder"]
    assert [e["sha256"] for e in listing[:3]] == [s.sha256 for s in m.steps]


def test_stats_counts_match_the_rows(tmp_path, capsys):
    m = make_output(str(tmp_path), num_steps=2, rows_per_step=4, seq_len=16, n_sources=2, remainder_rows=1)
    s = run_json(capsys, "shards", "stats", str(tmp_path))
    assert s["rows"] == 9 and s["tokens"] == 9 * 16 and s["padding"] == 0
    assert s["tokens"] == sum(x["tokens"] for x in s["sources"])
    assert s["token_ids"]["max"] < m.tokenizer.vocab_size and s["token_ids"]["fits"]
    assert s["pieces"] == sum(i.pieces for i in m.steps) + m.remainder.pieces
    assert s["cuts"] == s["pieces"] - s["documents"] and 0 < s["documents_cut"] <= s["cuts"]
    s2 = run_json(capsys, "shards", "stats", str(tmp_path), "--no-remainder")
    assert s2["rows"] == 8


def test_stats_of_a_real_row(real_out, capsys):
    s = run_json(capsys, "shards", "stats", real_out)
    assert s["documents"] == 3 and s["documents_cut"] == 0 and s["pieces_per_row"]["p100"] == 3
    assert [round(x["share"], 3) for x in s["sources"]][0] > 0


def test_views_on_a_missing_output_are_a_clear_error_not_a_traceback(tmp_path, capsys):
    for view in ("ls", "stats", "verify"):
        rc = main(["shards", view, str(tmp_path / "nope")])
        assert rc in (1, 2)
    err = capsys.readouterr()
    assert "Traceback" not in err.err and "does not exist" in err.err + err.out


@pytest.mark.parametrize("argv", [[], ["shards"], ["shards", "ls"], ["shards", "stats"], ["shards", "show"],
                                  ["shards", "verify"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    assert exc.value.code == 0
    assert "usage: steppack" in capsys.readouterr().out


def test_shards_views_import_neither_torch_nor_beam(tmp_path):
    make_output(str(tmp_path), num_steps=1, rows_per_step=2, seq_len=8)
    code = (
        "import sys; from steppack.cli import main; "
        f"main(['shards', 'stats', {str(tmp_path)!r}]); main(['shards', 'verify', {str(tmp_path)!r}]); "
        "bad = [m for m in ('torch', 'apache_beam') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stats_length_trend_counts_each_piece_at_its_documents_full_length(tmp_path, capsys):
    # Steps of documents 2+2, 4+4, 8, and a 12-token document cut into step 3 and the remainder.
    def row(*docs):
        tokens = [t for d, n in docs for t in [d] * n]
        return tokens + [0] * (8 - len(tokens)), [n for _, n in docs], [d for d, _ in docs], [0] * len(docs)

    out = str(tmp_path / "trend")
    write_output(out, [[row((1, 2), (2, 2))], [row((3, 4), (4, 4))], [row((5, 8))], [row((6, 8))]], seq_len=8,
                 remainder=[row((6, 4))])
    t = run_json(capsys, "shards", "stats", out)["length_trend"]
    assert t["per_step_mean"] == [2, 4, 8, 12] and t["mean"] == 6.5
    assert t["first_10pct"] == 2 and t["last_10pct"] == 12 and t["steps_in_10pct"] == 1
    assert t["correlation_with_step"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [2, 4, 8, 12])[0, 1])
    assert main(["shards", "stats", out]) == 0
    assert ("length trend   per-step mean length of the documents in the step: 6.5 (first 10% of steps 2.0, "
            "last 10% 12.0); correlation with the step index +0.99") in capsys.readouterr().out


def test_stats_of_a_plain_output_has_a_trend_and_no_mixture(tmp_path, capsys):
    make_output(str(tmp_path), num_steps=20, rows_per_step=4, seq_len=16)
    s = run_json(capsys, "shards", "stats", str(tmp_path))
    assert s["mixture"] is None and len(s["length_trend"]["per_step_mean"]) == 20
    assert s["length_trend"]["steps_in_10pct"] == 2 and -1 <= s["length_trend"]["correlation_with_step"] <= 1


def test_show_step_without_a_row_gives_the_steps_composition(tmp_path, capsys):
    m = make_output(str(tmp_path), num_steps=2, rows_per_step=4, seq_len=16, n_sources=2)
    view = run_json(capsys, "shards", "show", str(tmp_path), "--step", "1")
    info = m.steps[1]
    assert (view["rows"], view["tokens"], view["padding"]) == (4, info.tokens, info.padding)
    assert (view["documents"], view["pieces"]) == (info.documents, info.pieces)
    assert sum(x["tokens"] for x in view["sources"]) == info.tokens
    assert sum(x["pieces"] for x in view["sources"]) == info.pieces
    assert all(0 <= x["rows"] <= 4 for x in view["sources"]) and sum(x["rows"] for x in view["sources"]) >= 4
    assert view["mixture_stage"] is None and all(x["weight"] is None for x in view["sources"])
    assert main(["shards", "show", str(tmp_path), "--step", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"step 1 of {tmp_path} (steps/step-00000001.arrow): 4 rows x 16 tokens")
    assert "src0" in text and "src1" in text and "rows holding a piece of the source" in text


def test_show_step_tokens_without_a_row_says_to_add_one(tmp_path, capsys):
    make_output(str(tmp_path), num_steps=1, rows_per_step=2, seq_len=16)
    assert main(["shards", "show", str(tmp_path), "--step", "0", "--tokens"]) == 2
    assert "add --row R" in capsys.readouterr().err


@pytest.mark.parametrize("damage,message", [
    ("utf8", "is not UTF-8 text"), ("version", "has format_version 'one', not an integer"),
    ("directory", "cannot be read"), ("nested", "is not valid JSON"), ("huge", "above the 1,073,741,824"),
    ("remainder", "a path outside the output")])
def test_a_damaged_manifest_is_one_line_for_every_reader(tmp_path, capsys, damage, message):
    out = tmp_path / "out"
    make_output(str(out), num_steps=1, rows_per_step=4, seq_len=16, vocab_size=100, seed=0)
    path = out / "manifest.json"
    if damage == "utf8":
        path.write_bytes(b'\xff\xfe{"format"')
    elif damage == "version":
        path.write_text(json.dumps(dict(json.loads(path.read_text()), format_version="one")))
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    elif damage == "huge":  # read before anything is allocated for a step
        path.write_text(json.dumps(dict(json.loads(path.read_text()), rows_per_step=10**9)))
    elif damage == "remainder":
        m = json.loads(path.read_text())
        path.write_text(json.dumps(dict(m, remainder=dict(m["steps"][0], file="/dev/zero"))))
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
    for argv in (["shards", "ls", str(out)], ["shards", "stats", str(out)],
                 ["train", "--data", str(out), "--model", "tiny", "--vocab-size", "128", "--context", "16"]):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main(["shards", "verify", str(out)]) == 1
    assert message in capsys.readouterr().out


def test_show_escapes_terminal_control_sequences_from_the_data():
    from steppack.shards.show import render

    text = "clear\x1b[2Jscreen, title\x1b]0;pwned\x07, back\roverwrite, \u202eevil, tab\tand\nnewline, é ∑ 中"
    view = {"step": 0, "row": 0, "padding": 0, "pieces": [
        {"continues_from_previous_row": False, "continues_in_next_row": False, "source": "s", "doc_id": "0",
         "tokens": [1, 2], "text": text}]}
    shown = render(view, show_tokens=False)
    assert "clear\\x1b[2Jscreen, title\\x1b]0;pwned\\x07, back\\roverwrite, \\u202eevil, tab\tand\nnewline, é ∑ 中" in shown
    assert not any(c in shown for c in "\x1b\x07\r\u202e")
