"""The Beam job: composite PTransforms, each a thin adapter over the pure modules.

    ReadDocuments    read units (file parts) -> batches of documents, filled across units;
                     malformed records -> rejects
    TokenizeDocs     filter (empty / min / max chars, counted by reason) and tokenize, batched;
                     tokenizer loaded once per worker in setup()
    SpillBuckets     seeded hash -> bucket of the document's packing group (the whole job, or
                     with weights its source); documents go to spill files, only names shuffle
    PackRows         per bucket: read its spills, order by hash, pack, shuffle the rows (seeded)
                     -> bucket file of rows
    AssignSteps      concat tails of each group's buckets packed last (only a group's final row
                     is padded, and it goes to the remainder); per-file row counts -> per-step
                     quotas -> plan of (row file, row range) slices per step (plan.py)
    WriteStepShards  each step reads its slices and writes steps/step-XXXXXXXX.arrow
    WriteManifest    rejects/, report.json, then manifest.json last; _work/ removed

Only small things cross a shuffle (file names, counts, row slices, tails of < seq_len tokens),
so memory is bounded by one bucket on every runner, the local one included.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterator, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from steppack.shards import (
    Manifest, MixtureInfo, RowBlock, SourceInfo, StageInfo, TokenizerInfo, fs, open_step, write_manifest, write_step,
)
from steppack.shards.format import REJECTS_DIR, REMAINDER_FILE, REPORT_NAME, step_file_name
from steppack.shards.writer import write_blocks

from . import buckets as bk
from . import claim
from .config import JobConfig
from .decontaminate import Index, read_part
from .grams import dedup_key
from .packing import ConcatPacker, Doc, Packing, concat_layout, cut_documents, packer
from .plan import EmptyStream, Stream, derive_seed, doc_id, make_plan, permutation, shuffle_key, stages_of
from .engines import Guard
from .engines import record as engine_record
from .schedule import deal_order
from .sources import Reject, Unit, read_unit
from .tokenize import DocTokenizer, shipped_json

NS = "steppack"
LOG = logging.getLogger("steppack.prepare")
REJECTS_FILE = f"{REJECTS_DIR}/rejects.jsonl"
# Records per tokenizer call: large enough that Beam's per-element cost vanishes (~10 us per
# element against ~1 ms of tokenizing), small enough that a batch of long documents stays small:
# the tokenizer's Encodings of a batch hold ~100 bytes per token until converted (a batch of 256
# mathlib3 files, 3.6M characters, took a worker from ~175 to ~280 MiB with a 4 MiB cap). And
# smaller is cheaper: x4 bench jobs started in pairs took 3.2-3.6% less CPU with 64 than with 256
# (3 of 3 pairs), 2-10% more with 1024; 16 against 64 was a wash (-2%, +7%, 0%).
BATCH_DOCS = 64
BATCH_CHARS = 1 << 20
# Tokenized bytes a SpillBuckets bundle buffers before writing its spill files: small enough that
# the writing happens while the other workers tokenize (at 64 MiB a worker's whole share of the
# bench corpus was written after its last document, on the job's critical path).
SPILL_BYTES = 16 << 20


@dataclass(frozen=True)
class Group:
    """Documents packed together: every source (no weights), or one source (weights: rows are
    then single-source, and a source's rows depend on its own data and the seed alone)."""

    name: str
    """"" for the whole job, else the source's name: part of the seeds of its row shuffles."""
    sources: tuple[int, ...]
    first: int
    """Its buckets are first .. first + buckets - 1."""
    buckets: int


@dataclass(frozen=True)
class Job:
    """What every stage needs, resolved on the launching machine."""

    cfg: JobConfig
    tokenizer: TokenizerInfo
    dtype: str
    groups: tuple[Group, ...]
    engine: str
    """The tokenizer engine the launcher chose ("fast" or "hf"; engines.choose)."""
    started: float
    """Wall-clock start (time.time()) of the launch, for report.json."""
    input_bytes: int
    run_id: str
    """The run's claim on the output (pipeline/claim.py), checked before the manifest is committed."""

    @property
    def out(self) -> str:
        return self.cfg.output

    @property
    def buckets(self) -> int:
        return sum(g.buckets for g in self.groups)

    def group_of_source(self) -> list[int]:
        return [g for s in range(len(self.cfg.sources)) for g, grp in enumerate(self.groups) if s in grp.sources]

    def group_of_bucket(self, bucket: int) -> int:
        return next(g for g, grp in enumerate(self.groups) if grp.first <= bucket < grp.first + grp.buckets)


def make_groups(cfg: JobConfig, source_bytes: list[int]) -> tuple[Group, ...]:
    """One group per source with weights, else one; buckets from the group's input bytes."""
    n = lambda size: max(1, math.ceil(size / (cfg.bucket_mb << 20)))  # noqa: E731
    if not cfg.is_mixture:
        return (Group("", tuple(range(len(cfg.sources))), 0, n(sum(source_bytes))),)
    groups, first = [], 0
    for i, (src, size) in enumerate(zip(cfg.sources, source_bytes)):
        groups.append(Group(src.name, (i,), first, n(size)))
        first += groups[-1].buckets
    return tuple(groups)


def count(stats: dict) -> None:
    for k, v in stats.items():
        Metrics.counter(NS, k).inc(v)


class SumDicts(beam.CombineFn):
    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, d):
        acc.update(d)
        return acc

    def merge_accumulators(self, accs):
        out = Counter()
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc):
        return dict(sorted(acc.items()))


