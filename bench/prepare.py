"""End-to-end `steppack prepare` throughput against the raw tokenizer limit, and peak memory.

    python bench/prepare.py [--corpus ../shared/corpus] [--multiples 4,16] [--workers 2] [--repeats 1]

For each multiple k the corpus is copied k times into a temporary folder (distinct file names, so
distinct documents) and one job.toml reads every format with a text template per source. Then:

- prepare: `steppack prepare --config job.toml --workers 2` as a separate process, timed from
  launch to exit (Beam start-up, worker processes, shuffle, packing and writing included), while
  the summed PSS of the whole process tree is sampled every 250 ms (peak memory; see tree_pss);
- limit (first multiple only): the same texts (read by the job's own readers, outside the timing)
  through the same tokenizer in one process with 2 rayon threads: `encode_batch_fast` (the limit
  the ratio uses) and `encode_batch`, batches of 1024 documents. Each repeat measures the limit
  and then runs the job, so that a machine whose speed drifts (a shared VM) moves both alike.

Prints a table and, with --json, the figures as JSON. Figures are medians over --repeats; the
ratio is the median of the per-repeat ratios (job / the limit measured just before it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SOURCES = [
    ("gsm8k", ["gsm8k/*.jsonl.zst"], "Question: {question}\nAnswer: {answer}"),
    ("math", ["math/test.jsonl.zst", "math/math500.jsonl"], "{problem}\n\n{solution}"),
    ("proofnet", ["proofnet/*.jsonl"], "{nl_statement}\n\n{nl_proof}\n\n{formal_statement}"),
    ("proofnet-tex", ["proofnet/tex/*.tex"], "text"),
    ("stackmathqa", ["stackmathqa/*.parquet"], "{Q}\n\n{A}"),
    ("mathlib3", ["mathlib3/*.jsonl.gz"], "text"),
    ("champ", ["champ/*.jsonl"], "text"),
]


def make_corpus(src: str, dst: str, k: int) -> str:
    """k copies of the corpus under dst/copy-i/, and a job.toml over all of them."""
    for i in range(k):
        shutil.copytree(src, os.path.join(dst, f"copy-{i}"), ignore=shutil.ignore_patterns("README.md"))
    lines = ["seq_len = 4096", "rows_per_step = 64", "seed = 0", ""]
    for name, paths, text in SOURCES:
        globs = [f"copy-*/{p}" for p in paths]
        lines += ["[[source]]", f"name = {json.dumps(name)}", f"paths = {json.dumps(globs)}",
                  f"text = {json.dumps(text)}", ""]
    job = os.path.join(dst, "job.toml")
    with open(job, "w") as f:
        f.write("\n".join(lines))
    return job


def tree_pss(pid: int) -> int:
    """Summed PSS (bytes) of `pid` and all its descendants.

    PSS, not RSS: the local workers are forked from one pre-started process (pipeline/warm.py)
    and share its pages, which RSS would count once per process. The tree is walked through each
    thread's /proc children list (a worker's parent may be any thread of the runner), which costs
    far less than scanning all of /proc: the sampler shares the job's two cores.
    """
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


def run_prepare(job: str, out: str, workers: int) -> dict:
    cmd = [os.path.join(os.path.dirname(sys.executable), "steppack"), "prepare", "--config", job,
           "--output", out, "--workers", str(workers), "--overwrite", "--quiet"]
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    done = threading.Event()

    def sample():
        while not done.wait(0.25):
            peak[0] = max(peak[0], tree_pss(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if rc:
        raise SystemExit(f"prepare failed with exit code {rc}: {' '.join(cmd)}")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    return {"wall_s": wall, "tokens": report["tokens"]["read"], "tokens_per_s": report["tokens"]["read"] / wall,
            "peak_pss_mib": peak[0] / 2**20, "steps": report["steps"], "documents": report["documents"]["read"]}


LIMIT_CODE = r"""
import json, sys, time
from tokenizers import Tokenizer
from shards import tokenizer as T
texts = json.load(open(sys.argv[1]))
tok = T.load("deepseek-llm")
bos, eos = T.special_ids("deepseek-llm", tok)
out = {}
for fn in ("encode_batch_fast", "encode_batch"):
    f = getattr(tok, fn)
    t0 = time.perf_counter(); n = 0
    for i in range(0, len(texts), 1024):
        n += sum(len(e.ids) + 2 for e in f(texts[i:i + 1024], add_special_tokens=False))
    out[fn] = {"tokens": n, "seconds": time.perf_counter() - t0}
