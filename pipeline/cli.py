"""`steppack prepare`: flags (or --config job.toml, flags win) -> JobConfig -> the Beam job.

Flags this command does not know go to Beam's PipelineOptions, e.g.
`--runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./pyproject.toml`.
"""

from __future__ import annotations

import argparse
import os

from steppack.recipes import RECIPES
from steppack.shards.errors import ConfigError

from .config import JobConfig, Packing, SourceConfig, Specials, build, field_help, load_toml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Flags not listed here go to Beam's PipelineOptions (e.g. --runner DataflowRunner --project P "
        "--region R --temp_location gs://B/tmp --setup_file ./pyproject.toml). Without --runner the job "
        "runs locally on Beam's FnApiRunner with --workers processes, offline."
    )
    parser.set_defaults(_accepts_unknown=True)
    h = lambda name: field_help(JobConfig, name)  # noqa: E731
    g = parser.add_argument_group("input")
    g.add_argument("--config", metavar="TOML", help="job file with [[source]] tables; flags override it")
    g.add_argument("--input", action="append", metavar="GLOB",
                   help="input files (repeatable): .jsonl[.gz|.zst], .parquet, .txt/.tex/.md, an HF "
                        "save_to_disk directory; local, gs:// or s3://. Replaces the config's sources")
    g.add_argument("--text-field", metavar="FIELD", help=field_help(SourceConfig, "text") + " (default: text)")
    g.add_argument("--format", choices=["jsonl", "parquet", "text", "hf"], help=field_help(SourceConfig, "format"))
    g = parser.add_argument_group("output")
    g.add_argument("--output", metavar="OUT", help=h("output"))
    g.add_argument("--recipe", choices=list(RECIPES), help=h("recipe"))
    g.add_argument("--seq-len", type=int, help=h("seq_len") + " (default 4096)")
    g.add_argument("--rows-per-step", type=int, help=h("rows_per_step") + " (default 1024)")
    g.add_argument("--global-batch-tokens", type=int, metavar="N",
                   help="tokens per step instead of --rows-per-step; must be a multiple of --seq-len")
    g.add_argument("--compression", choices=["none", "zstd"], help=h("compression"))
    g.add_argument("--overwrite", action="store_true", default=None, help=h("overwrite"))
    g = parser.add_argument_group("tokens")
    g.add_argument("--tokenizer", metavar="NAME|PATH", help=h("tokenizer") + " (default deepseek-llm)")
    g.add_argument("--specials", choices=[s.value for s in Specials],
                   help=h("specials"))
    g.add_argument("--bos-token", help=h("bos_token"))
    g.add_argument("--eos-token", help=h("eos_token"))
    g.add_argument("--min-chars", type=int, help=h("min_chars"))
    g.add_argument("--max-chars", type=int, help=h("max_chars"))
    g.add_argument("--max-doc-bytes", type=int, metavar="N", help=h("max_doc_bytes") + " (default 16777216: 16 MiB)")
    g.add_argument("--piece-chars", type=int, help=h("piece_chars"))
    g.add_argument("--tokenizer-engine", choices=["auto", "fast", "hf"], help=h("tokenizer_engine") + " (default auto)")
    g.add_argument("--verify-tokenizer", metavar="all|none|1/N", help=h("verify_tokenizer") + " (default 1/1000)")
    g = parser.add_argument_group("decontamination and dedup")
    g.add_argument("--decontaminate", action="append", metavar="GLOB",
                   help="benchmark files (repeatable; each a benchmark named by its GLOB): drop every document "
                        "holding a 10-gram of a benchmark text (DeepSeekMath's rule; docs/prepare.md). "
                        "Replaces the config's [decontaminate] benchmarks")
    g.add_argument("--decontaminate-text", metavar="FIELD_OR_TEMPLATE",
                   help="the benchmark text: a field or a template, as --text-field (default: text)")
    g.add_argument("--dedup", choices=["exact", "none"], help=h("dedup"))
    g = parser.add_argument_group("shuffle and packing")
    g.add_argument("--seed", type=int, help=h("seed") + " (default 0)")
    g.add_argument("--packing", choices=[p.value for p in Packing],
                   help="concat (default; DeepSeek: no padding) or bestfit (best-fit decreasing, fewer cut documents)")
    g.add_argument("--steps", type=int, metavar="N", help=h("steps"))
    g.add_argument("--bucket-mb", type=int, help=h("bucket_mb") + " (default 8)")
    g.add_argument("--unit-mb", type=float, help=h("unit_mb") + " (default 1)")
    g = parser.add_argument_group("running")
    g.add_argument("--workers", type=int, help=h("workers") + " (default: this machine's cores)")
    g.add_argument("--quiet", action="store_true", help="no progress line and no summary")
    g.add_argument("--plan", action="store_true",
                   help="estimate documents, tokens, steps, output size, passes and core-hours from a seeded "
                        "sample of each source (--sample-mb), print them and exit: nothing is written")
    g.add_argument("--sample-mb", type=float, default=4.0, help="with --plan: MB read from each source (default 4)")
    g.add_argument("--json", action="store_true", help="with --plan: print the estimates as JSON")


FLAG_KEYS = ("input", "text_field", "format", "output", "seq_len", "rows_per_step", "global_batch_tokens",
             "compression", "overwrite", "tokenizer", "specials", "bos_token", "eos_token", "min_chars",
             "max_chars", "max_doc_bytes", "piece_chars", "seed", "packing", "bucket_mb", "unit_mb", "workers", "steps",
             "tokenizer_engine", "verify_tokenizer", "recipe", "decontaminate", "decontaminate_text", "dedup")


def config_from_args(args) -> JobConfig:
    file, file_dir = None, os.getcwd()
    if args.config:
        file = load_toml(args.config)
        file_dir = os.path.dirname(os.path.abspath(args.config))
    flags = {k: getattr(args, k, None) for k in FLAG_KEYS}
    return build(file, file_dir, flags)


def main(args) -> int:
    cfg = config_from_args(args)
    if args.plan:
        from .run import plan_only

        plan_only(cfg, list(getattr(args, "unknown", []) or []), as_json=args.json, sample_mb=args.sample_mb)
        return 0
    if args.json:
        raise ConfigError("--json goes with --plan")
    from .run import run

    run(cfg, list(getattr(args, "unknown", []) or []), quiet=args.quiet)
    return 0