# ---------------------------------------------------------------- ReadDocuments

class ReadFn(beam.DoFn):
    """Units -> batches of documents for the tokenizer: [(source, name, key, path, [(record, text)])],
    one entry per unit the batch draws on. Rejects (and their counts) go on tagged outputs.

    A batch fills across units (flushed when full and at the bundle's end): the last units of a
    worker's share are small (a .tex file is one document), and one document per tokenizer call
    kept one of its two threads idle while the other worker was already done."""

    def start_bundle(self):
        self.parts: list[tuple] = []
        self.docs = self.chars = 0

    def process(self, unit: Unit):
        records: list[tuple[int, str]] = []
        for item in read_unit(unit):
            if isinstance(item, Reject):
                stats = {"documents_read": 1, f"documents_dropped/{item.reason}": 1}
                count(stats)
                yield beam.pvalue.TaggedOutput("rejects", item.to_dict())
                yield beam.pvalue.TaggedOutput("stats", stats)
                continue
            records.append(item)
            self.docs += 1
            self.chars += len(item[1])
            if self.docs >= BATCH_DOCS or self.chars >= BATCH_CHARS:
                self.parts.append((unit.source, unit.source_name, unit.key, unit.path, records))
                records = []
                yield self._take()
        if records:
            self.parts.append((unit.source, unit.source_name, unit.key, unit.path, records))

    def finish_bundle(self):
        if self.parts:
            yield GlobalWindows.windowed_value(self._take())

    def _take(self) -> list[tuple]:
        batch, self.parts, self.docs, self.chars = self.parts, [], 0, 0
        return batch


class ReadDocuments(beam.PTransform):
    def __init__(self, units: list[Unit], workers: int):
        super().__init__()
        self.units, self.workers = units, workers

    def expand(self, pbegin):
        return (
            pbegin
            # reshuffle=False: Create's default Reshuffle would put the units in random order
            # before SpreadUnits, undoing the heaviest-first dealing.
            | "ListUnits" >> beam.Create(spread_order(self.units, self.workers), reshuffle=False)
            | "SpreadUnits" >> beam.GroupByKey()
            | "Unkey" >> beam.FlatMap(lambda kv: kv[1])
            | "ReadUnits" >> beam.ParDo(ReadFn()).with_outputs("rejects", "stats", main="docs")
        )


def spread_order(units: list[Unit], workers: int) -> list[tuple[int, Unit]]:
    """Units keyed 0, 1, 2, ... in `schedule.deal_order`, for a GroupByKey that spreads them over
    workers: the local FnApiRunner deals the keys round-robin in the order they arrive, so every
    worker gets the same estimated work, heaviest first (a random Reshuffle left one of two
    workers idle for a while). Other runners just see distinct keys, as with Reshuffle."""
    order = deal_order([u.weight for u in units], workers)
    return [(k, units[i]) for k, i in enumerate(order)]


# ---------------------------------------------------------------- TokenizeDocs

def drop_reason(text: str, cfg: JobConfig) -> str | None:
    if not text.strip():
        return "empty"
    if cfg.min_chars and len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars and len(text) > cfg.max_chars:
        return "too_long"
    return None


