"""The prepare job's configuration: frozen dataclasses, a TOML file, flags that override it.

    steppack prepare --input 'corpus/*.jsonl.zst' --text-field text --output OUT --seq-len 4096 \
        --rows-per-step 1024            # or --global-batch-tokens 4194304
    steppack prepare --config job.toml [--seq-len 512 ...]   # flags override the file

A `job.toml`::

    output = "out"                 # relative paths are relative to the TOML file
    seq_len = 512
    rows_per_step = 16
    seed = 0
    packing = "concat"             # or "bestfit"

    [[source]]
    name = "gsm8k"
    paths = ["gsm8k/*.jsonl.zst"]
    text = "{question}\\n\\n{answer}"   # a field name, or a template over fields
    # format = "jsonl"             # jsonl | parquet | text | hf; from the extension when absent
    # weight = 0.56              # mixtures: on every source or none (relative; normalised)

A mixture (docs/prepare.md, "Mixtures"): every source has a `weight`; each step then takes its
exact quota of rows from each source, and `steps = N` sets the output's length (without it: as
many steps as the data gives before the first source runs out). `[[stage]]` tables instead give
several stages one after another, each with `steps` and `weights = { name = w, ... }`.

Relative local paths are made absolute here, before anything is submitted: a relative path on a
remote worker silently matches nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
import string
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from steppack.shards.errors import ConfigError
from steppack.shards.format import check_step_size
from steppack.shards.fs import is_local
from steppack.shards.tokenizer import DEFAULT_TOKENIZER, PRESETS


FORMATS = ("jsonl", "parquet", "text", "hf")


class Specials(str, enum.Enum):
    """Special tokens around each document."""

    BOS_EOS = "bos+eos"
    """BOS, the text, EOS (DeepSeek LLM's default)."""
    EOS = "eos"
    """The text, then EOS."""
    NONE = "none"
    """The text alone (documents then run into each other in `concat` rows)."""


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """One input source of the job: some files of one schema."""

    name: str
    """Name recorded in the manifest; part of every doc_id."""
    paths: tuple[str, ...]
    """Globs or paths (local, gs://, s3://, or an HF `save_to_disk` directory)."""
    text: str = "text"
    """A field name (`text`: a string) or a template over fields (`{question}\\n\\n{answer}`: strings
    and numbers); any other value makes the record a bad_field reject."""
    format: str | None = None
    """jsonl | parquet | text | hf; from each file's extension when absent."""
    weight: float | None = None
    """Share of every step's rows (relative to the other sources' weights); on all sources or none."""

    def __post_init__(self):
        if not self.name or "\0" in self.name:
            raise ConfigError(f"source name {self.name!r} must be a non-empty string")
        if self.weight is not None:
            check_weight(self.weight, f"source {self.name!r}")
        if not self.paths:
            raise ConfigError(f"source {self.name!r} has no paths; give 'paths = [\"...\"]' or --input")
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"source {self.name!r}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        text_fields(self.text)  # raises on a malformed template

    @property
    def fields(self) -> tuple[str, ...]:
        return text_fields(self.text)


def text_fields(text: str) -> tuple[str, ...]:
    """The fields a text spec reads: `text` -> ('text',); `{q}\\n{a}` -> ('q', 'a')."""
    if "{" not in text:
        return (text,)
    try:
        parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"text template {text!r} is malformed ({exc}); write fields as {{name}}") from exc
    names = [f for f, _, _ in parts]
    # A field's name only: no attribute or index (code on the data's objects), no conversion (a
    # repr in the training text), no format spec ('{x:>999999999}' allocates gigabytes).
    if not names or any(not n or not n.isidentifier() or spec or conv for n, spec, conv in parts):
        raise ConfigError(f"text template {text!r} must name its fields, as in \"{{question}}\\n\\n{{answer}}\"")
    return tuple(names)


def check_weight(w, where: str) -> None:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ConfigError(f"{where}: weight {w!r} must be a number >= 0")


