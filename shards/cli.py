"""`steppack shards ls|stats|show|verify`: look into a prepared output. Imports neither torch nor Beam.

    ls       the manifest's steps, one line each (no step file opened)
    stats    every step read once: totals, distributions, the length trend over the steps, a mixture's
             targets against its rows (shards/stats.py); --plot FILE.png draws them (shards/plot.py)
    show     --step S --row R: one row decoded to text; --step S alone: the step's composition (shards/show.py)
    verify   every check of shards/verify.py, one line per problem, exit 1 if any
    audit    --benchmark GLOB: the documents holding a benchmark's n-grams and the steps that hold
             them, exit 1 if any (steppack.pipeline.audit: the rule of prepare's decontamination)

stats and verify draw a progress bar over the step files on stderr when stderr is a terminal
(shards/progress.py); piped or captured, their output is the plain report alone.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigError
from .manifest import read_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="view", metavar="VIEW", required=True)

    p = sub.add_parser("ls", help="One line per step: rows, tokens, documents, padding, bytes.",
                       description="List the steps of OUT from its manifest (no step file is opened).")
    _common(p)
    p.set_defaults(_view=cmd_ls)

    p = sub.add_parser("stats", help="Totals and distributions over every step.",
                       description="Read every step of OUT and print totals and distributions: tokens, documents, "
                                   "pieces per row, document-length percentiles, padding, documents cut across rows, "
                                   "per-source token shares, token-id range against the vocabulary; the length trend "
                                   "(each step's mean full length of the documents its pieces come from, first and last "
                                   "10%% of the steps, correlation with the step index: near 0 means no length "
                                   "curriculum); for a mixture, per source the target share of rows per stage against "
                                   "the actual share, the largest deviation of one step and of a running total, and "
                                   "the passes over its data. --plot FILE.png draws them too. A progress bar over "
                                   "the step files goes to stderr when stderr is a terminal.")
    _common(p)
    p.add_argument("--no-remainder", action="store_true", help="Leave the remainder rows (past the last full step) out.")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="Also draw the stats into this image (needs the plot extra: pip install 'steppack[plot]'): "
                        "document-length histogram, pieces per row, padding per step, each step's mean document "
                        "length, and the sources' shares of each step (a mixture's against its targets).")
    p.set_defaults(_view=cmd_stats)

    p = sub.add_parser("show", help="One row decoded back to text (--row), or what a step is made of.",
                       description="With --row R: decode row R of step S with the tokenizer named in the manifest; "
                                   "each document piece is labelled with its source and document id. Without --row: "
                                   "step S's composition: rows, tokens, documents, pieces per source, and padding "
                                   "(needs no tokenizer).")
    _common(p)
    p.add_argument("--step", type=int, required=True, help="Step index (0-based).")
    p.add_argument("--row", type=int, default=None,
                   help="Row inside the step (0-based) to decode; without it, show the step's composition.")
    p.add_argument("--tokens", action="store_true", help="Print token ids instead of text (needs no tokenizer).")
    p.add_argument("--tokenizer", default=None,
                   help="Decode with this tokenizer.json (or preset) instead of the one the manifest names.")
    p.set_defaults(_view=cmd_show)

    p = sub.add_parser("verify", help="Check the whole output; non-zero exit with one line per problem.",
                       description="Check OUT against its manifest and the format: files present and no extras, "
                                   "sizes and sha256 checksums, rows per step, seq_len, dtype, token ids below the "
                                   "vocabulary, doc_lens that add up, the format version, no document id shared by two "
                                   "documents; for a mixture, one source per row and every step's rows per source on "
                                   "the stage's quota. Exit 1 if anything is wrong. A progress bar over the step "
                                   "files goes to stderr when stderr is a terminal.")
    _common(p)
    p.add_argument("--world-size", type=int, default=None,
                   help="Also check that every step splits across this many ranks.")
    p.add_argument("--micro-batch", type=int, default=1,
                   help="With --world-size: also check that each rank's rows split into micro-batches of this size.")
    p.set_defaults(_view=cmd_verify)

    p = sub.add_parser("audit", help="Which documents hold a benchmark's n-grams, and in which steps; exit 1 if any.",
                       description="Decode every row of OUT (pieces joined by doc_id across rows), apply prepare's "
                                   "decontamination rule (docs/prepare.md, 'Decontamination') to each document and list "
                                   "each contaminated one: doc_id, source, the steps and rows holding its pieces, the "
                                   "benchmark item and the matching words. Exit 1 when anything matches, 0 when the "
                                   "output is clean. A progress bar goes to stderr when stderr is a terminal.")
    _common(p)
    p.add_argument("--benchmark", action="append", required=True, metavar="GLOB",
                   help="Benchmark files (repeatable; each a benchmark named by its GLOB): jsonl[.gz|.zst], parquet, "
                        "text, an HF save_to_disk directory; local, gs:// or s3://.")
    p.add_argument("--text", action="append", metavar="FIELD_OR_TEMPLATE",
                   help="The benchmark text: a field, or a template over fields such as '{question} {answer}' "
                        "(default: text). Once for every --benchmark, or once per --benchmark in their order.")
    p.add_argument("--ngram", type=int, default=10, help="n of the n-grams (default 10, DeepSeekMath's).")
    p.add_argument("--min-ngram", type=int, default=3,
                   help="Benchmark texts of min-ngram .. ngram-1 words are matched whole; shorter ones are ignored "
                        "(default 3).")
    p.add_argument("--tokenizer", default=None,
                   help="Decode with this tokenizer.json (or preset) instead of the one the manifest names.")
    p.set_defaults(_view=cmd_audit)
    parser.set_defaults(_main=lambda args: args._view(args))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="Output directory of 'steppack prepare' (local path or gs://, s3:// URI).")
    p.add_argument("--json", action="store_true", help="Print JSON for scripts instead of the human view.")


def main(args: argparse.Namespace) -> int:
    return args._view(args)


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cmd_ls(args) -> int:
    m = read_manifest(args.out)
    entries = [(str(i), s) for i, s in enumerate(m.steps)] + ([("remainder", m.remainder)] if m.remainder else [])
    if args.json:
        _print_json([{"step": name, **vars(s)} for name, s in entries])
        return 0
    print(f"{'step':>9} {'rows':>6} {'tokens':>12} {'docs':>7} {'padding':>8} {'bytes':>10}")
    for name, s in entries:
        pad = 100.0 * s.padding / max(1, s.rows * m.seq_len)
        print(f"{name:>9} {s.rows:>6} {s.tokens:>12,} {s.documents:>7,} {pad:>7.2f}% {human_bytes(s.bytes):>10}")
    total_bytes = sum(s.bytes for _, s in entries)
    print(f"{m.num_steps} steps x {m.rows_per_step} rows x {m.seq_len} tokens ({m.dtype}), "
          f"{human_bytes(total_bytes)} on disk")
    return 0


def cmd_stats(args) -> int:
    from .progress import step_bar
    from .stats import compute_with_arrays

    if args.plot:
        from .plot import check_output

        check_output(args.plot)  # matplotlib present, a file type it writes: known before the long read
    m = read_manifest(args.out)
    s, arrays = compute_with_arrays(args.out, m, include_remainder=not args.no_remainder, progress=step_bar)
    if args.plot:
        from .plot import save, stats_figure

        save(stats_figure(s, arrays, title=f"{args.out}: {s['steps']:,} steps × {s['rows_per_step']:,} rows × "
                                           f"{s['seq_len']:,} tokens"), args.plot)
    if args.json:
        _print_json(s)
        return 0
    where = "steps + remainder" if s["included_remainder"] else "steps"
    d, ppr, ids = s["document_tokens"], s["pieces_per_row"], s["token_ids"]
    print(f"{args.out} ({where}): {s['steps']} steps x {s['rows_per_step']} rows x {s['seq_len']} tokens, "
          f"{s['rows']:,} rows ({s['remainder_rows']} in the remainder)")
    print(f"  tokens         {s['tokens']:,} document tokens, {s['padding']:,} padding ({s['padding_pct']:.2f}%)")
    print(f"  documents      {s['documents']:,} in {s['pieces']:,} pieces; {s['documents_cut']:,} cut across rows "
          f"({s['cuts']:,} cuts)")
    if m.mixture is not None and max(m.mixture.passes, default=0) > 1:
        print("                 (sources repeated over several passes: a document's copies count as one "
              "document, their pieces and tokens added up)")
    print(f"  pieces/row     mean {_f(ppr['mean'])}  p50 {ppr['p50']}  p90 {ppr['p90']}  max {ppr['p100']}")
    print(f"  doc tokens     mean {_f(d['mean'])}  min {d['p0']}  p10 {d['p10']}  p50 {d['p50']}  p90 {d['p90']}  "
          f"p99 {d['p99']}  max {d['p100']}")
    print("  sources        " + "\n                 ".join(
        f"{x['name']:<20} {x['tokens']:>12,} tokens  {100 * x['share']:6.2f}%" for x in s["sources"]))
    verdict = "all below the vocabulary" if ids["fits"] else "SOME NOT BELOW THE VOCABULARY"
    print(f"  token ids      {ids['min']}..{ids['max']} of vocabulary {ids['vocab_size']:,} ({verdict})")
    t = s["length_trend"]
    corr = "-" if t["correlation_with_step"] is None else f"{t['correlation_with_step']:+.2f}"
    # Each document counted once per step it has a piece in: a long document spans more steps, so
    # this runs above the 'doc tokens' mean.
    print(f"  length trend   per-step mean length of the documents in the step: {_f(t['mean'])} (first 10% of "
          f"steps {_f(t['first_10pct'])}, last 10% {_f(t['last_10pct'])}); correlation with the step index {corr}")
    if s["mixture"] is not None:
        print(_mixture_lines(s["mixture"]))
    if args.plot:
        print(f"  figure         {args.plot}")
    return 0


def _mixture_lines(mix: dict) -> str:
    """Per source: target -> actual share of the steps' rows, per stage; the largest deviation of one
    step's share and of a stage's running total; the passes over the source."""
    spans = " | ".join(f"{st['first_step']}..{st['first_step'] + st['steps'] - 1}" for st in mix["stages"])
    k = len(mix["stages"])
    lines = [f"  mixture        {k} stage{'s' if k != 1 else ''} (steps {spans}); share of rows, target -> actual; "
             "largest gap of one step and of a running total"]
    for x in mix["sources"]:
        shares = " | ".join(f"{100 * t:6.2f}% -> {_pct(a):>7}" for t, a in zip(x["target"], x["actual"]))
        passes = "-" if x["passes"] is None else f"{x['passes']:.2f}"
        lines.append(f"                 {x['name']:<20} {shares}   step ±{100 * x['max_step_deviation']:.2f}%, "
                     f"total ±{x['max_prefix_deviation_rows']:.2f} rows, {passes} passes")
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _f(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def cmd_show(args) -> int:
    from .show import decode_pieces, load_decoder, render, render_composition, row_pieces, step_composition

    m = read_manifest(args.out)
    if args.row is None:
        if args.tokens or args.tokenizer:
            raise ConfigError("--tokens and --tokenizer decode one row: add --row R (without --row, show prints "
                              "the step's composition)")
        view = step_composition(args.out, m, args.step)
        if args.json:
            _print_json(view)
        else:
            print(render_composition(view, args.out))
        return 0
    view = row_pieces(args.out, m, args.step, args.row)
    if not args.tokens:
        decode_pieces(view, load_decoder(m, args.tokenizer))
    if args.json:
        _print_json(view)
    else:
        print(render(view, show_tokens=args.tokens))
    return 0


def cmd_verify(args) -> int:
    from .verify import describe_ok, verify

    from .progress import step_bar

    problems = verify(args.out, world_size=args.world_size, micro_batch=args.micro_batch, progress=step_bar)
    if args.json:
        _print_json({"ok": not problems, "problems": problems})
    elif problems:
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) found in {args.out}", file=sys.stderr)
    else:
        print(describe_ok(args.out, read_manifest(args.out)))
    return 1 if problems else 0


def cmd_audit(args) -> int:
    import os

    from steppack.pipeline.audit import audit, benchmark_index, render
    from steppack.pipeline.config import DecontamConfig, JobConfig, SourceConfig

    from .progress import step_bar
    from .show import load_decoder

    m = read_manifest(args.out)
    texts = args.text or ["text"]
    if len(texts) not in (1, len(args.benchmark)):
        raise ConfigError(f"{len(texts)} --text for {len(args.benchmark)} --benchmark: give one for all, or one each")
    if args.ngram < 1 or args.min_ngram < 1 or args.min_ngram > args.ngram:
        raise ConfigError(f"--ngram {args.ngram} and --min-ngram {args.min_ngram} must be positive, "
                          "--min-ngram at most --ngram")
    texts = texts * len(args.benchmark) if len(texts) == 1 else texts
    d = DecontamConfig(ngram=args.ngram, min_ngram=args.min_ngram, benchmarks=tuple(
        SourceConfig(name=g, paths=(os.path.abspath(g) if "://" not in g else g,), text=t)
        for g, t in zip(args.benchmark, texts)))
    # Records over the job's max_doc_bytes were passed over by prepare: the audit reads as it did.
    cap = m.config.get("max_doc_bytes", JobConfig.max_doc_bytes)
    index = benchmark_index(d.benchmarks, d.ngram, d.min_ngram, cap)
    result = audit(args.out, index, load_decoder(m, args.tokenizer), progress=step_bar)
    if args.json:
        _print_json({"clean": not result.findings, "documents": result.documents, "pieces": result.pieces,
                     "unordered_documents": result.unordered, "index": index.summary(),
                     "findings": [f.to_dict() for f in result.findings]})
    else:
        print(render(result, index, args.out))
    return 1 if result.findings else 0
