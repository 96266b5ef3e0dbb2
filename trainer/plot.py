"""`steppack plot METRICS.jsonl -o FILE.png`: a training run's metrics as one figure (the `plot` extra).

    ┌ Loss (per source too, when the data has several) ──────────────┐
    ├ Learning rate ─────────────┐ ┌ Gradient norm ─────────────────┤
    ├ Throughput ────────────────┤ ├ Data wait ─────────────────────┤
    └────────────────────────────┘ └────────────────────────────────┘

Reads the lines `steppack train --metrics` appends (trainer/train.py): `step`, `loss`, `lr`,
`grad_norm`, `tokens_per_s`, `data_wait_ms`, `read_ms`, and `source_loss` ({source: loss}, only the
sources present in the step) for several sources. A panel whose key no line has is left out
(`metrics_panels`, pure, names them). The file is appended to across launches, so a resumed run
logs again the steps after its checkpoint: the last line of each step is drawn (what the final
weights trained on), and the command says how many earlier lines it passed over.

Imports neither torch nor Beam; the figure code is shards/plot.py's (Agg, no display).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from steppack.shards.errors import InputError

LOSS = "Loss"
SOURCE_LOSS = "Loss, overall and per source"
LR = "Learning rate"
GRAD_NORM = "Gradient norm"
THROUGHPUT = "Throughput"
DATA_WAIT = "Data wait"
# Panel title -> the metrics key it needs.
PANEL_KEYS = {LR: "lr", GRAD_NORM: "grad_norm", THROUGHPUT: "tokens_per_s", DATA_WAIT: "data_wait_ms"}


def read_metrics(path: str) -> tuple[list[dict], int]:
    """The records in step order, the last line of each step kept; and how many lines that passed over."""
    by_step, lines = {}, 0
    try:
        f = open(path)
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); give the file 'steppack train "
                         "--metrics' wrote") from exc
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {n} is not JSON ({exc.msg}); give the file 'steppack train "
                                 "--metrics' wrote") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise InputError(f"{path} line {n} has no integer 'step'; give the file 'steppack train "
                                 "--metrics' wrote")
            by_step[rec["step"]] = rec
            lines += 1
    if not by_step:
        raise InputError(f"{path} holds no metrics lines; did the training run with --metrics {path}?")
    return [by_step[s] for s in sorted(by_step)], lines - len(by_step)


def metrics_panels(records: list[dict]) -> list[str]:
    """The panels' titles, in drawing order: the loss, per source when any line has `source_loss`,
    then each panel whose key some line holds."""
    has = set().union(*(r.keys() for r in records))
    titles = [SOURCE_LOSS if "source_loss" in has else LOSS] if "loss" in has else []
    return titles + [t for t, key in PANEL_KEYS.items() if key in has]


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    x, y = (np.array(v, np.float64) for v in zip(*pts)) if pts else (np.zeros(0), np.zeros(0))
    return x, y


def metrics_figure(records: list[dict], title: str):
    from steppack.shards.plot import RC, load_matplotlib, log_axis, new_figure

    matplotlib, _ = load_matplotlib()
    from matplotlib.ticker import FuncFormatter

    titles = metrics_panels(records)
    few = len(records) <= 60  # markers show each step while they do not crowd the line
    with matplotlib.rc_context(RC):
        loss_first = bool(titles) and titles[0] in (LOSS, SOURCE_LOSS)
        rest = titles[1:] if loss_first else titles
        rows = int(loss_first) + (len(rest) + 1) // 2
        fig = new_figure(2.9 * rows + 0.6)
        grid = fig.add_gridspec(max(1, rows), 2)
        axes = {}
        if loss_first:
            axes[titles[0]] = fig.add_subplot(grid[0, :])
        for i, t in enumerate(rest):
            axes[t] = fig.add_subplot(grid[int(loss_first) + i // 2, i % 2])
        for t, ax in axes.items():
            ax.set_title(t, loc="left")
            ax.set_xlabel("step")
            ax.xaxis.get_major_locator().set_params(integer=True)
        style = dict(marker="o", ms=3) if few else {}
        if LOSS in axes or SOURCE_LOSS in axes:
            ax = axes.get(LOSS) or axes[SOURCE_LOSS]
            ax.plot(*_series(records, "loss"), color="k", lw=2, label="all tokens", **style)
            names = sorted({n for r in records for n in r.get("source_loss") or {}},
                           key=lambda n: -sum((r.get("source_tokens") or {}).get(n, 0) for r in records))
            for i, name in enumerate(names):
                pts = [(r["step"], r["source_loss"][name]) for r in records if name in (r.get("source_loss") or {})]
                ax.plot(*zip(*pts), color=f"C{i % 10}", lw=1, label=name, **style)
            ax.set_ylabel("loss (nats per token)")
            if names:
                ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        if LR in axes:
            ax = axes[LR]
            ax.plot(*_series(records, "lr"), color="C0", **style)
            # Each tick written out (3.0e-03): a shared "1e-3" offset above the axis pushes the title up.
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: "0" if v == 0 else f"{v:.1e}"))
            ax.set_ylim(bottom=0)
            ax.set_ylabel("learning rate")
        if GRAD_NORM in axes:
            ax = axes[GRAD_NORM]
            ax.plot(*_series(records, "grad_norm"), color="C0", **style)
            ax.set_ylim(bottom=0)
            ax.set_ylabel("global norm, before clipping")
        if THROUGHPUT in axes:
            ax = axes[THROUGHPUT]
            ax.plot(*_series(records, "tokens_per_s"), color="C0", **style)
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(FuncFormatter(_si))
            ax.set_ylabel("tokens / s, all ranks")
        if DATA_WAIT in axes:
            ax = axes[DATA_WAIT]
            ax.plot(*_series(records, "data_wait_ms"), color="C3", label="training loop waited", **style)
            x, y = _series(records, "read_ms")
            if len(x):
                ax.plot(x, y, color="C0", lw=1, alpha=0.7, label="reading the step took", **style)
            ax.set_yscale("log")
            log_axis(ax.yaxis)
            ax.set_ylabel("ms per step (log scale)")
            ax.legend(loc="best", frameon=False)
        fig.suptitle(title, fontsize=12)
    return fig, titles


def _si(v, _pos=None) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", metavar="METRICS.jsonl",
                        help="The file 'steppack train --metrics' wrote (one JSON line per step).")
    parser.add_argument("-o", "--output", metavar="FILE.png", required=True,
                        help="Image to write (PNG; .svg and .pdf work too). Needs the plot extra: "
                             "pip install 'steppack[plot]'.")
    parser.epilog = ("Panels: loss (and each source's loss when the data has several sources), learning rate, "
                     "gradient norm before clipping, tokens per second over all ranks, and data wait (how long "
                     "the training loop waited for the step's rows, with how long reading them took in the "
                     "background). A step logged twice (a resumed run) is drawn from its last line.")


def main(args) -> int:
    from steppack.shards.plot import check_output, save

    check_output(args.output)
    records, passed_over = read_metrics(args.metrics)
    first, last = records[0]["step"], records[-1]["step"]
    world = {r.get("world_size") for r in records} - {None}
    where = f", world size {'/'.join(map(str, sorted(world)))}" if world else ""
    fig, titles = metrics_figure(records, f"{args.metrics}: steps {first}..{last}{where}")
    save(fig, args.output)
    note = (f"; {passed_over} earlier line(s) of a repeated step passed over (a resumed run logs the steps "
            "after its checkpoint again)") if passed_over else ""
    print(f"{args.output}: {', '.join(titles).lower()} over {len(records)} steps ({first}..{last}){note}")
    return 0