class TokenizeFn(beam.DoFn):
    """A batch of ReadFn -> [(shuffle key, Doc)] of the kept documents. With a benchmark index
    (side input), contaminated documents are dropped before they are tokenized (rejects on
    'rejects'); with dedup, each kept document's (dedup key, Copy) goes on 'dedup'."""

    def __init__(self, job: Job, tokenizer_json: str | None = None):
        self.job = job
        self.tokenizer_json = tokenizer_json

    def setup(self):
        self.tok = DocTokenizer(self.job.cfg, self.job.tokenizer, self.tokenizer_json, engine=self.job.engine)
        self.guard = Guard.parse(self.job.cfg.verify_tokenizer)
        self.progress = None
        if fs.is_local(self.job.out):
            self.progress = os.path.join(self.job.out, bk.WORK_DIR, "progress", uuid.uuid4().hex + ".json")
            os.makedirs(os.path.dirname(self.progress), exist_ok=True)
        self.done = Counter()
        self.last = 0.0

    def process(self, batch, index=None):
        cfg = self.job.cfg
        stats = Counter()
        if index is not None:
            batch = yield from self._decontaminate(batch, index, stats)
        texts = [text for *_, records in batch for _, text in records]
        dids = [doc_id(name, key, record) for _, name, key, _, records in batch for record, _ in records]
        check = [self.guard.picks(d) and drop_reason(t, cfg) is None for d, t in zip(dids, texts)]
        encoded, differed = self.tok.encode(texts, check) if texts else ([], [])
        stats.update({"tokenizer_checked": sum(check), "tokenizer_mismatches": len(differed)})
        for i in differed:
            # Written with the reference's ids (encode gave those); said here, counted in the report.
            LOG.warning("tokenizer engines differ on document %016x (%s): written with HF tokenizers' ids",
                        dids[i], texts[i][:60])
        ids, dids, all_texts = iter(encoded), iter(dids), iter(texts)
        kept = []
        for source, name, key, path, records in batch:
            for record, _ in records:
                tokens, did, text = next(ids), next(dids), next(all_texts)
                n = len(tokens)
                stats["documents_read"] += 1
                stats["tokens_read"] += n
                reason = drop_reason(text, cfg)
                if reason:
                    stats[f"documents_dropped/{reason}"] += 1
                    stats[f"tokens_dropped/{reason}"] += n
                    continue
                stats["documents_kept"] += 1
                stats["tokens_kept"] += n
                stats[f"source_documents/{source}"] += 1
                stats[f"source_tokens/{source}"] += n
                kept.append((shuffle_key(cfg.seed, did), Doc(tokens, did, source)))
                if cfg.dedup:
                    yield beam.pvalue.TaggedOutput("dedup", (dedup_key(text), Copy(source, name, key, path, record,
                                                                                   did, n)))
        count(stats)
        self._progress(stats)
        yield beam.pvalue.TaggedOutput("stats", dict(stats))
        if kept:
            yield kept

    def _decontaminate(self, batch, index, stats: Counter):
        """The batch less its contaminated documents (each a reject); the documents that
        drop_reason drops are left to it, so that `shards audit` of any output agrees."""
        cfg = self.job.cfg
        flat = [(b, i) for b, (*_, records) in enumerate(batch) for i, (_, text) in enumerate(records)
                if drop_reason(text, cfg) is None]
        found = index.match_texts([batch[b][-1][i][1] for b, i in flat])
        gone = {flat[k] for k in found}
        for k, match in sorted(found.items()):
            b, i = flat[k]
            _, name, key, path, records = batch[b]
            record, text = records[i]
            bench = match.item.benchmark
            stats.update({"documents_read": 1, "documents_dropped/contaminated": 1,
                          f"contaminated_documents/{bench}": 1, f"contaminated_chars/{bench}": len(text)})
            yield beam.pvalue.TaggedOutput("rejects", {
                "source": name, "file": path, "record": record, "reason": "contaminated", "detail": match.detail(),
                "doc_id": f"{doc_id(name, key, record):016x}", **match.to_dict()})
        if not gone:
            return batch
        return [(*head, [r for i, r in enumerate(records) if (b, i) not in gone])
                for b, (*head, records) in enumerate(batch)]

    def _progress(self, stats):
        self.done.update({"documents": stats["documents_read"], "tokens": stats["tokens_read"]})
        now = time.monotonic()
        if self.progress and now - self.last > 0.5:
            self.last = now
            tmp = self.progress + ".tmp"
            try:  # best effort: the progress line is cosmetic, and _work/ goes away at the end
                with open(tmp, "w") as f:
                    json.dump(self.done, f)
                os.replace(tmp, self.progress)
            except OSError:
                pass

    def finish_bundle(self):
        self.last = 0.0
        self._progress(Counter())



class TokenizeDocs(beam.PTransform):
    def __init__(self, job: Job, index=None):
        super().__init__()
        self.job, self.index = job, index

    def expand(self, docs):
        fn = TokenizeFn(self.job, shipped_json(self.job.cfg))
        side = {} if self.index is None else {"index": beam.pvalue.AsSingleton(self.index)}
        return docs | "Tokenize" >> beam.ParDo(fn, **side).with_outputs("stats", "rejects", "dedup", main="tokens")


# ---------------------------------------------------------------- BenchmarkIndex / Dedup

class IndexFn(beam.CombineFn):
    """Benchmark Parts -> the decontaminate.Index (the same whatever order the parts come in)."""

    def __init__(self, n: int, min_n: int):
        self.n, self.min_n = n, min_n

    def create_accumulator(self):
        return []

    def add_input(self, acc, part):
        acc.append(part)
        return acc

    def merge_accumulators(self, accs):
        return [p for a in accs for p in a]

    def extract_output(self, acc):
        return Index(acc, self.n, self.min_n)