print(json.dumps(out))
"""


def dump_texts(job: str) -> str:
    """The job's texts, read by its own readers (outside any timing), as a JSON file next to job."""
    sys.path.insert(0, REPO)
    from pipeline.worker import quiet_logging

    quiet_logging()  # Beam's import-time warnings, as in the job itself
    from pipeline.config import build, load_toml
    from pipeline.sources import Reject, discover, read_unit

    cfg = build(load_toml(job), os.path.dirname(job), {"output": os.path.join(os.path.dirname(job), "unused")})
    units, _ = discover(cfg)
    texts = [it[1] for u in units for it in read_unit(u) if not isinstance(it, Reject) and it[1].strip()]
    path = os.path.join(os.path.dirname(job), "texts.json")
    with open(path, "w") as f:
        json.dump(texts, f)
    return path


def measure_limit(texts: str, threads: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    res = subprocess.run([sys.executable, "-c", LIMIT_CODE, texts], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: {"tokens": v["tokens"], "tokens_per_s": v["tokens"] / v["seconds"]} for k, v in r.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(REPO, "..", "shared", "corpus"))
    ap.add_argument("--multiples", default="4,16", help="comma-separated corpus repetitions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="tokenizer threads of the raw limit")
    ap.add_argument("--repeats", type=int, default=1, help="runs per figure; the median is reported")
    ap.add_argument("--skip-limit", action="store_true", help="only the prepare runs (peak memory checks)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.corpus):
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 2
    multiples = sorted(int(x) for x in args.multiples.split(","))
    results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}", "workers": args.workers, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="steppack-bench-") as tmp:
        for k in multiples:  # the limit is measured over the first (smallest) multiple's texts
            d = os.path.join(tmp, f"x{k}")
            job = make_corpus(args.corpus, d, k)
            with_limit = "limit" not in results and not args.skip_limit
            texts = dump_texts(job) if with_limit else None
            runs, lim = [], []
            for _ in range(args.repeats):  # limit and job back to back: drift hits both alike
                if with_limit:
                    lim.append(measure_limit(texts, args.threads))
                runs.append(run_prepare(job, os.path.join(d, "out"), args.workers))
                if with_limit:
                    runs[-1]["ratio_to_limit"] = runs[-1]["tokens_per_s"] / lim[-1]["encode_batch_fast"]["tokens_per_s"]
            if with_limit:
                results["limit"] = {
                    fn: {"multiple": k, "tokens": lim[0][fn]["tokens"],
                         "tokens_per_s": statistics.median(x[fn]["tokens_per_s"] for x in lim)}
                    for fn in lim[0]}
            results["runs"][k] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            if with_limit:
                results["runs"][k]["ratios"] = [round(r["ratio_to_limit"], 3) for r in runs]
            shutil.rmtree(d)
    limit = results["limit"]["encode_batch_fast"]["tokens_per_s"] if "limit" in results else float("nan")
    print(f"machine: {results['machine']}; prepare --workers {args.workers}; medians of {args.repeats}")
    if "limit" in results:
        print(f"raw limit, {args.threads} threads: encode_batch_fast {limit / 1e6:.3f}M tok/s, "
          f"encode_batch {results['limit']['encode_batch']['tokens_per_s'] / 1e6:.3f}M tok/s "
          f"(x{multiples[0]} corpus, {results['limit']['encode_batch_fast']['tokens'] / 1e6:.1f}M tokens)")
    print(f"{'corpus':>7} {'tokens':>12} {'wall s':>8} {'tok/s':>10} {'ratio':>6} {'peak PSS MiB':>13}")
    for k, r in results["runs"].items():
        # The ratio: median over repeats of (job / the limit measured just before it); a multiple
        # without its own limit runs is set against the median limit.
        r.setdefault("ratio_to_limit", r["tokens_per_s"] / limit)
        per_run = f"  (per run: {', '.join(f'{x:.2f}' for x in r['ratios'])})" if "ratios" in r else ""
        print(f"{'x' + str(k):>7} {r['tokens']:>12,.0f} {r['wall_s']:>8.1f} {r['tokens_per_s'] / 1e6:>9.3f}M "
              f"{r['ratio_to_limit']:>6.2f} {r['peak_pss_mib']:>13.0f}{per_run}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
