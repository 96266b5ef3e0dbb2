"""Figures (`shards stats --plot`, `steppack plot`) and the progress bars of `stats` and `verify`:
real outputs from tests/shardgen.py, a real metrics file from a tiny `steppack train`."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from steppack.cli import main
from steppack.shards import read_manifest
from steppack.shards import plot as splot
from steppack.shards.stats import compute_with_arrays
from steppack.trainer import plot as tplot
from tests.shardgen import make_mixture_output, make_output
from tests.test_trainer_support import ROOT, train_args

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install -e '.[test]'")

CLI = [sys.executable, "-c", "from steppack.cli import entry; entry()"]


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and header chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two") / "out")
    make_output(out, num_steps=12, rows_per_step=8, seq_len=32, vocab_size=500, n_sources=2, remainder_rows=3)
    return out


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mix") / "out")
    make_mixture_output(out, stages=[(6, [0.6, 0.2, 0.2]), (4, [0.25, 0.25, 0.5])], rows_per_step=8, seq_len=16)
    return out


def test_stats_plot_of_two_sources_writes_a_png_with_the_five_panels(two_sources, tmp_path, capsys):
    png = tmp_path / "fig" / "stats.png"  # its folder is made
    assert main(["shards", "stats", two_sources, "--plot", str(png)]) == 0
    assert f"figure         {png}" in capsys.readouterr().out
    w, h = png_size(png)
    assert 800 <= w <= 1600 and 600 <= h <= 1600
    m = read_manifest(two_sources)
    s, arrays = compute_with_arrays(two_sources, m)
    assert splot.stats_panels(s) == [splot.DOC_LENGTH, splot.PIECES, splot.PADDING, splot.TREND, splot.SOURCE_TOKENS]
    assert titles(splot.stats_figure(s, arrays, "t")) == splot.stats_panels(s)


def test_stats_json_with_plot_prints_only_the_json(two_sources, tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["shards", "stats", two_sources, "--json", "--plot", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 12
    png_size(png)


def test_the_arrays_behind_the_figure_agree_with_the_manifest(two_sources, mixture):
    for out in (two_sources, mixture):
        m = read_manifest(out)
        s, a = compute_with_arrays(out, m)
        assert a.step_padding.tolist() == [i.padding for i in m.steps]
        assert a.step_source_tokens.sum(axis=1).tolist() == [i.tokens for i in m.steps]
        assert a.document_tokens.sum() == s["tokens"] and len(a.document_tokens) == s["documents"]
        assert len(a.pieces_per_row) == s["rows"] and a.pieces_per_row.sum() == s["pieces"]
    assert a.step_source_rows.tolist() == [i.source_rows for i in m.steps]
    assert compute_with_arrays(two_sources, read_manifest(two_sources))[1].step_source_rows is None


def test_one_source_gets_no_source_panel(tmp_path):
    out = str(tmp_path / "one")
    make_output(out, num_steps=3, rows_per_step=4, seq_len=16)
    s, arrays = compute_with_arrays(out, read_manifest(out))
    fig = splot.stats_figure(s, arrays, "t")
    assert titles(fig) == [splot.DOC_LENGTH, splot.PIECES, splot.PADDING, splot.TREND]
    assert main(["shards", "stats", out, "--plot", str(tmp_path / "one.png")]) == 0
    w, h = png_size(tmp_path / "one.png")
    assert w == 1000 and h < 800


def test_a_mixture_panel_draws_each_stages_target_boundaries(mixture, tmp_path):
    s, arrays = compute_with_arrays(mixture, read_manifest(mixture))
    assert splot.stats_panels(s)[-1] == splot.MIXTURE
    fig = splot.stats_figure(s, arrays, "t")
    ax = fig.axes[titles(fig).index(splot.MIXTURE)]
    dashed = sorted((tuple(map(float, ln.get_xdata())), round(float(ln.get_ydata()[0]), 6))
                    for ln in ax.get_lines() if ln.get_linestyle() == "--" and len(ln.get_xdata()))
    # Stage 1 (steps 0..5): 60 | 20 | 20 stacked -> boundaries at 60 and 80; stage 2 (6..9): 25, 50.
    assert dashed == [((0.0, 6.0), 60.0), ((0.0, 6.0), 80.0), ((6.0, 10.0), 25.0), ((6.0, 10.0), 50.0)]
    assert main(["shards", "stats", mixture, "--plot", str(tmp_path / "mix.png")]) == 0
    png_size(tmp_path / "mix.png")


def test_stats_refuses_a_file_type_it_cannot_write_before_reading_anything(two_sources, tmp_path, capsys):
    assert main(["shards", "stats", two_sources, "--plot", str(tmp_path / "stats.txt")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot write a figure to" in err and "name it .png" in err
    assert main(["shards", "stats", two_sources, "--plot", "gs://bucket/stats.png"]) == 2
    assert "give a local file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def metrics(tmp_path_factory, two_sources):
    """The metrics file of a real 4-step run on two sources (so it logs source_loss)."""
    d = tmp_path_factory.mktemp("run")
    path = str(d / "metrics.jsonl")
    assert main(train_args(two_sources, d, "--metrics", path, "--steps", "4", "--micro-batch", "4")) == 0
    return path


def test_plot_of_a_real_run_draws_every_panel_with_the_loss_per_source(metrics, tmp_path, capsys):
    png = tmp_path / "metrics.png"
    assert main(["plot", metrics, "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{png}: loss, overall and per source, learning rate") and "over 4 steps (0..3)" in out
    w, h = png_size(png)
    assert 800 <= w <= 1600 and 600 <= h <= 1600
    records, passed_over = tplot.read_metrics(metrics)
    assert passed_over == 0 and [r["step"] for r in records] == [0, 1, 2, 3]
    fig, panels = tplot.metrics_figure(records, "t")
    assert panels == [tplot.SOURCE_LOSS, tplot.LR, tplot.GRAD_NORM, tplot.THROUGHPUT, tplot.DATA_WAIT]
    assert titles(fig) == panels
    loss_ax = fig.axes[0]
    assert sorted(ln.get_label() for ln in loss_ax.get_lines()) == ["all tokens", "src0", "src1"]


def test_plot_draws_a_resumed_steps_last_line_and_leaves_out_panels_without_data(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    lines = [{"step": s, "loss": 10.0 - s, "lr": 1e-3} for s in range(4)]
    lines += [{"step": 2, "loss": 7.5, "lr": 1e-3}, {"step": 3, "loss": 6.5, "lr": 1e-3}]  # resumed at 2
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")
    records, passed_over = tplot.read_metrics(str(path))
    assert passed_over == 2 and [r["loss"] for r in records] == [10.0, 9.0, 7.5, 6.5]
    assert tplot.metrics_panels(records) == [tplot.LOSS, tplot.LR]
    assert main(["plot", str(path), "-o", str(tmp_path / "m.png")]) == 0
    assert "2 earlier line(s) of a repeated step passed over" in capsys.readouterr().out
    w, h = png_size(tmp_path / "m.png")
    assert h < 800  # two rows of panels, not three


def test_plot_names_the_line_that_is_not_a_metrics_line(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"loss": 2.0\n')
    assert main(["plot", str(path), "-o", str(tmp_path / "m.png")]) == 2
    assert f"{path} line 2 is not JSON" in capsys.readouterr().err
    path.write_text("")
    assert main(["plot", str(path), "-o", str(tmp_path / "m.png")]) == 2
    assert "holds no metrics lines" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_the_figures_import_neither_torch_nor_beam(two_sources, tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"step": 0, "loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 9.0,
                                "data_wait_ms": 0.1, "read_ms": 1.0}) + "\n")
    code = ("import sys; from steppack.cli import main; "
            f"rc = main(['plot', {str(path)!r}, '-o', {str(tmp_path / 'm.png')!r}]); "
            f"rc = rc or main(['shards', 'stats', {two_sources!r}, '--plot', {str(tmp_path / 's.png')!r}]); "
            "bad = [m for m in ('torch', 'apache_beam') if m in sys.modules]; print(bad); sys.exit(rc or bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    png_size(tmp_path / "m.png"), png_size(tmp_path / "s.png")


@pytest.mark.parametrize("argv", [["shards", "stats", "{out}", "--plot", "{png}"], ["plot", "{metrics}", "-o", "{png}"]])
def test_without_matplotlib_one_line_names_the_extra(argv, two_sources, tmp_path):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n")
    png = tmp_path / "x.png"
    args = [a.format(out=two_sources, png=png, metrics=metrics) for a in argv]
    code = "import sys; sys.modules['matplotlib'] = None\nfrom steppack.cli import entry; entry()"
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""  # stats stopped before its long read
    assert r.stderr.strip().splitlines() == [
        f"steppack {argv[0]}: error: this needs matplotlib, which is not installed: pip install 'steppack[plot]'"]
    assert not png.exists()


@pytest.mark.parametrize("argv", [["plot"], ["shards", "stats"]])
def test_help_tells_what_the_figures_hold(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "steppack[plot]" in text and ("gradient norm" in text if argv == ["plot"] else "--plot FILE.png" in text)


BAR_MARKS = ("\r", "%|", "file/s", "█")


@pytest.mark.parametrize("view", ["stats", "verify"])
def test_without_a_terminal_stats_and_verify_print_no_progress_bar(view, two_sources, capfd):
    assert main(["shards", view, two_sources]) == 0
    out, err = capfd.readouterr()
    assert out and not any(mark in out + err for mark in BAR_MARKS)


def test_on_a_terminal_verify_draws_a_bar_on_stderr_and_stdout_stays_plain(two_sources):
    # stderr on a pseudo-terminal, stdout a pipe: the bar goes to the terminal only.
    master, slave = pty.openpty()
    # A new pseudo-terminal is 0 columns wide (tqdm would fit its bar into nothing): make it 100.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.run([*CLI, "shards", "verify", two_sources], stdout=subprocess.PIPE, stderr=slave,
                          cwd=ROOT, env=env, timeout=120)
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    assert proc.returncode == 0 and b"OK" in proc.stdout and not any(m.encode() in proc.stdout for m in BAR_MARKS)
    assert b"verify:" in tty and b"/12" in tty


def test_progress_wrapper_leaves_the_items_alone_off_a_terminal():
    from steppack.shards.progress import step_bar

    items = [1, 2, 3]
    assert step_bar(items, total=3, desc="x") is items
    assert np.array_equal(list(step_bar(iter(items), total=3, desc="x")), items)
