"""The manifest: what an output directory holds, written last as its commit marker.

It records everything a reader needs to trust and use the steps without opening them: the format
and tool versions, the job's full config, the tokenizer's identity, seq_len, rows_per_step and
dtype, and for every step its file, rows, tokens, padding, documents, byte size and sha256.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import metadata

from . import fs
from .errors import ConfigError, FormatError
from .format import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, check_dtype, check_step_size, check_version


def tool_version() -> str:
    try:
        return metadata.version("steppack")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, kw_only=True)
class TokenizerInfo:
    """Identity of the tokenizer the tokens came from."""

    name: str
    """A preset name (`deepseek-llm`) or the path of the tokenizer.json."""
    sha256: str
    """sha256 of the tokenizer.json bytes: two tokenizers with the same name can differ."""
    vocab_size: int
    """Number of ids, added tokens included; every token id is below it."""
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    """The id written into padding positions (never counted in `doc_lens`)."""
    add_bos: bool
    add_eos: bool


@dataclass(frozen=True, kw_only=True)
class FileInfo:
    """One Arrow file of the output and what is in it."""

    file: str
    """Path relative to the output directory."""
    rows: int
    tokens: int
    """Document tokens (padding excluded)."""
    padding: int
    """Padding tokens."""
    documents: int
    """Distinct documents with at least one piece in the file."""
    pieces: int
    """Document pieces (a document cut across two rows is two pieces)."""
    bytes: int
    sha256: str
    source_rows: list[int] | None = None
    """Rows of each source (by manifest index) in this file; recorded when the output is a mixture
    (every row then holds one source's tokens only)."""


@dataclass(frozen=True, kw_only=True)
class SourceInfo:
    name: str
    documents: int
    """Documents of this source kept in the output (steps and remainder)."""
    tokens: int


@dataclass(frozen=True, kw_only=True)
class StageInfo:
    """One stage of a mixture: `steps` steps whose rows follow `weights`."""

    steps: int
    weights: list[float]
    """Normalised share of each source's rows (by manifest index; 0 for a source left out)."""


@dataclass(frozen=True, kw_only=True)
class MixtureInfo:
    """How the steps were composed from the sources, when the job gave weights.

    Step s of a stage takes q_i(s) rows of source i, with sum_i q_i(s) = rows_per_step and, at
    every prefix of the stage's steps, |sum_{t<=s} q_i(t) - w_i * rows_per_step * (s + 1)| < 1."""

    stages: list[StageInfo]
    rows_per_pass: list[int]
    """Full rows each source's data packs into: one pass over the source."""
    passes: list[float]
    """Rows each source gave to the steps / rows_per_pass (above 1: the source was repeated,
    each further pass a fresh seeded shuffle of its rows)."""
    remainder_rows: list[int]
    """Rows of each source left over after the last step (in the remainder file)."""


@dataclass(frozen=True, kw_only=True)
class Manifest:
    format_version: int = FORMAT_VERSION
    tool_version: str = field(default_factory=tool_version)
    seq_len: int
    rows_per_step: int
    dtype: str
    compression: str | None = None
    tokenizer: TokenizerInfo
    packing: str
    """Packing policy: 'concat' or 'bestfit'."""
    seed: int
    sources: list[SourceInfo]
    steps: list[FileInfo]
    remainder: FileInfo | None = None
    config: dict = field(default_factory=dict)
    """The full job config as the prepare job resolved it."""
    mixture: MixtureInfo | None = None
    """Per-source quotas (jobs with weights); None: sources are shuffled together."""
    tokenizer_engine: dict | None = None
    """The engine that tokenized ({"name": "fast" | "hf", "library", "version"}); its ids are
    tokenizers' ids (checked at start and on a sample), so it does not change the steps' bytes."""

    def __post_init__(self):
        check_dtype(self.dtype)
        if self.seq_len <= 0 or self.rows_per_step <= 0:
            raise FormatError(f"seq_len {self.seq_len} and rows_per_step {self.rows_per_step} must be positive")

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.rows_per_step

    def to_json(self) -> str:
        d = {"format": FORMAT_NAME, **dataclasses.asdict(self), "num_steps": self.num_steps}
        return json.dumps(d, indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> "Manifest":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise FormatError(f"{where} is not valid JSON ({str(exc)[:200]}); re-run prepare") from exc
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise FormatError(f"{where} is not a steppack manifest (no \"format\": \"{FORMAT_NAME}\")")
        version = d.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise FormatError(f"{where} has format_version {version!r}, not an integer; re-run prepare")
        check_version(version, where)
        try:
            d.pop("format")
            d.pop("num_steps", None)
            d["tokenizer"] = TokenizerInfo(**d["tokenizer"])
            d["sources"] = [SourceInfo(**s) for s in d["sources"]]
            d["steps"] = [FileInfo(**s) for s in d["steps"]]
            if d.get("remainder") is not None:
                d["remainder"] = FileInfo(**d["remainder"])
            if d.get("mixture") is not None:
                mix = dict(d["mixture"])
                mix["stages"] = [StageInfo(**st) for st in mix["stages"]]
                d["mixture"] = MixtureInfo(**mix)
            m = cls(**d)
        except (KeyError, TypeError) as exc:
            raise FormatError(f"{where} is missing or has unexpected fields ({exc}); re-run prepare") from exc
        if not all(isinstance(v, int) and v > 0 for v in (m.rows_per_step, m.seq_len)):
            raise FormatError(f"{where} has rows_per_step {m.rows_per_step!r} and seq_len {m.seq_len!r}: both must be "
                              "positive integers; re-run prepare")
        try:
            check_step_size(m.rows_per_step, m.seq_len, where)
        except ConfigError as exc:
            raise FormatError(str(exc)) from exc
        for info in m.steps + ([m.remainder] if m.remainder else []):
            if not isinstance(info.file, str) or not _inside(info.file):
                raise FormatError(f"{where} lists {info.file!r}, a path outside the output: a manifest names files "
                                  "inside its own directory only; re-run prepare")
        return m


def _inside(rel: str) -> bool:
    """A relative path that stays inside the output directory (no root, no '..', no backslash)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts)


def read_manifest(out: str) -> Manifest:
    """Read `OUT/manifest.json`; a missing manifest means the output is incomplete."""
    uri = fs.join(out, MANIFEST_NAME)
    if not fs.exists(uri):
        if not fs.exists(out):
            raise FormatError(f"{out} does not exist; run 'steppack prepare --output {out}' first")
        raise FormatError(
            f"{uri} is missing: the output is incomplete (prepare did not finish); "
            "re-run prepare with --overwrite"
        )
    try:
        text = fs.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{uri} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-run prepare") from exc
    except OSError as exc:  # a directory in its place, no permission
        raise FormatError(f"{uri} cannot be read ({exc.strerror or exc})") from exc
    return Manifest.from_json(text, where=uri)


def write_manifest(out: str, manifest: Manifest) -> None:
    """Write the manifest atomically (temp + rename on local disks). Call it after every step file exists."""
    fs.write_bytes(fs.join(out, MANIFEST_NAME), manifest.to_json().encode("utf-8"))