def exact(w: float) -> Fraction:
    """A weight as the exact decimal it was written as (0.56 -> 14/25), so quotas are exact."""
    return Fraction(repr(float(w))) if isinstance(w, float) else Fraction(w)


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One stage of a mixture: `steps` steps whose rows follow `weights`."""

    steps: int | None
    """Steps of this stage; the last stage may leave it out (then: until a source runs out)."""
    weights: tuple[tuple[str, float], ...]
    """(source name, weight) pairs; a source not named gets no rows in this stage."""


@dataclass(frozen=True, kw_only=True)
class DecontamConfig:
    """DeepSeekMath's decontamination (pipeline/decontaminate.py): a document holding a benchmark's
    n-gram is dropped before it is tokenized (reason `contaminated`)."""

    benchmarks: tuple[SourceConfig, ...]
    """The benchmark texts: read as sources are (formats, text templates, local or remote)."""
    ngram: int = 10
    """A document is dropped when one of its n-grams of words is one of a benchmark text's."""
    min_ngram: int = 3
    """A benchmark text of min_ngram .. ngram-1 words is matched as a whole; a shorter one is ignored."""

    def __post_init__(self):
        if not self.benchmarks:
            raise ConfigError("[decontaminate] needs at least one [[decontaminate.benchmark]] (or --decontaminate GLOB)")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ConfigError(f"benchmark names must be unique, got {names}")
        for b in self.benchmarks:
            if b.weight is not None:
                raise ConfigError(f"benchmark {b.name!r}: a benchmark has no weight")
        for k in ("ngram", "min_ngram"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"[decontaminate] {k} must be a positive integer, got {v!r}")
        if self.min_ngram > self.ngram:
            raise ConfigError(f"[decontaminate] min_ngram {self.min_ngram} is above ngram {self.ngram}")


DEDUP = ("exact",)


