"""Launching the job: checks before any work, the runner, a live progress line, the summary.

Locally the runner is Beam's FnApiRunner with `--workers` SDK worker processes, as its
`multi_processing` mode starts them (through `steppack.pipeline.worker`, which only quiets their terminal
output), each tokenizing with cores // workers threads. It is named explicitly: in Beam 2.77 the default DirectRunner
first tries to download the Prism binary, which an offline machine would wait on. Any other
`--runner` (DataflowRunner, PortableRunner) comes with the flags Beam's PipelineOptions take.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time

from steppack.shards import dtype_for_vocab, fs
from steppack.shards.errors import ConfigError
from steppack.shards.format import MANIFEST_NAME, REJECTS_DIR, REMAINDER_FILE, REPORT_NAME

from . import claim, engines
from .config import JobConfig
from .logs import quiet_grpc, quiet_logging
from .sources import discover
from .tokenize import THREADS_ENV, tokenizer_info, tokenizer_json


def check_output(cfg: JobConfig, run_id: str) -> None:
    """Claim the output for this run (pipeline/claim.py), refuse one holding a complete manifest
    unless --overwrite, and clear what a previous run wrote there."""
    out = cfg.output
    if fs.is_local(out):
        root = fs.local_path(out)
        if os.path.exists(root) and not os.path.isdir(root):
            raise ConfigError(f"--output {out} is a file, not a directory")
    try:
        claim.check_reusable(out)
        claim.acquire(out, run_id)
    except OSError as exc:  # a missing bucket, no permission, a read-only disk
        raise ConfigError(f"--output {out} cannot be prepared for writing: {exc}") from exc
    try:
        if fs.exists(fs.join(out, MANIFEST_NAME)) and not cfg.overwrite:
            raise ConfigError(
                f"{out} already holds a complete output ({MANIFEST_NAME}); pass --overwrite to replace it, "
                "or choose another --output"
            )
        claim.mark_and_clear(out)
    except BaseException as exc:
        claim.release(out, run_id)
        if isinstance(exc, OSError):
            raise ConfigError(f"--output {out} cannot be prepared for writing: {exc}") from exc
        raise


def pipeline_options(cfg: JobConfig, beam_args: list[str]):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, TypeOptions

    options = PipelineOptions(beam_args)
    known = set(options.get_all_options(drop_default=False))
    for a in beam_args:
        if a.startswith("--"):
            name = a[2:].split("=", 1)[0]
            if name.replace("-", "_") not in known:
                raise ConfigError(f"unknown flag {a.split('=', 1)[0]}: neither a prepare flag "
                                  "(see steppack prepare --help) nor a Beam pipeline option")
    runner = options.view_as(StandardOptions).runner
    if not any(a.split("=", 1)[0] in ("--pipeline_type_check", "--no_pipeline_type_check") for a in beam_args):
        # The job's transforms declare no type hints to check, and Beam's construction-time
        # inference over its ~180 transforms took 0.15-0.3 s of the launcher's start-up.
        options.view_as(TypeOptions).pipeline_type_check = False
    if runner is None:
        # `--workers` processes of Beam's SDK harness (make_runner), as its multi_processing mode
        # starts them, through steppack.pipeline.worker so that they print errors only.
        options.view_as(DirectOptions).direct_num_workers = cfg.workers
    elif "Dataflow" in runner:
        # Remote workers see neither the launcher's disk nor its working directory.
        if fs.is_local(cfg.output):
            raise ConfigError(f"--output {cfg.output} is a local path; Dataflow workers cannot write it. "
                              "Give a gs:// output.")
        local = [p for s in cfg.sources for p in s.paths if fs.is_local(p)]
        if local:
            raise ConfigError(f"input {local[0]} is a local path; Dataflow workers cannot read it. "
                              "Copy the corpus to gs:// and point the source there.")
    return options, runner


def make_runner(runner_name):
    if runner_name is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        from apache_beam.transforms.environments import SubprocessSDKEnvironment

        from .worker import command

        return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command()))
    return None  # Beam resolves --runner itself


def tokenizer_threads(cfg: JobConfig) -> None:
    """Tokenizer threads per local worker process: the cores shared out among the workers (one
    each when there are as many workers as cores), set in the environment the worker processes
    inherit; a user's own setting is kept. Remote workers take one each (tokenize.DocTokenizer)."""
    threads = str(max(1, (os.cpu_count() or 1) // cfg.workers))
    for name in THREADS_ENV:
        os.environ.setdefault(name, threads)


class Progress(threading.Thread):
    """Prints `prepare: 1.2M tokens, 3,400 docs, 0.8M tok/s, 12s` while the local job runs."""

    def __init__(self, out: str, started: float, stream=None, every: float | None = None):
        super().__init__(daemon=True)
        from .buckets import WORK_DIR

        self.dir = os.path.join(fs.local_path(out), WORK_DIR, "progress")
        # sys.stderr as it is when the job starts (a default argument would bind it at import).
        self.started, self.stream = started, stream or sys.stderr
        self.stop = threading.Event()
        self.tty = self.stream.isatty()
        self.every = every or (0.5 if self.tty else 10.0)

    def snapshot(self) -> tuple[int, int]:
        docs = tokens = 0
        try:
            names = os.listdir(self.dir)
        except OSError:
            return 0, 0
        for n in names:
            if n.endswith(".json"):
                try:
                    with open(os.path.join(self.dir, n)) as f:
                        d = json.load(f)
                except (OSError, ValueError):
                    continue
                docs += d.get("documents", 0)
                tokens += d.get("tokens", 0)
        return docs, tokens

    def run(self):
        docs = tokens = 0
        while not self.stop.wait(self.every):
            # Never backwards: the job deletes the workers' progress files with _work/ as it ends.
            now_docs, now_tokens = self.snapshot()
            docs, tokens = max(docs, now_docs), max(tokens, now_tokens)
            t = time.time() - self.started
            line = (f"prepare: {tokens / 1e6:.2f}M tokens, {docs:,} documents tokenized, "
                    f"{tokens / max(t, 1e-9) / 1e6:.2f}M tok/s, {t:.0f}s")
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def finish(self):
        self.stop.set()
        if self.tty:
            print(file=self.stream)


def tokenizer_line(t: dict) -> str:
    line = f"  tokenizer  {t['name']} engine ({t['library']} {t['version']})"
    if t["name"] == "fast":
        line += (f"; {t['checked']:,} document{'' if t['checked'] == 1 else 's'} checked against HF tokenizers, "
                 f"{t['mismatches']:,} mismatches (written with tokenizers' ids)")
    return line


def summary(report: dict, out: str) -> str:
    d, t, r = report["documents"], report["tokens"], report["rows"]
    drops = ", ".join(f"{k} {v:,}" for k, v in sorted(d["dropped_by_reason"].items())) or "none"
    lines = [
        f"prepared {out}",
        f"  documents  read {d['read']:,}  kept {d['kept']:,}  dropped {d['dropped']:,} ({drops})",
        f"  tokens     read {t['read']:,}  kept {t['kept']:,}  dropped {t['dropped']:,}",
        f"  steps      {report['steps']:,} x {r['rows_per_step']:,} rows x {r['seq_len']:,} tokens "
        f"({t['in_steps']:,} tokens)",
        f"  remainder  {r['remainder']:,} rows ({t['in_remainder']:,} tokens), set aside in {REMAINDER_FILE}",
        f"  padding    {report['padding_tokens']:,} tokens; documents cut across rows "
        f"{report['documents_cut_across_rows']:,} ({report['cuts']:,} cuts); rejects {report['rejects']:,} (in {REJECTS_DIR}/)",
        f"  time       {report['wall_seconds']:.1f}s, {report['tokens_per_second'] / 1e6:.2f}M tokens/s "
        f"({report['workers']} workers, {report['buckets']} buckets)",
        tokenizer_line(report["tokenizer"]),
    ]
    asked = report.get("steps_asked")
    if asked and report["steps"] < asked:
        lines.append(f"  warning    {asked:,} steps asked, the data gives {report['steps']:,}: without weights no "
                     "source is repeated; give every source a weight to repeat short ones")
    lines += mixture_lines(report.get("mixture"), r["rows_per_step"])
    lines += decontamination_lines(report.get("decontamination"))
    return "\n".join(lines)


def decontamination_lines(d: dict | None) -> list[str]:
    """Per benchmark: documents (and characters) dropped, texts in the index, texts ignored."""
    if not d:
        return []
    lines = [f"  decontam   {d['ngram']}-grams (texts of {d['min_ngram']}-{d['ngram'] - 1} words whole): "
             f"{d['grams']:,} grams, {d['bytes'] / 2**20:.1f} MiB index"]
    for name, b in d["benchmarks"].items():
        lines.append(f"    {name:<28} {b['documents_dropped']:,} documents dropped ({b['chars_dropped']:,} chars); "
                     f"{b['texts']:,} texts, {b['ignored_short']:,} under {d['min_ngram']} words ignored")
        if b["unreadable"]:
            lines.append(f"  warning    {b['unreadable']:,} records of benchmark {name} could not be read: "
                         "documents holding them were not checked against them")
    return lines


# Past ~4 epochs repeated tokens are worth little more than none (Muennighoff et al. 2023,
# "Scaling Data-Constrained Language Models").
MAX_USEFUL_PASSES = 4


def mixture_lines(mix: dict | None, rows_per_step: int) -> list[str]:
    """Per source: target share, rows per step, passes; a warning above MAX_USEFUL_PASSES."""
    if not mix:
        return []
    lines = []
    for k, st in enumerate(mix["stages"]):
        head = f"  mixture    stage {k}: {st['steps']:,} steps" if len(mix["stages"]) > 1 else "  mixture"
        lines.append(head)
        for src, w in zip(mix["sources"], st["weights"]):
            lines.append(f"    {src['name']:<20} {100 * w:6.2f}%  {w * rows_per_step:8.2f} rows/step")
    lines.append("  passes     " + ", ".join(f"{s['name']} {s['passes']:.2f}" for s in mix["sources"]))
    for s in mix["sources"]:
        if s["passes"] > MAX_USEFUL_PASSES:
            lines.append(f"  warning    {s['name']} is repeated {s['passes']:.2f} times (its {s['rows_per_pass']:,} rows); "
                         f"past ~{MAX_USEFUL_PASSES} passes repeated data adds little: add data or lower its weight")
    return lines


def launch_checks(cfg: JobConfig, beam_args: list[str]):
    """What every launch does before any work: Beam's options and filesystems, the tokenizer and
    its engine, the inputs. (options, runner name, tokenizer info, engine, units, bytes per source)."""
    quiet_grpc()  # before this process loads gRPC or starts a worker
    quiet_logging()  # before Beam's imports, which log through the root logger
    # The local job service logs every SDK worker's start-up chatter at WARNING; keep real errors.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    options, runner_name = pipeline_options(cfg, beam_args)
    # Beam's filesystems take their settings (S3 credentials and endpoint, GCS project) from the
    # pipeline options, which Pipeline() would set only after the inputs are listed below; without
    # them its S3 filesystem cannot even be made.
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(options)
    info = tokenizer_info(cfg)
    engine, warning = engines.choose(cfg.tokenizer_engine, tokenizer_json(cfg))
    if warning:
        logging.getLogger("steppack.prepare").warning(warning)
    units, source_bytes = discover(cfg)
    if cfg.decontaminate:  # the benchmarks' units join the source units (Prepare tells them apart)
        units = units + [dataclasses.replace(u, source=-1 - u.source)
                         for u in discover(cfg, cfg.decontaminate.benchmarks, "benchmark")[0]]
    return options, runner_name, info, engine, units, source_bytes


def run(cfg: JobConfig, beam_args: list[str] | None = None, *, quiet: bool = False) -> dict:
    """Run the job to completion and return report.json's contents."""
    started = time.time()
    options, runner_name, info, engine, units, source_bytes = launch_checks(cfg, list(beam_args or []))
    if is_dry_run(options):
        return dry_run(cfg, options, runner_name, info, engine, source_bytes, started, units, quiet)
    run_id = claim.new_run_id()
    check_output(cfg, run_id)
    try:
        report = _run_job(cfg, options, runner_name, run_id, info, engine, source_bytes, units, started, quiet)
    finally:
        claim.release(cfg.output, run_id)
    report["wall_seconds_launcher"] = round(time.time() - started, 3)
    if not quiet:
        print(summary(report, cfg.output))
    return report


def plan_only(cfg: JobConfig, beam_args: list[str] | None = None, *, as_json: bool = False,
              sample_mb: float = 4.0) -> dict:
    """`prepare --plan`: the estimates of pipeline/estimate.py, printed; nothing is written."""
    from .estimate import estimate, render
    from .tokenize import DocTokenizer

    _, _, info, engine, units, source_bytes = launch_checks(cfg, list(beam_args or []))
    tokenizer_threads(cfg)
    est = estimate(cfg, units, source_bytes, DocTokenizer(cfg, info, engine=engine), engine, sample_mb=sample_mb)
    print(json.dumps(est, indent=1) if as_json else render(est, cfg.output))
    return est


def _job(cfg, info, engine, source_bytes, started, run_id):
    from .transforms import Job, make_groups

    return Job(cfg=cfg, tokenizer=info, dtype=dtype_for_vocab(info.vocab_size),
               groups=make_groups(cfg, source_bytes), engine=engine, started=started, input_bytes=sum(source_bytes),
               run_id=run_id)


def is_dry_run(options) -> bool:
    from apache_beam.options.pipeline_options import TestOptions

    return bool(options.view_as(TestOptions).dry_run)


def dry_run(cfg, options, runner_name, info, engine, source_bytes, started, units, quiet) -> dict:
    """Beam's --dry_run=True: the runner translates the whole job (DataflowRunner builds the job it
    would submit) and submits nothing; the output is not touched. Returns the translated pipeline."""
    import apache_beam as beam

    from .transforms import Prepare

    p = beam.Pipeline(runner=make_runner(runner_name), options=options)
    _ = p | "Prepare" >> Prepare(_job(cfg, info, engine, source_bytes, started, run_id="dry-run"), units)
    result = p.run()
    job = getattr(result, "job", None)  # DataflowRunner's: the job it would have submitted
    proto = job.proto_pipeline if job is not None else p.to_runner_api()
    top = [t.unique_name for t in proto.components.transforms.values() if t.unique_name.count("/") == 1
           and t.unique_name.startswith("Prepare/")]
    if not quiet:
        print(f"dry run: {runner_name or 'the local runner'} translated the job ({len(proto.components.transforms)} "
              f"transforms; {', '.join(sorted(top))}); nothing was submitted and {cfg.output} was not touched")
    return {"dry_run": True, "runner": runner_name, "transforms": sorted(top), "pipeline": proto}


def _run_job(cfg, options, runner_name, run_id, info, engine, source_bytes, units, started, quiet) -> dict:
    import apache_beam as beam

    from .transforms import Prepare

    job = _job(cfg, info, engine, source_bytes, started, run_id)
    if runner_name is None:
        tokenizer_threads(cfg)
    progress = Progress(cfg.output, started) if fs.is_local(cfg.output) and not quiet else None
    if progress:
        progress.start()
    try:
        p = beam.Pipeline(runner=make_runner(runner_name), options=options)
        _ = p | "Prepare" >> Prepare(job, units)
        result = p.run()
        result.wait_until_finish()
    finally:
        if progress:
            progress.finish()
    if not claim.held_by(cfg.output, run_id):
        raise ConfigError(f"the claim on {cfg.output} was taken from this run while it ran (deleted by hand?): "
                          "this run committed nothing; run it again")
    report = json.loads(fs.read_bytes(fs.join(cfg.output, REPORT_NAME)))
    if "error" in report:
        raise ConfigError(f"prepare stopped, no output written: {report['error']}")
    return report
