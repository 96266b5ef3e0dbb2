"""`prepare --plan`: what a job would produce and cost, from a seeded sample, before it runs.

Each source's read units (sources.discover) are taken in a seeded order until `sample_mb` of
their estimated bytes is read (whole units; at least one); their documents are cleaned and
tokenized as the job does (the engine it would choose), timing the tokenizer's CPU. Every count
is then scaled by the source's bytes over the sampled bytes. Rows are tokens / seq_len (padding
and cut ends make the job's a little fewer), and the steps, remainder and passes come from the
job's own planner (plan.make_plan) over those rows. Core-hours are the tokens over the sampled
tokenizer rate: the tokenizer is most of prepare's CPU (docs/benchmarks.md), so the job takes
somewhat more.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from steppack.shards.errors import ConfigError

from . import engines
from .config import JobConfig
from .plan import EmptyStream, Stream, make_plan, stages_of
from .sources import Reject, Unit, read_unit
from .tokenize import DocTokenizer
from .transforms import drop_reason


@dataclass
class SourceSample:
    name: str
    input_bytes: int
    share: float
    """Of the source's (estimated) bytes, the share the sample read."""
    scale: float
    documents: int = 0
    dropped: int = 0
    rejected: int = 0
    tokens: int = 0
    cpu_s: float = 0.0


def sample_units(units: list[Unit], budget: float, seed: int) -> list[Unit]:
    """Units of one source in a seeded order, until their estimated bytes reach `budget` (at least one)."""
    order = sorted(units, key=lambda u: (u.path, u.part))
    random.Random(seed).shuffle(order)
    picked, size = [], 0.0
    for u in order:
        if picked and size >= budget:
            break
        picked.append(u)
        size += u.weight
    return picked


def sample_source(cfg: JobConfig, tok: DocTokenizer, name: str, units: list[Unit], input_bytes: int,
                  sample_mb: float) -> SourceSample:
    picked = sample_units(units, sample_mb * (1 << 20), cfg.seed)
    total = sum(u.weight for u in units) or 1.0
    sampled = sum(u.weight for u in picked) or total
    s = SourceSample(name, input_bytes, sampled / total, total / sampled)
    for u in picked:
        texts = []
        for item in read_unit(u):
            if isinstance(item, Reject):
                s.rejected += 1
            elif drop_reason(item[1], cfg):
                s.dropped += 1
            else:
                texts.append(item[1])
        t0 = time.process_time()
        encoded, _ = tok.encode(texts)
        s.cpu_s += time.process_time() - t0
        s.documents += len(texts)
        s.tokens += sum(len(a) for a in encoded)
    return s


def estimate(cfg: JobConfig, units: list[Unit], source_bytes: list[int], tok: DocTokenizer, engine: str, *,
             sample_mb: float = 4.0) -> dict:
    """The plan's figures (see the module's docstring); JSON-ready."""
    samples = [sample_source(cfg, tok, src.name, [u for u in units if u.source == i], source_bytes[i], sample_mb)
               for i, src in enumerate(cfg.sources)]
    tokens = [s.tokens * s.scale for s in samples]
    rows = [int(t // cfg.seq_len) for t in tokens]
    streams = ([Stream(s.name, [(s.name, r)]) for s, r in zip(samples, rows)] if cfg.is_mixture
               else [Stream("all", [("all", sum(rows))])])
    try:
        plan = make_plan(streams, stages_of(cfg, streams), cfg.rows_per_step, cfg.seed)
    except EmptyStream as exc:
        raise ConfigError(f"source {exc} would give no row of {cfg.seq_len} tokens (from its sample): "
                          "the job would stop; give it more data or weight 0") from exc
    steps = len(plan.steps)
    cpu_s = sum(s.cpu_s for s in samples)
    rate = sum(s.tokens for s in samples) / cpu_s if cpu_s else None
    return {
        "input_bytes": sum(source_bytes),
        "sources": [{
            "name": s.name, "input_bytes": s.input_bytes, "sampled": round(s.share, 4),
            "documents": round(s.documents * s.scale), "dropped": round(s.dropped * s.scale),
            "rejected": round(s.rejected * s.scale), "tokens": round(t), "rows": r,
            **({"weight_rows": plan.used[i], "passes": round(plan.used[i] / r, 3) if r else None}
               if cfg.is_mixture else {}),
        } for i, (s, t, r) in enumerate(zip(samples, tokens, rows))],
        "documents": round(sum(s.documents * s.scale for s in samples)),
        "tokens": round(sum(tokens)),
        "steps": steps, "rows_per_step": cfg.rows_per_step, "seq_len": cfg.seq_len,
        "step_tokens": steps * cfg.rows_per_step * cfg.seq_len,
        "remainder_rows": sum(plan.remainder_rows),
        "output_bytes": steps * cfg.rows_per_step * cfg.seq_len * tok.dtype.itemsize,
        "tokens_per_cpu_second": round(rate) if rate else None,
        "core_hours": round(sum(tokens) / rate / 3600, 3) if rate else None,
        "engine": engines.record(engine),
        "not_estimated": [k for k, on in (("decontaminate", cfg.decontaminate), ("dedup", cfg.dedup)) if on],
    }


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024


def render(est: dict, out: str) -> str:
    mix = "passes" in est["sources"][0]
    w = max(16, *(len(s["name"]) for s in est["sources"]))
    lines = [f"plan for {out} ({_size(est['input_bytes'])} of input; estimates from a sample, nothing written)",
             f"  {'source':<{w}} {'input':>10} {'sampled':>8} {'documents':>12} {'tokens':>15} {'rows':>11}"
             + (f" {'passes':>7}" if mix else "")]
    for s in est["sources"]:
        lines.append(f"  {s['name']:<{w}} {_size(s['input_bytes']):>10} {s['sampled']:>8.0%} {s['documents']:>12,} "
                     f"{s['tokens']:>15,} {s['rows']:>11,}" + (f" {s['passes']:>7}" if mix else ""))
    lines.append(f"  steps      ~{est['steps']:,} x {est['rows_per_step']:,} rows x {est['seq_len']:,} tokens "
                 f"({est['step_tokens']:,} tokens), ~{est['remainder_rows']:,} rows left over")
    lines.append(f"  output     ~{_size(est['output_bytes'])} of step files")
    if est["core_hours"] is not None:
        lines.append(f"  cpu        ~{est['core_hours']:,.2f} core-hours of tokenizing at "
                     f"{est['tokens_per_cpu_second'] / 1e6:.2f}M tokens per CPU-second ({est['engine']['library']}); "
                     "the whole job takes somewhat more")
    if est["not_estimated"]:
        lines.append(f"  note       {' and '.join(est['not_estimated'])} not applied to the sample: the counts are "
                     "before them (they can only be smaller)")
    return "\n".join(lines)