class Packing(str, enum.Enum):
    """How documents become rows (pipeline/packing.py)."""

    CONCAT = "concat"
    BESTFIT = "bestfit"


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything that decides the output bytes, plus how to run."""

    sources: tuple[SourceConfig, ...]
    output: str
    """Output directory (local or gs://...)."""
    seq_len: int = 4096
    """Tokens per row (DeepSeekMath: 4096)."""
    rows_per_step: int = 1024
    """Rows per global step (1024 x 4096 = 4M tokens, DeepSeekMath's 1.3B runs)."""
    seed: int = 0
    """Seed of the shuffle: same input + config + seed give byte-identical output."""
    packing: Packing = Packing.CONCAT
    tokenizer: str = DEFAULT_TOKENIZER
    """A preset (deepseek-llm) or the path of a tokenizer.json."""
    specials: Specials | None = None
    """BOS/EOS around each document; default bos+eos for a preset; for a plain tokenizer.json eos
    when --eos-token is given, else none."""
    bos_token: str | None = None
    """BOS token string for a plain tokenizer.json (presets know theirs)."""
    eos_token: str | None = None
    """EOS token string for a plain tokenizer.json."""
    min_chars: int = 0
    """Drop documents with fewer characters (0: keep all non-empty)."""
    max_chars: int = 0
    """Drop documents with more characters (0: no limit)."""
    max_doc_bytes: int = 16 << 20
    """A record of more bytes (a JSONL line, a text file, the text fields of a Parquet or HF
    record) is rejected as too_large before it is parsed (0: no limit)."""
    piece_chars: int = 1 << 20
    """A document longer than this is tokenized in pieces of at most this many characters."""
    tokenizer_engine: str = "auto"
    """auto: the exact fast engine (fastokens) when it gives tokenizers' ids on a built-in probe,
    else HF tokenizers with a warning; fast: that engine or an error; hf: HF tokenizers only."""
    verify_tokenizer: str = "1/1000"
    """Documents the fast engine's ids are checked on against HF tokenizers during the job (a
    mismatch is written with tokenizers' ids and counted): all, none, or 1/N (seeded by doc id)."""
    bucket_mb: int = 8
    """Input megabytes per shuffle bucket: memory per worker is bounded by one bucket."""
    unit_mb: float = 1.0
    """Input megabytes (uncompressed estimate) per read task: smaller spreads work more evenly."""
    compression: str | None = None
    """Step file buffer compression: none (zero-copy memory map) or zstd."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Local worker processes (the local runner only)."""
    overwrite: bool = False
    """Replace an output that already holds a complete manifest."""
    steps: int | None = None
    """Steps of the output. With weights, sources short of their share are repeated (each pass a
    fresh shuffle); without, at most this many steps. Default: as many as the data gives before
    the first source runs out."""
    stages: tuple[StageConfig, ...] = ()
    """Mixture stages one after another ([[stage]] tables in the config file)."""
    decontaminate: DecontamConfig | None = None
    """Benchmarks to decontaminate against ([decontaminate] table, or --decontaminate GLOB)."""
    dedup: str | None = None
    """exact: of documents whose normalised text is the same (NFKC, case folded, whitespace collapsed)
    one is kept, the first in source order, file key and record; the others are dropped (`duplicate`)."""
    recipe: str | None = None
    """DeepSeekMath's settings by name (deepseekmath-1.3b: 4096 x 1024 rows; deepseekmath-7b: 4096 x
    2560 rows, 10.49M tokens); the file's and the flags' values win (steppack/recipes.py)."""

    def __post_init__(self):
        if not self.sources:
            raise ConfigError("no input: give --input GLOB or a --config file with [[source]] tables")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"source names must be unique, got {names}")
        if len(names) > 65535:
            raise ConfigError("at most 65535 sources (the source column is uint16)")
        for k in ("seq_len", "rows_per_step", "workers", "piece_chars", "bucket_mb"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k.replace('_', '-')} must be positive, got {getattr(self, k)}")
        check_step_size(self.rows_per_step, self.seq_len, "the job")
        if self.unit_mb <= 0:
            raise ConfigError(f"unit-mb must be positive, got {self.unit_mb}")
        if isinstance(self.max_doc_bytes, bool) or not isinstance(self.max_doc_bytes, int) or self.max_doc_bytes < 0:
            raise ConfigError(f"max-doc-bytes must be an integer >= 0 (0 means no limit), got {self.max_doc_bytes!r}")
        if self.min_chars < 0 or self.max_chars < 0:
            raise ConfigError("min-chars and max-chars must be >= 0 (0 means no limit)")
        if self.max_chars and self.min_chars > self.max_chars:
            raise ConfigError(f"min-chars {self.min_chars} is above max-chars {self.max_chars}; swap or drop one")
        from .engines import ENGINES, Guard

        if self.tokenizer_engine not in ENGINES:
            raise ConfigError(f"tokenizer-engine {self.tokenizer_engine!r} is not one of {', '.join(ENGINES)}")
        Guard.parse(self.verify_tokenizer)  # raises on a malformed value
        if self.compression not in (None, "zstd"):
            raise ConfigError(f"compression {self.compression!r} is not 'none' or 'zstd'")
        if not 0 <= self.seed < 1 << 64:
            raise ConfigError(f"seed must be in [0, 2**64), got {self.seed}")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if self.dedup not in (None, *DEDUP):
            raise ConfigError(f"dedup {self.dedup!r} is not one of {', '.join(DEDUP)} (or none)")
        self._check_mixture(names)

    def _check_mixture(self, names: list[str]) -> None:
        weighted = [s.name for s in self.sources if s.weight is not None]
        if weighted and len(weighted) != len(self.sources):
            missing = [n for n in names if n not in weighted]
            raise ConfigError(f"weight is given for {', '.join(weighted)} but not for {', '.join(missing)}: "
                              "give every source a weight, or none")
        if weighted and not any(s.weight for s in self.sources):
            raise ConfigError("every source weight is 0; give at least one a positive weight")
        if not self.stages:
            return
        if weighted:
            raise ConfigError("weights are given both on the sources and in [[stage]] tables; "
                              "with stages, give them only in each stage's weights")
        for k, st in enumerate(self.stages):
            where = f"[[stage]] {k}"
            if st.steps is None and k != len(self.stages) - 1:
                raise ConfigError(f"{where} has no steps; only the last stage may leave them out")
            if st.steps is not None and (isinstance(st.steps, bool) or not isinstance(st.steps, int) or st.steps <= 0):
                raise ConfigError(f"{where}: steps must be a positive integer, got {st.steps!r}")
            for name, w in st.weights:
                if name not in names:
                    raise ConfigError(f"{where} weighs source {name!r}, which is not one of {', '.join(names)}")
                check_weight(w, f"{where} source {name!r}")
            if not any(w for _, w in st.weights):
                raise ConfigError(f"{where} gives no source a positive weight")
        fixed = sum(st.steps or 0 for st in self.stages)
        if self.steps is not None and self.stages[-1].steps is not None and self.steps != fixed:
            raise ConfigError(f"steps = {self.steps} but the stages add up to {fixed}; drop one or make them agree")
        if self.steps is not None and self.stages[-1].steps is None and self.steps <= fixed:
            raise ConfigError(f"steps = {self.steps} leaves no step for the last stage (the others take {fixed})")

    @property
    def is_mixture(self) -> bool:
        return bool(self.stages) or self.sources[0].weight is not None

    def mixture(self) -> list[tuple[int | None, list[Fraction]]] | None:
        """The stages as (steps or None: until a source runs out, exact normalised weight per
        source index); None when the job has no weights (sources are shuffled together)."""
        if not self.is_mixture:
            return None
        if self.stages:
            index = {s.name: i for i, s in enumerate(self.sources)}
            stages = []
            for st in self.stages:
                w = [Fraction(0)] * len(self.sources)
                for name, x in st.weights:
                    w[index[name]] = exact(x)
                stages.append([st.steps, w])
            if self.steps is not None and stages[-1][0] is None:
                stages[-1][0] = self.steps - sum(st[0] for st in stages[:-1])
        else:
            stages = [[self.steps, [exact(s.weight) for s in self.sources]]]
        return [(n, [x / sum(w) for x in w]) for n, w in stages]

    def special_tokens(self) -> list[str]:
        """The token strings whose ids the job looks up (tokenize.tokenizer_info): the preset's
        BOS and EOS, and --bos-token / --eos-token."""
        preset = PRESETS.get(self.tokenizer)
        out = [preset.bos, preset.eos] if preset else []
        return [t for t in out + [self.bos_token, self.eos_token] if t]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["packing"] = self.packing.value
        d["specials"] = self.specials.value if self.specials else None
        d["sources"] = [dict(dataclasses.asdict(s), paths=list(s.paths)) for s in self.sources]
        d["stages"] = [{"steps": st.steps, "weights": dict(st.weights)} for st in self.stages]
        if self.decontaminate:
            d["decontaminate"]["benchmarks"] = [dict(dataclasses.asdict(b), paths=list(b.paths))
                                                for b in self.decontaminate.benchmarks]
        return d