class BenchmarkIndex(beam.PTransform):
    """Benchmark read units -> one Index (a side input of TokenizeDocs); the reading is spread
    over the workers, as the corpus's is."""

    def __init__(self, units: list[Unit], n: int, min_n: int):
        super().__init__()
        self.units, self.n, self.min_n = units, n, min_n

    def expand(self, pbegin):
        return (pbegin
                | "ListBenchmarkUnits" >> beam.Create(self.units)
                | "ReadBenchmarks" >> beam.Map(read_part, self.n, self.min_n)
                | "BuildIndex" >> beam.CombineGlobally(IndexFn(self.n, self.min_n)))


class Copy(NamedTuple):
    """A kept document as dedup sees it: where it is from, and its size."""

    source: int
    source_name: str
    key: str
    path: str
    record: int
    doc_id: int
    tokens: int


def dedup_group(kv, job: Job):
    """(dedup key, copies) -> the first copy (in source order, file key, record) is kept; each other
    is a `duplicate` reject, (bucket, doc_id) to drop before packing, and its counts taken back."""
    _, copies = kv
    copies = sorted(copies, key=lambda c: (c.source, c.key, c.record))
    if len(copies) < 2:
        return
    kept, group_of = copies[0], job.group_of_source()
    stats = Counter()
    for c in copies[1:]:
        g = job.groups[group_of[c.source]]
        yield (g.first + shuffle_key(job.cfg.seed, c.doc_id) % g.buckets, c.doc_id)
        stats.update({"documents_kept": -1, "tokens_kept": -c.tokens, f"source_documents/{c.source}": -1,
                      f"source_tokens/{c.source}": -c.tokens, "documents_dropped/duplicate": 1,
                      "tokens_dropped/duplicate": c.tokens})
        yield beam.pvalue.TaggedOutput("rejects", {
            "source": c.source_name, "file": c.path, "record": c.record, "reason": "duplicate",
            "detail": f"the same text as record {kept.record} of {kept.path} (source {kept.source_name!r}), which is kept",
            "doc_id": f"{c.doc_id:016x}", "kept_doc_id": f"{kept.doc_id:016x}"})
    count(stats)
    yield beam.pvalue.TaggedOutput("stats", dict(stats))


class Dedup(beam.PTransform):
    """TokenizeDocs' (dedup key, Copy) -> (bucket, doc_id) of the duplicates (main), their rejects
    and their counts ('stats'). Only keys and locations cross the shuffle, never the text."""

    def __init__(self, job: Job):
        super().__init__()
        self.job = job

    def expand(self, copies):
        return (copies
                | "GroupCopies" >> beam.GroupByKey()
                | "KeepFirstCopy" >> beam.FlatMap(dedup_group, self.job).with_outputs("rejects", "stats", main="drops"))


# ---------------------------------------------------------------- SpillBuckets

class SpillFn(beam.DoFn):
    """Buffers documents per bucket for a bundle; writes spill files; emits (bucket, file)."""

    def __init__(self, job: Job):
        self.job = job

    def setup(self):
        self.group = [self.job.groups[g] for g in self.job.group_of_source()]

    def start_bundle(self):
        self.buf: dict[int, tuple[list, list]] = {}
        self.size = 0

    def process(self, kept):
        for key, doc in kept:
            g = self.group[doc.source]
            b = g.first + key % g.buckets
            keys, docs = self.buf.setdefault(b, ([], []))
            keys.append(key)
            docs.append(doc)
            self.size += doc.tokens.nbytes + 32
        if self.size >= SPILL_BYTES:
            yield from self._flush()

    def _flush(self):
        for b in sorted(self.buf):
            keys, docs = self.buf[b]
            path = bk.spill_path(self.job.out, b)
            bk.write_spill(path, keys, docs)
            Metrics.counter(NS, "spill_files").inc()
            yield (b, path)
        self.buf, self.size = {}, 0

    def finish_bundle(self):
        for kv in self._flush():
            yield GlobalWindows.windowed_value(kv)


# ---------------------------------------------------------------- PackRows

