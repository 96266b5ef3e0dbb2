"""`steppack shards stats OUT --plot FILE.png`: the stats as one figure (matplotlib, the `plot` extra).

    ┌ Document length ───────────┐ ┌ Pieces per row ───────────────┐
    │ histogram, log-spaced bins │ │ rows holding 1, 2, 3 … pieces │
    ├ Padding per step ──────────┤ ├ Mean document length per step ┤
    │ % of each step's tokens    │ │ the length trend of stats     │
    ├ Source shares per step (outputs with several sources) ─────────┤
    │ stacked shares; a mixture: each step's rows against its target │
    └────────────────────────────────────────────────────────────────┘

Everything drawn comes from shards/stats.py (`compute_with_arrays`); this module only draws.
`stats_panels` names the panels a summary gets, without matplotlib (tests pin it). The figure is a
`matplotlib.figure.Figure` rendered by Agg: no pyplot, no display, no global backend switch.
Helpers shared with `steppack plot` (trainer/plot.py): `load_matplotlib`, `check_output`, `new_figure`,
`save`, `log_axis`, `RC`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import ConfigError

DOC_LENGTH = "Document length"
PIECES = "Pieces per row"
PADDING = "Padding per step"
TREND = "Mean document length per step"
SOURCE_TOKENS = "Share of each source's tokens per step"
MIXTURE = "Rows per source in each step, against the mixture's target"

# 10 x 9.5 in at 100 dpi: 1000 px wide, about README width (~880 px) with 11-pt text still legible.
WIDTH_IN, DPI = 10.0, 100
# Past this many steps the shares of a source-less (non-mixture) output are averaged over blocks of
# steps: at 8 rows a step, one step's share swings between 0 and 100% and hides the picture.
MAX_SHARE_BLOCKS = 100
RC = {"font.size": 11, "axes.titlesize": 12, "axes.titleweight": "bold", "legend.fontsize": 9,
      "axes.spines.top": False, "axes.spines.right": False}


def stats_panels(summary: dict) -> list[str]:
    """The panels' titles, in drawing order, for a `stats` summary: the source panel only when there
    is more than one source to share the steps (a mixture's shows its targets)."""
    titles = [DOC_LENGTH, PIECES, PADDING, TREND]
    if summary.get("mixture") is not None:
        titles.append(MIXTURE)
    elif len(summary["sources"]) > 1:
        titles.append(SOURCE_TOKENS)
    return titles


def load_matplotlib():
    """Import matplotlib (the `plot` extra). Called before any long work, so a missing extra costs no
    wait: the ModuleNotFoundError it raises names 'matplotlib', which the CLI turns into one line."""
    import matplotlib
    from matplotlib.figure import Figure

    return matplotlib, Figure


def check_output(path: str) -> None:
    """Refuse a file type matplotlib cannot write, or a URI, before reading anything."""
    _, Figure = load_matplotlib()
    if "://" in path:
        raise ConfigError(f"cannot write a figure to {path}: give a local file (the figure is small; copy it "
                          "up afterwards)")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    supported = Figure().canvas.get_supported_filetypes()
    if ext not in supported:
        raise ConfigError(f"cannot write a figure to {path}: name it .png (or one of "
                          f"{', '.join('.' + e for e in sorted(supported))})")


def new_figure(height_in: float):
    matplotlib, Figure = load_matplotlib()
    with matplotlib.rc_context(RC):
        return Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")


def save(fig, path: str) -> None:
    matplotlib, _ = load_matplotlib()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with matplotlib.rc_context(RC):
        fig.savefig(path, dpi=DPI)


def stats_figure(summary: dict, arrays, title: str):
    """The figure of a summary and its arrays (shards/stats.py `compute_with_arrays`)."""
    matplotlib, _ = load_matplotlib()
    titles = stats_panels(summary)
    with matplotlib.rc_context(RC):
        fig = new_figure(9.5 if len(titles) > 4 else 6.6)
        grid = fig.add_gridspec(3 if len(titles) > 4 else 2, 2)
        axes = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
        if len(titles) > 4:
            axes.append(fig.add_subplot(grid[2, :]))
        for ax, t in zip(axes, titles):
            ax.set_title(t, loc="left")
        _doc_lengths(axes[0], arrays.document_tokens, summary)
        _pieces(axes[1], arrays.pieces_per_row)
        _padding(axes[2], arrays.step_padding, summary)
        _trend(axes[3], summary["length_trend"])
        if len(titles) > 4:
            if summary["mixture"] is not None:
                _mixture(axes[4], arrays.step_source_rows, summary)
            else:
                _source_tokens(axes[4], arrays.step_source_tokens, summary)
        fig.suptitle(title, fontsize=12)
    return fig


def log_axis(axis) -> None:
    """A log axis labelled in plain numbers (1,000, not 10^3): every digit within one decade, 1-2-5
    within two, powers of ten beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = axis.get_view_interval()
    span = hi / lo if lo > 0 else math.inf
    subs = tuple(range(1, 10)) if span <= 10 else (1.0, 2.0, 5.0) if span <= 100 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _doc_lengths(ax, lengths: np.ndarray, s: dict) -> None:
    d = s["document_tokens"]
    if len(lengths):
        lo, hi = max(1, int(lengths.min())), int(lengths.max()) + 1
        bins = np.geomspace(lo, max(hi, 2 * lo), 50)
        ax.hist(lengths, bins=bins, color="C0")
        ax.axvline(d["p50"], color="k", ls="--", lw=1, label=f"median {d['p50']:,}")
        ax.axvline(d["p90"], color="k", ls=":", lw=1, label=f"90th percentile {d['p90']:,}")
        ax.axvline(s["seq_len"], color="C3", lw=1.5, label=f"row length {s['seq_len']:,}")
        ax.legend(loc="upper right", frameon=False)
    ax.set_xscale("log")
    log_axis(ax.xaxis)
    ax.set_xlabel("document length (tokens, log scale)")
    ax.set_ylabel("documents")


def _pieces(ax, ppr: np.ndarray) -> None:
    from matplotlib.ticker import MaxNLocator

    counts = np.bincount(ppr) if len(ppr) else np.zeros(1, np.int64)
    k = np.arange(len(counts))
    ax.bar(k[1:], counts[1:], color="C0", width=0.8)
    if len(ppr):
        ax.axvline(float(ppr.mean()), color="k", ls="--", lw=1, label=f"mean {ppr.mean():.2f}")
        ax.legend(loc="upper right", frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("document pieces in the row")
    ax.set_ylabel("rows")


def _padding(ax, padding: np.ndarray, s: dict) -> None:
    pct = 100.0 * padding / max(1, s["rows_per_step"] * s["seq_len"])
    x = np.arange(len(pct))
    ax.plot(x, pct, color="C0", lw=1, drawstyle="steps-mid", label="each step")
    if len(pct):
        ax.axhline(float(pct.mean()), color="k", ls="--", lw=1, label=f"mean {pct.mean():.2f}%")
    ax.set_ylim(0, max(1.0, float(pct.max()) * 1.3) if len(pct) else 1.0)
    ax.set_xlim(0, max(1, len(pct) - 1))
    if not pct.any():  # a line along the axis is easy to miss
        ax.text(0.5, 0.5, "no padding in any step", transform=ax.transAxes, ha="center", va="center",
                color="0.35")
    ax.set_xlabel("step")
    ax.set_ylabel("padding (% of the step's tokens)")
    ax.legend(loc="upper right", frameon=False)


def _trend(ax, t: dict) -> None:
    y = np.array([np.nan if v is None else v for v in t["per_step_mean"]], np.float64)
    n, k = len(y), t["steps_in_10pct"]
    x = np.arange(n)
    ax.plot(x, y, color="C0", lw=0.8, alpha=0.6, label="each step")
    if n and t["first_10pct"] is not None:
        ax.plot([0, k - 1], [t["first_10pct"]] * 2, color="C1", lw=3, solid_capstyle="butt",
                label=f"first / last 10% of steps {t['first_10pct']:,.0f} / {t['last_10pct']:,.0f}")
        ax.plot([n - k, n - 1], [t["last_10pct"]] * 2, color="C1", lw=3, solid_capstyle="butt")
    if np.isfinite(y).any() and np.nanmin(y) > 0:
        lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
        ax.set_yscale("log")
        # Headroom above the line for the legend: the top third of the log axis.
        ax.set_ylim(lo / 1.1, hi * max(1.1, (hi / lo) ** 0.5))
        log_axis(ax.yaxis)
    corr = t["correlation_with_step"]
    ax.plot([], [], " ", label="correlation with the step index " + ("-" if corr is None else f"{corr:+.2f}"))
    ax.set_xlim(0, max(1, n - 1))
    ax.set_xlabel("step")
    ax.set_ylabel("tokens (log scale)")
    ax.legend(loc="upper right", frameon=False, handlelength=1.5)


def _stack(ax, x, shares: np.ndarray, labels: list[str]) -> None:
    """Stacked areas, one per source (columns of `shares`, fractions summing to 1 per row of x)."""
    if not len(shares):  # no steps (everything in the remainder): an empty panel with its labels
        x, shares = np.zeros(0), np.zeros((0, len(labels)))
    bottom = np.zeros(len(shares))
    for i, label in enumerate(labels):
        top = bottom + shares[:, i]
        ax.fill_between(x, 100 * bottom, 100 * top, step="post", color=f"C{i % 10}", lw=0, label=label)
        bottom = top
    ax.set_ylim(0, 100)
    ax.set_ylabel("share (%)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _edges(values: np.ndarray) -> np.ndarray:
    """Repeat the last value so that a step="post" fill covers the last step to its end."""
    return np.concatenate([values, values[-1:]]) if len(values) else values


def _source_tokens(ax, tokens: np.ndarray, s: dict) -> None:
    steps = len(tokens)
    size = max(1, math.ceil(steps / MAX_SHARE_BLOCKS))
    starts = np.arange(0, steps, size)
    sums = np.add.reduceat(tokens, starts, axis=0) if steps else tokens
    shares = sums / np.maximum(1, sums.sum(axis=1, keepdims=True))
    labels = [f"{x['name']} {100 * x['share']:.1f}%" for x in s["sources"]]
    _stack(ax, np.append(starts, steps), _edges(shares), labels)
    ax.set_xlim(0, max(1, steps))
    ax.set_xlabel("step" + (f" (each column: {size} steps' tokens together)" if size > 1 else ""))


def _mixture(ax, rows: np.ndarray, s: dict) -> None:
    R, steps = s["rows_per_step"], len(rows)
    names = [f"{x['name']} {100 * x['actual_overall']:.1f}%" for x in s["mixture"]["sources"]]
    _stack(ax, np.arange(steps + 1), _edges(rows / R), names)
    # The target's stacked boundaries, stage by stage: each step's rows are the floor or ceiling of
    # its running target, so the filled boundaries stay within one row (100/R %) of these lines.
    for st in s["mixture"]["stages"]:
        cum = 100 * np.cumsum(st["target"])[:-1]
        a, b = st["first_step"], st["first_step"] + st["steps"]
        for y in cum:
            ax.plot([a, b], [y, y], color="k", ls="--", lw=1)
        if a > 0:
            ax.axvline(a, color="k", lw=1)
    ax.plot([], [], color="k", ls="--", lw=1, label="target")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xlim(0, max(1, steps))
    ax.set_ylabel(f"share of the step's {R} rows (%)")
    ax.set_xlabel("step")