def rows_from_batch_tokens(global_batch_tokens: int, seq_len: int) -> int:
    """rows_per_step for a token budget per step; refuse one that seq_len does not divide."""
    if global_batch_tokens <= 0:
        raise ConfigError(f"--global-batch-tokens must be positive, got {global_batch_tokens}")
    rows, rest = divmod(global_batch_tokens, seq_len)
    if rest:
        lo, hi = rows * seq_len, (rows + 1) * seq_len
        near = f"{lo:,} ({rows} rows) or {hi:,} ({rows + 1} rows)" if rows else f"{hi:,} (1 row)"
        raise ConfigError(
            f"--global-batch-tokens {global_batch_tokens:,} is not a multiple of --seq-len {seq_len}; "
            f"the nearest valid values are {near}, or give --rows-per-step directly"
        )
    return rows


def absolute(path: str, base: str) -> str:
    """A local path made absolute against `base`; URIs unchanged."""
    if not is_local(path) or path.startswith("file://"):
        return path
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


FILE_KEYS = ({f.name for f in dataclasses.fields(JobConfig)} - {"stages"}) | {"source", "stage", "global_batch_tokens"}
SOURCE_KEYS = ("name", "paths", "text", "format", "weight")
DECONTAM_KEYS = ("ngram", "min_ngram", "benchmark")


def _source(s, i: int, where: str, keys, base: str, default_name: str) -> SourceConfig:
    """A [[source]] (or [[decontaminate.benchmark]]) table as a SourceConfig."""
    if not isinstance(s, dict):
        raise ConfigError(f"each {where} must be a table with name, paths and text")
    bad = set(s) - set(keys)
    if bad:
        raise ConfigError(f"{where} {i}: unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(keys)}")
    paths = s.get("paths", [])
    paths = [paths] if isinstance(paths, str) else list(paths)
    return SourceConfig(name=s.get("name", default_name), paths=tuple(absolute(p, base) for p in paths),
                        text=s.get("text", "text"), format=s.get("format"), weight=s.get("weight"))


def decontam_config(table, flags: dict, file_dir: str, cwd: str) -> DecontamConfig | None:
    """The [decontaminate] table, or --decontaminate GLOB flags (which replace its benchmarks)."""
    if table is not None and not isinstance(table, dict):
        raise ConfigError("decontaminate must be a table: [decontaminate] with [[decontaminate.benchmark]] tables "
                          "(name, paths, text), or --decontaminate GLOB")
    table = dict(table or {})
    if set(table) - set(DECONTAM_KEYS):
        raise ConfigError(f"[decontaminate] takes {', '.join(DECONTAM_KEYS)} ([[decontaminate.benchmark]] tables)")
    if flags.get("decontaminate"):
        text = flags.get("decontaminate_text") or "text"
        benchmarks = [SourceConfig(name=g, paths=(absolute(g, cwd),), text=text) for g in flags["decontaminate"]]
    else:
        benchmarks = [_source(b, i, "[[decontaminate.benchmark]]", ("name", "paths", "text", "format"), file_dir,
                              f"benchmark{i}") for i, b in enumerate(table.pop("benchmark", []))]
        if flags.get("decontaminate_text"):
            raise ConfigError("--decontaminate-text goes with --decontaminate GLOB")
    table.pop("benchmark", None)
    if not benchmarks and not table:
        return None
    return DecontamConfig(benchmarks=tuple(benchmarks), **table)