class PackBucketFn(beam.DoFn):
    """(bucket, spill files) -> (group, bucket, row file, rows); concat tails on 'tails'.

    The rows of a bucket are shuffled (seeded) after packing: `bestfit` emits them longest
    documents first, and a step must be a random sample of rows, not a length curriculum."""

    def __init__(self, job: Job):
        self.job = job

    def process(self, kv):
        bucket, value = kv
        paths, drops = (value["spills"], value["drops"]) if isinstance(value, dict) else (value, ())
        job = self.job
        dtype = np.dtype(job.dtype)
        docs = bk.read_bucket(sorted(paths), dtype).without(drops)
        if job.cfg.packing is Packing.CONCAT:
            block, tail, cut = self._concat(docs)
        else:
            p = packer(job.cfg.packing, job.cfg.seq_len, job.tokenizer.pad_id, dtype)
            rows = [r for d in docs.docs() for r in p.add(d)] + p.flush()
            block, tail, cut = bk.rows_to_block(rows, job.cfg.seq_len, dtype), [], cut_documents(rows)
        del docs
        g = job.group_of_bucket(bucket)
        group = job.groups[g]
        # A document lies in one bucket; the only one of its pieces that can travel on to
        # pack_tails is the first tail piece, so pack_tails is told which tail ids are counted.
        if tail:
            counted = sorted({d.doc_id for d in tail} & cut)
            yield beam.pvalue.TaggedOutput("tails", (bucket, bk.pieces_to_bytes(tail), counted))
        # Pieces as packed (each row once): with repeated sources the steps hold more.
        stats = {"documents_cut": len(cut), "pieces_packed": len(block.doc_lens)}
        count(stats)
        yield beam.pvalue.TaggedOutput("stats", stats)
        if block.num_rows:
            block = shuffle_rows(block, job.cfg.seed, group.name, bucket - group.first)
            rel = f"{bk.WORK_DIR}/buckets/bucket-{bucket:05d}.arrow"
            write_step(job.out, rel, block, seq_len=job.cfg.seq_len, dtype=job.dtype, step=None)
            Metrics.counter(NS, "bucket_rows").inc(block.num_rows)
            yield RowFile(g, bucket, rel, block.num_rows)

    def _concat(self, docs: bk.BucketDocs) -> tuple[RowBlock, list[Doc], set[int]]:
        """The bucket's full rows, the pieces of its unfinished last row (they go on to
        pack_tails), and the ids of the documents cut (concat_layout: no per-row Python)."""
        seq_len = self.job.cfg.seq_len
        lay = concat_layout(docs.lens, seq_len)
        full = lay.piece_row < lay.rows
        n = lay.rows * seq_len
        doc = lay.piece_doc[full]
        block = RowBlock(docs.tokens[:n].reshape(lay.rows, seq_len), lay.row_offsets(),
                         lay.piece_len[full].astype(np.int32), docs.doc_ids[doc], docs.sources[doc])
        tail, at = [], n
        for d, k in zip(lay.piece_doc[~full].tolist(), lay.piece_len[~full].tolist()):
            tail.append(Doc(docs.tokens[at:at + k], int(docs.doc_ids[d]), int(docs.sources[d])))
            at += k
        pieces = np.bincount(lay.piece_doc, minlength=len(docs.lens))
        return block, tail, set(docs.doc_ids[pieces > 1].tolist())


class RowFile(NamedTuple):
    """A file of packed rows under _work/, in its group's order (`order`); `final`: a group's
    last, padded `concat` row, which goes to the remainder, never into a step."""

    group: int
    order: int
    file: str
    rows: int
    final: bool = False


def shuffle_rows(block: RowBlock, seed: int, *names) -> RowBlock:
    return block.take(permutation(block.num_rows, derive_seed(seed, "rows", *names)))


def pack_tails(tails: list, job: Job) -> tuple[dict, list[RowFile]]:
    """Each group's buckets' unfinished last rows, in bucket order, packed on: full rows (shuffled)
    then the group's final padded row. Writes them; returns the stats and the row files."""
    dtype = np.dtype(job.dtype)
    files, cut, pieces = [], 0, 0
    for g, group in enumerate(job.groups):
        p = ConcatPacker(job.cfg.seq_len, job.tokenizer.pad_id, dtype)
        rows = []
        counted = set()
        for _, items, ids in sorted((t for t in tails if job.group_of_bucket(t[0]) == g), key=lambda t: t[0]):
            counted.update(ids)
            for d in bk.pieces_from_bytes(items, dtype):
                rows.extend(p.add(d))
        final = p.flush()
        cut += len(cut_documents(rows + final) - counted)
        pieces += sum(len(r.doc_lens) for r in rows + final)
        suffix = f"-{g:05d}" if len(job.groups) > 1 else ""
        for name, rs, order in (("tail", rows, job.buckets), ("final", final, job.buckets + 1)):
            if rs:
                block = bk.rows_to_block(rs, job.cfg.seq_len, dtype)
                if name == "tail":
                    block = shuffle_rows(block, job.cfg.seed, group.name, "tail")
                rel = f"{bk.WORK_DIR}/buckets/{name}{suffix}.arrow"
                write_step(job.out, rel, block, seq_len=job.cfg.seq_len, dtype=job.dtype, step=None)
                files.append(RowFile(g, order, rel, len(rs), final=name == "final"))
    stats = {"documents_cut": cut, "pieces_packed": pieces}
    count(stats)
    return stats, files


class PackRows(beam.PTransform):
    """Spill files (and dedup's (bucket, doc_id) drops) -> bucket row files (main output), each
    bucket's unfinished last row ("tails") and {"documents_cut": n} dicts ("stats")."""

    def __init__(self, job: Job, drops=None):
        super().__init__()
        self.job, self.drops = job, drops

    def expand(self, spills):
        if self.drops is None:
            grouped = spills | "GroupSpillsByBucket" >> beam.GroupByKey()
        else:
            grouped = {"spills": spills, "drops": self.drops} | "GroupSpillsByBucket" >> beam.CoGroupByKey()
        return grouped | "PackBuckets" >> beam.ParDo(PackBucketFn(self.job)).with_outputs("tails", "stats", main="buckets")


