"""Helpers for the trainer tests (no tests here): hand-made outputs with padding, running `steppack train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from steppack.shards import Manifest, RowBlock, SourceInfo, TokenizerInfo, step_file_name, write_manifest, write_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_rows(out: str, steps: list[list[tuple[list[int], list[int]]]], seq_len: int, vocab_size: int = 64,
               pad_id: int = 0) -> Manifest:
    """An output whose steps hold the given (tokens, doc_lens) rows; tokens shorter than seq_len are padded."""
    infos = []
    for s, rows in enumerate(steps):
        full = [(list(t) + [pad_id] * (seq_len - len(t)), lens, list(range(len(lens))), [0] * len(lens))
                for t, lens in rows]
        block = RowBlock.from_rows(full, seq_len, "uint16")
        infos.append(write_step(out, step_file_name(s), block, seq_len=seq_len, dtype="uint16", step=s))
    m = Manifest(seq_len=seq_len, rows_per_step=len(steps[0]), dtype="uint16", packing="bestfit", seed=0,
                 tokenizer=TokenizerInfo(name="hand-made", sha256="0" * 64, vocab_size=vocab_size, bos_id=None,
                                         eos_id=1, pad_id=pad_id, add_bos=False, add_eos=True),
                 sources=[SourceInfo(name="hand", documents=0, tokens=0)], steps=infos)
    write_manifest(out, m)
    return m


def train_args(data: str, tmp, *extra: str, vocab: int = 512, context: int = 32) -> list[str]:
    return ["train", "--data", data, "--model", "tiny", "--vocab-size", str(vocab), "--context", str(context),
            "--warmup-steps", "2", "--max-lr", "3e-3", "--quiet", *extra]


def read_metrics(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def torchrun(nproc: int, argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m steppack.cli ARGV` with this interpreter."""
    # faulthandler: a rank that aborts prints every thread's Python stack.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "steppack.cli", *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def digests(metrics: list[dict]) -> dict[int, int]:
    return {r["step"]: r["data_digest"] for r in metrics}


def tokens_of(out: str, step: int) -> np.ndarray:
    from steppack.shards import open_step, read_manifest

    m = read_manifest(out)
    with open_step(os.path.join(out, m.steps[step].file)) as f:
        return np.asarray(f.read_tokens(), np.int64)