def build(file: dict | None, file_dir: str, flags: dict[str, Any], cwd: str | None = None) -> JobConfig:
    """Merge a parsed TOML file and command-line flags (flags win) into a checked JobConfig.

    `flags` holds only what the user gave (None for absent flags); `flags['input']` (globs) with
    `flags['text_field']` and `flags['format']` replace the file's sources.
    """
    cwd = cwd or os.getcwd()
    file = dict(file or {})
    unknown = set(file) - FILE_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in the config file: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(FILE_KEYS))}")
    sources = []
    if flags.get("input"):
        sources.append(SourceConfig(
            name="input", paths=tuple(absolute(p, cwd) for p in flags["input"]),
            text=flags.get("text_field") or "text", format=flags.get("format"),
        ))
    else:
        for i, s in enumerate(file.pop("source", [])):
            sources.append(_source(s, i, "[[source]]", SOURCE_KEYS, file_dir, f"source{i}"))
    file.pop("source", None)
    decontaminate = decontam_config(file.pop("decontaminate", None), flags, file_dir, cwd)
    stages = []
    for k, st in enumerate(file.pop("stage", [])):
        if not isinstance(st, dict) or set(st) - {"steps", "weights"} or not isinstance(st.get("weights"), dict):
            raise ConfigError(f"[[stage]] {k} must be a table with steps = N and weights = {{ source = w, ... }}")
        stages.append(StageConfig(steps=st.get("steps"), weights=tuple(st["weights"].items())))
    values: dict[str, Any] = dict(file)
    name = flags.get("recipe") or values.get("recipe")
    if name:
        from steppack.recipes import recipe

        if "global_batch_tokens" not in values and flags.get("global_batch_tokens") is None:
            values = {**recipe(name, "prepare"), **values}
        else:  # a token budget of the file's or the flags' sets the rows
            values = {**{k: v for k, v in recipe(name, "prepare").items() if k != "rows_per_step"}, **values}
        values["recipe"] = name
    if "output" in values:
        values["output"] = absolute(values["output"], file_dir)
    if "tokenizer" in values and os.path.exists(os.path.join(file_dir, values["tokenizer"])):
        values["tokenizer"] = absolute(values["tokenizer"], file_dir)
    for k, v in flags.items():
        if k in ("input", "text_field", "format", "decontaminate", "decontaminate_text") or v is None:
            continue
        values[k] = v
    if flags.get("output"):
        values["output"] = absolute(flags["output"], cwd)
    if flags.get("tokenizer") and os.path.exists(flags["tokenizer"]):
        values["tokenizer"] = absolute(flags["tokenizer"], cwd)
    if not values.get("output"):
        raise ConfigError("no output: give --output OUT (or output = \"...\" in the config file)")
    if flags.get("rows_per_step") is not None and flags.get("global_batch_tokens") is not None:
        raise ConfigError("give either --rows-per-step or --global-batch-tokens, not both")
    gbt = values.pop("global_batch_tokens", None)
    if flags.get("rows_per_step") is not None and flags.get("global_batch_tokens") is None:
        gbt = None  # the flag overrides the file's token budget
    if gbt is not None:
        values.pop("rows_per_step", None)
        values["rows_per_step"] = rows_from_batch_tokens(int(gbt), int(values.get("seq_len", 4096)))
    try:
        if "packing" in values:
            values["packing"] = Packing(values["packing"])
        if values.get("specials") is not None:
            values["specials"] = Specials(values["specials"])
    except ValueError as exc:
        raise ConfigError(f"{exc}; packing is concat|bestfit, specials is bos+eos|eos|none") from exc
    if values.get("compression") in ("none", ""):
        values["compression"] = None
    if values.get("dedup") in ("none", ""):
        values["dedup"] = None
    values["decontaminate"] = decontaminate
    known = {f.name for f in dataclasses.fields(JobConfig)}
    try:
        return JobConfig(sources=tuple(sources), stages=tuple(stages),
                         **{k: v for k, v in values.items() if k in known and k != "stages"})
    except TypeError as exc:
        raise ConfigError(f"bad value in the configuration: {exc}") from exc


def field_help(cls, name: str) -> str:
    """The docstring under a dataclass field (kept in sync with --help by cli.py)."""
    return _field_docs(cls).get(name, "")


@functools.cache
def _field_docs(cls) -> dict[str, str]:
    """{field: its docstring} of a dataclass, from one parse of its source (parsing it once per
    flag cost every `steppack prepare` ~0.2 s before the job started)."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: " ".join(str(b.value.value).split())
            for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}