# ---------------------------------------------------------------- AssignSteps / WriteStepShards

def step_tasks(files: list[RowFile], job: Job):
    """Row files -> one task per step, one for the remainder, and what the manifest records of
    the mixture (None without weights). A task: (step or -1, slices, rows per source or None,
    seed of the step's row shuffle or None). With weights a step's rows are shuffled (seeded by
    the step alone), so every micro-batch is a sample of the mixture."""
    cfg = job.cfg
    streams = [Stream(g.name, [(f.file, f.rows) for f in sorted(files, key=lambda f: f.order)
                               if f.group == k and not f.final]) for k, g in enumerate(job.groups)]
    try:
        stages = stages_of(cfg, streams)
        plan = make_plan(streams, stages, cfg.rows_per_step, cfg.seed)
    except EmptyStream as exc:
        # Not raised here: a failing Beam stage buries the message in worker logs. The launcher
        # reads it from the report and stops with it (no manifest is written).
        yield beam.pvalue.TaggedOutput("mixture", {"error": (
            f"source {exc.name!r} packs into no full row of {cfg.seq_len} tokens, so it cannot give its share of "
            "any step; give it more data, a weight of 0, or a smaller --seq-len")})
        return
    mixed = cfg.is_mixture
    for s, slices in enumerate(plan.steps):
        yield (s, [tuple(x) for x in slices], plan.step_rows[s] if mixed else None,
               derive_seed(cfg.seed, "step", s) if mixed else None)
    finals = sorted((f for f in files if f.final), key=lambda f: f.group)
    remainder = [tuple(x) for x in plan.remainder] + [(f.file, 0, f.rows, -1) for f in finals]
    rem_rows = list(plan.remainder_rows)
    for f in finals:
        rem_rows[f.group] += f.rows
    if remainder:
        yield (-1, remainder, rem_rows if mixed else None, None)
    mixture = None
    if mixed:
        rows = [st.rows for st in streams]
        mixture = {
            "stages": [{"steps": n, "weights": [float(w) for w in weights]}
                       for n, (_, weights) in zip(plan.stage_steps, stages)],
            "rows_per_pass": rows,
            "passes": [u / r if r else 0.0 for u, r in zip(plan.used, rows)],
            "remainder_rows": rem_rows,
        }
    yield beam.pvalue.TaggedOutput("mixture", {"mixture": mixture, "steps_asked": cfg.steps})


def plan_steps(_, job: Job, buckets: list, tails: list):
    """The tails packed (pack_tails), then every row file -> the step tasks (step_tasks)."""
    stats, files = pack_tails(tails, job)
    yield beam.pvalue.TaggedOutput("stats", stats)
    yield from step_tasks([RowFile(*b) for b in buckets] + files, job)


class AssignSteps(beam.PTransform):
    """PackRows' outputs -> step tasks spread over the workers (main), the tails' stats, and
    the mixture's record.

    One element, with the bucket files and tails as side inputs: gathering them with ToList and
    packing the tails in a step of its own took five more stages, each a round trip to every
    worker on the local runner."""

    def __init__(self, job: Job, packed):
        super().__init__()
        self.job, self.packed = job, packed

    def expand(self, pbegin):
        packed = self.packed
        plan = (
            pbegin
            | "Once" >> beam.Create([None])
            | "PackTailsPlanSteps" >> beam.FlatMap(
                plan_steps, self.job, beam.pvalue.AsList(packed.buckets), beam.pvalue.AsList(packed.tails),
            ).with_outputs("stats", "mixture", main="tasks")
        )
        return plan.tasks | "SpreadSteps" >> beam.Reshuffle(), plan.stats, plan.mixture


def read_slice(f, lo: int, hi: int, order: int) -> RowBlock:
    if order < 0:
        return f.read(range(lo, hi))
    return f.read().take(permutation(f.num_rows, order)[lo:hi])


def read_slices(job: Job, slices) -> Iterator[RowBlock]:
    """The rows of each (row file, start, stop, order) slice, one file open at a time."""
    for rel, lo, hi, order in slices:
        with open_step(fs.join(job.out, rel)) as f:
            yield read_slice(f, lo, hi, order)


def write_one_step(task, job: Job) -> dict:
    step, slices, source_rows, shuffle = task
    kw = dict(seq_len=job.cfg.seq_len, dtype=job.dtype, compression=job.cfg.compression)
    if step < 0:
        # The remainder can hold any number of rows (a mixture's unused rows): streamed, a slice at a time.
        info = write_blocks(job.out, REMAINDER_FILE, read_slices(job, slices), step=None, **kw)
    else:
        block = RowBlock.concat(list(read_slices(job, slices)))
        if shuffle is not None:
            block = block.take(permutation(block.num_rows, shuffle))
        info = write_step(job.out, step_file_name(step), block, step=step, **kw)
    Metrics.counter(NS, "steps_written" if step >= 0 else "remainder_rows").inc(1 if step >= 0 else info.rows)
    return {"step": step, **dataclasses.asdict(replace(info, source_rows=source_rows))}


class WriteStepShards(beam.PTransform):
    def __init__(self, job: Job):
        super().__init__()
        self.job = job

    def expand(self, tasks):
        return tasks | "WriteSteps" >> beam.Map(write_one_step, self.job)


# ---------------------------------------------------------------- WriteManifest

def manifest_config(cfg: JobConfig) -> dict:
    """The config recorded in the manifest: what decides the bytes. Not where the output is (a
    copied output stays byte-identical), nor --workers or --overwrite; report.json has those."""
    d = cfg.to_dict()
    for k in ("workers", "overwrite", "output"):
        d.pop(k)
    return d


def build_report(job: Job, stats: dict, infos: list[dict], n_rejects: int, plan: dict) -> dict:
    from steppack.shards import FileInfo

    steps = sorted((i for i in infos if i["step"] >= 0), key=lambda i: i["step"])
    rem = [i for i in infos if i["step"] < 0]
    files = steps + rem
    dropped_docs = {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("documents_dropped/")}
    dropped_tokens = {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("tokens_dropped/")}
    kept_docs = stats.get("documents_kept", 0)
    pieces = sum(i["pieces"] for i in files)
    wall = time.time() - job.started
    return {
        "documents": {"read": stats.get("documents_read", 0), "kept": kept_docs,
                      "dropped": sum(dropped_docs.values()), "dropped_by_reason": dropped_docs},
        "tokens": {"read": stats.get("tokens_read", 0), "kept": stats.get("tokens_kept", 0),
                   "dropped": sum(dropped_tokens.values()), "dropped_by_reason": dropped_tokens,
                   "in_steps": sum(i["tokens"] for i in steps),
                   "in_remainder": sum(i["tokens"] for i in rem)},
        "rows": {"in_steps": sum(i["rows"] for i in steps), "remainder": sum(i["rows"] for i in rem),
                 "rows_per_step": job.cfg.rows_per_step, "seq_len": job.cfg.seq_len},
        "steps": len(steps),
        "steps_asked": plan.get("steps_asked"),
        "mixture": mixture_report(job, plan.get("mixture")),
        "padding_tokens": sum(i["padding"] for i in files),
        "documents_cut_across_rows": stats.get("documents_cut", 0),
        "cuts": stats.get("pieces_packed", 0) - kept_docs,
        "pieces": pieces,
        "rejects": n_rejects,
        "tokenizer": dict(engine_record(job.engine), checked=stats.get("tokenizer_checked", 0),
                          mismatches=stats.get("tokenizer_mismatches", 0)),
        "buckets": job.buckets,
        "input_bytes": job.input_bytes,
        "wall_seconds": round(wall, 3),
        "tokens_per_second": round(stats.get("tokens_read", 0) / wall, 1) if wall > 0 else None,
        "workers": job.cfg.workers,
        "output": job.out,
        "_file_infos": [FileInfo(**{k: v for k, v in i.items() if k != "step"}) for i in files],
    }


def decontamination_report(stats: dict, index: dict | None) -> dict | None:
    """The index's size and each benchmark's texts, with the documents and characters it dropped
    (a contaminated document is never tokenized, so its size is in characters)."""
    if index is None:
        return None
    for name, b in index["benchmarks"].items():
        b["documents_dropped"] = stats.get(f"contaminated_documents/{name}", 0)
        b["chars_dropped"] = stats.get(f"contaminated_chars/{name}", 0)
    return index


def mixture_report(job: Job, mixture: dict | None) -> dict | None:
    """Per source: its target share (per stage), rows per pass, passes, rows in the remainder."""
    if mixture is None:
        return None
    return {"stages": mixture["stages"], "sources": [
        {"name": s.name, "rows_per_pass": mixture["rows_per_pass"][i], "passes": mixture["passes"][i],
         "remainder_rows": mixture["remainder_rows"][i]} for i, s in enumerate(job.cfg.sources)]}


def remove_work(out: str) -> None:
    fs.remove_tree(fs.join(out, bk.WORK_DIR))


def write_outputs(_, job: Job, stats: dict, infos: list, rejects: list, plan: dict, index: dict | None = None):
    if not claim.held_by(job.out, job.run_id):
        # Another run holds the output now: commit nothing (the launcher says so).
        return
    empty = [b for b, v in (index or {}).get("benchmarks", {}).items() if not v["texts"]]
    if empty and not plan.get("error"):
        b = index["benchmarks"][empty[0]]
        plan = {"error": f"benchmark {empty[0]!r} gave no text to decontaminate against ({b['unreadable']:,} records "
                         "could not be read): check its paths and its text field or template"}
    if plan.get("error"):
        fs.write_bytes(fs.join(job.out, REPORT_NAME), (json.dumps({"error": plan["error"]}) + "\n").encode("utf-8"))
        return
    rejects = sorted(rejects, key=lambda r: (r["source"], r["file"], r["record"], r["reason"]))
    fs.write_bytes(fs.join(job.out, REJECTS_FILE),
                   "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects).encode("utf-8"))
    report = build_report(job, stats, infos, len(rejects), plan)
    report["decontamination"] = decontamination_report(stats, index)
    file_infos = report.pop("_file_infos")
    steps = [f for f in file_infos if f.file != REMAINDER_FILE]
    remainder = next((f for f in file_infos if f.file == REMAINDER_FILE), None)
    sources = [SourceInfo(name=s.name, documents=stats.get(f"source_documents/{i}", 0),
                          tokens=stats.get(f"source_tokens/{i}", 0)) for i, s in enumerate(job.cfg.sources)]
    report["sources"] = [dict(name=s.name, documents=s.documents, tokens=s.tokens) for s in sources]
    report["run_id"] = job.run_id
    fs.write_bytes(fs.join(job.out, REPORT_NAME), (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    mix = plan.get("mixture")
    if mix is not None:
        mix = MixtureInfo(**dict(mix, stages=[StageInfo(**st) for st in mix["stages"]]))
    manifest = Manifest(
        seq_len=job.cfg.seq_len, rows_per_step=job.cfg.rows_per_step, dtype=job.dtype,
        compression=job.cfg.compression, tokenizer=job.tokenizer, packing=job.cfg.packing.value,
        seed=job.cfg.seed, sources=sources, steps=steps, remainder=remainder,
        config=manifest_config(job.cfg), mixture=mix, tokenizer_engine=engine_record(job.engine),
    )
    write_manifest(job.out, manifest)  # last: the commit marker
    remove_work(job.out)
    yield report


class WriteManifest(beam.PTransform):
    def __init__(self, job: Job, stats, infos, rejects, plan, index_summary=None):
        super().__init__()
        self.job, self.stats, self.infos, self.rejects, self.plan = job, stats, infos, rejects, plan
        self.index_summary = index_summary

    def expand(self, pbegin):
        side = {} if self.index_summary is None else {"index": beam.pvalue.AsSingleton(self.index_summary)}
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "WriteRejectsReportManifest" >> beam.FlatMap(
                write_outputs, self.job, beam.pvalue.AsSingleton(self.stats, default_value={}),
                beam.pvalue.AsList(self.infos), beam.pvalue.AsList(self.rejects),
                beam.pvalue.AsSingleton(self.plan), **side)
        )


class Prepare(beam.PTransform):
    """The whole job: units of input files -> step shards, report and manifest under job.out."""

    def __init__(self, job: Job, units: list[Unit]):
        """`units`: the sources' read units, and the benchmarks' (their `source` is -1 - benchmark)."""
        super().__init__()
        self.job = job
        self.units = [u for u in units if u.source >= 0]
        self.bench_units = [u for u in units if u.source < 0]

    def expand(self, pbegin):
        job = self.job
        index = None
        if job.cfg.decontaminate:
            d = job.cfg.decontaminate
            index = pbegin | "BenchmarkIndex" >> BenchmarkIndex(self.bench_units, d.ngram, d.min_ngram)
        read = pbegin | "ReadDocuments" >> ReadDocuments(self.units, job.cfg.workers)
        tok = read.docs | "TokenizeDocs" >> TokenizeDocs(job, index)
        stats, rejects, drops = [read.stats, tok.stats], [read.rejects, tok.rejects], None
        if job.cfg.dedup:
            dedup = tok.dedup | "Dedup" >> Dedup(job)
            stats.append(dedup.stats)
            rejects.append(dedup.rejects)
            drops = dedup.drops
        spills = tok.tokens | "SpillBuckets" >> beam.ParDo(SpillFn(job))
        packed = spills | "PackRows" >> PackRows(job, drops)
        tasks, plan_stats, plan = pbegin | "AssignSteps" >> AssignSteps(job, packed)
        infos = tasks | "WriteStepShards" >> WriteStepShards(job)
        stats = ((*stats, packed.stats, plan_stats) | "AllStats" >> beam.Flatten()
                 | "SumStats" >> beam.CombineGlobally(SumDicts()).without_defaults())
        rejects = tuple(rejects) | "AllRejects" >> beam.Flatten()
        summary = (index | "IndexSummary" >> beam.Map(lambda ix: ix.summary())) if index is not None else None
        return pbegin | "WriteManifest" >> WriteManifest(job, stats, infos, rejects, plan, summary)
