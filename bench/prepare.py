"""End-to-end `steppack prepare` throughput against the raw tokenizer limit, and peak memory.

    python bench/prepare.py [--corpus ../shared/corpus] [--multiples 4,16] [--workers 2] [--repeats 1]
                            [--side-by-side 0]

For each multiple k the corpus is copied k times into a temporary folder (distinct file names, so
distinct documents) and one job.toml reads every format with a text template per source. Then:

- timing (first multiple only): the limit and the job alternate, limit first and last (L J L J L
  for --repeats 2). Each job's ratio is its tokens/s over the mean of the limits measured just
  before and just after it, so that a machine whose speed drifts (a shared VM: the same pass
  varied by 10-20% within minutes) moves both alike; the ratio reported is the median of them.
  - limit: the same texts (read by the job's own readers, outside the timing) through the same
    tokenizer in one process with 2 rayon threads, batches of 1024 documents: `encode_batch_fast`
    (the limit the ratio uses; and `encode_batch` in the first repeat).
  - job: `steppack prepare --config job.toml --workers 2 --quiet` as a separate process, timed
    from launch to exit (Beam start-up, worker processes, shuffle, packing and writing included).
  CPU s: the CPU time of every process of the job (all reaped down the tree, so it lands in this
  process's children times), and of the limit's pass: how much more work the job does.
- side by side (--side-by-side N, first multiple): N more pairs of a job and a limit pass started
  at the same moment, each measured by its own CPU time; the job's CPU over the limit's moves far
  less than the timed ratios (see side_by_side): how much work the job does beyond the tokenizer,
  the figure to judge a change to that work by.
- memory, every multiple: --memory-repeats more runs (median and each run printed), with the
  summed PSS of the job's process tree sampled every 250 ms (see tree_pss). Sampling costs the
  job CPU, so these runs are not the timed ones. A single peak moves by tens of MiB from run to
  run (it depends on whether both workers peak at once), hence the repeats; the last line is
  the ratio of the largest multiple's median peak to the smallest's.

Prints the figures and, with --json, the JSON.
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


def prepare_cmd(job: str, out: str, workers: int) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "steppack"), "prepare", "--config", job,
            "--output", out, "--workers", str(workers), "--overwrite", "--quiet"]


def run_prepare(job: str, out: str, workers: int, sample_memory: bool) -> dict:
    """One `steppack prepare` run: wall and CPU seconds, tokens/s, and (sample_memory) peak PSS.

    Memory is sampled in runs of its own: reading smaps_rollup walks each process's page tables,
    ~30 ms of CPU per sample of a running job, which a timed run on 2 cores would pay for."""
    cmd = prepare_cmd(job, out, workers)
    peak = [0]
    t0 = time.perf_counter()
    cpu0 = os.times()
    proc = subprocess.Popen(cmd, cwd=REPO)
    done = threading.Event()

    def sample():
        while not done.wait(0.25):
            peak[0] = max(peak[0], tree_pss(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    cpu1 = os.times()  # every process of the job is reaped down the tree, so its CPU lands here
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    done.set()
    if sample_memory:
        th.join()
    if rc:
        raise SystemExit(f"prepare failed with exit code {rc}: {' '.join(cmd)}")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    return {"wall_s": wall, "tokens": report["tokens"]["read"], "tokens_per_s": report["tokens"]["read"] / wall,
            "peak_pss_mib": peak[0] / 2**20, "cpu_s": cpu, "steps": report["steps"], "documents": report["documents"]["read"]}


LIMIT_CODE = r"""
import json, sys, time
from tokenizers import Tokenizer
from shards import tokenizer as T
texts = json.load(open(sys.argv[1]))
tok = T.load("deepseek-llm")
bos, eos = T.special_ids("deepseek-llm", tok)
out = {}
for fn in sys.argv[2:]:
    f = getattr(tok, fn)
    t0, c0 = time.perf_counter(), time.process_time(); n = 0
    for i in range(0, len(texts), 1024):
        n += sum(len(e.ids) + 2 for e in f(texts[i:i + 1024], add_special_tokens=False))
    out[fn] = {"tokens": n, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
print(json.dumps(out))
"""


def side_by_side(job: str, out: str, texts: str, workers: int, threads: int) -> dict:
    """A job and a limit pass started at the same moment, each measured by its own CPU time.

    Whatever the machine's speed does meanwhile, it does to both, so the ratio of their CPU times
    moves far less than runs one after the other, which drift by 10-25% (three pairs: 1.15-1.20,
    where one timed run's ratios spanned 0.73-0.91; two identical jobs started together agreed
    within 1%): the figure to judge a change to the job's own work by. The job's CPU is
    its whole process tree's (start-up, reading, Beam, tokenizing, packing, writing; os.wait4 on
    it, its processes reaped down the tree); the limit's is its encode loop, over the same tokens.
    Wall times mean nothing here: the two share the cores."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    limit = subprocess.Popen([sys.executable, "-c", LIMIT_CODE, texts, "encode_batch_fast"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    proc = subprocess.Popen(prepare_cmd(job, out, workers), cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    printed = limit.communicate()[0]
    if os.waitstatus_to_exitcode(status) or limit.returncode:
        raise SystemExit(f"side-by-side run failed: prepare {os.waitstatus_to_exitcode(status)}, limit {limit.returncode}")
    lim = json.loads(printed.strip().splitlines()[-1])["encode_batch_fast"]
    job_cpu = usage.ru_utime + usage.ru_stime
    return {"job_cpu_s": job_cpu, "limit_cpu_s": lim["cpu_s"], "cpu_ratio": job_cpu / lim["cpu_s"]}


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


def measure_limit(texts: str, threads: int, fns: tuple[str, ...]) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    res = subprocess.run([sys.executable, "-c", LIMIT_CODE, texts, *fns], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: {"tokens": v["tokens"], "tokens_per_s": v["tokens"] / v["seconds"], "cpu_s": v["cpu_s"]}
            for k, v in r.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(REPO, "..", "shared", "corpus"))
    ap.add_argument("--multiples", default="4,16", help="comma-separated corpus repetitions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="tokenizer threads of the raw limit")
    ap.add_argument("--repeats", type=int, default=1, help="timed job runs, each between two limit passes (0: none); the median is reported")
    ap.add_argument("--memory-repeats", type=int, default=1, help="memory runs per multiple (0: none); the median is reported")
    ap.add_argument("--skip-limit", action="store_true", help="only the prepare runs (peak memory checks)")
    ap.add_argument("--side-by-side", type=int, default=0, metavar="N",
                    help="N more pairs of a job and a limit pass started together: the job's CPU over the limit's")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.skip_limit and args.side_by_side:
        ap.error("--side-by-side compares the job with the limit: it cannot go with --skip-limit")
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
            out = os.path.join(d, "out")
            if k == multiples[0] and not args.skip_limit:
                texts = dump_texts(job)
                runs = []
                lim = [measure_limit(texts, args.threads, ("encode_batch_fast", "encode_batch"))]
                for _ in range(args.repeats):  # L J L J L: each job between two limits
                    runs.append(run_prepare(job, out, args.workers, sample_memory=False))
                    lim.append(measure_limit(texts, args.threads, ("encode_batch_fast",)))
                    around = [x["encode_batch_fast"]["tokens_per_s"] for x in lim[-2:]]
                    runs[-1]["ratio_to_limit"] = runs[-1]["tokens_per_s"] / statistics.mean(around)
                results["limit"] = {
                    fn: {"multiple": k, "tokens": lim[0][fn]["tokens"],
                         "tokens_per_s": statistics.median(x[fn]["tokens_per_s"] for x in lim if fn in x),
                         "cpu_s": statistics.median(x[fn]["cpu_s"] for x in lim if fn in x)}
                    for fn in lim[0]}
                if runs:
                    results["timing"] = {key: statistics.median(r[key] for r in runs)
                                         for key in runs[0] if key != "peak_pss_mib"}
                    results["timing"].update(multiple=k, ratios=[round(r["ratio_to_limit"], 3) for r in runs])
                pairs = [side_by_side(job, out, texts, args.workers, args.threads) for _ in range(args.side_by_side)]
                if pairs:
                    results["side_by_side"] = {
                        "multiple": k, "cpu_ratio": statistics.median(p["cpu_ratio"] for p in pairs),
                        "pairs": [{key: round(v, 3) for key, v in p.items()} for p in pairs]}
            mem = [run_prepare(job, out, args.workers, sample_memory=True) for _ in range(args.memory_repeats)]
            if mem:
                results["runs"][k] = {"tokens": mem[0]["tokens"], "wall_s": statistics.median(r["wall_s"] for r in mem),
                                      "peak_pss_mib": statistics.median(r["peak_pss_mib"] for r in mem),
                                      "peaks": [round(r["peak_pss_mib"]) for r in mem]}
            shutil.rmtree(d)
    print(f"machine: {results['machine']}; prepare --workers {args.workers}")
    if "limit" in results:
        lim = results["limit"]
        print(f"raw limit, {args.threads} threads, x{lim['encode_batch_fast']['multiple']} corpus ({lim['encode_batch_fast']['tokens'] / 1e6:.1f}M "
              f"tokens): encode_batch_fast {lim['encode_batch_fast']['tokens_per_s'] / 1e6:.3f}M tok/s "
              f"({lim['encode_batch_fast']['cpu_s']:.1f} CPU s; medians of {args.repeats + 1} passes), "
              f"encode_batch {lim['encode_batch']['tokens_per_s'] / 1e6:.3f}M tok/s (first pass)")
    if "timing" in results:
        t = results["timing"]
        print(f"prepare x{t['multiple']}, medians of {args.repeats} (each between two limit passes): wall "
              f"{t['wall_s']:.1f} s, {t['cpu_s']:.1f} CPU s, {t['tokens_per_s'] / 1e6:.3f}M tok/s, ratio to the "
              f"limit {t['ratio_to_limit']:.2f} (per run: {', '.join(f'{x:.2f}' for x in t['ratios'])})")
    if "side_by_side" in results:
        sbs = results["side_by_side"]
        print(f"side by side, x{sbs['multiple']}, {len(sbs['pairs'])} pair(s) of a job and a limit pass started together: "
              f"the job's CPU / the limit's {sbs['cpu_ratio']:.3f} (median; per pair: "
              + ", ".join(f"{p['job_cpu_s']:.1f}/{p['limit_cpu_s']:.1f} s" for p in sbs["pairs"]) + ")")
    if results["runs"]:
        print(f"peak memory, {args.memory_repeats} more run(s) per corpus size with the sampler on (medians):")
        print(f"{'corpus':>7} {'tokens':>12} {'wall s':>8} {'peak PSS MiB':>13}  per run")
    for k, r in results["runs"].items():
        print(f"{'x' + str(k):>7} {r['tokens']:>12,.0f} {r['wall_s']:>8.1f} {r['peak_pss_mib']:>13.0f}  "
              f"{', '.join(map(str, r['peaks']))}")
    if len(results["runs"]) > 1:
        lo, hi = results["runs"][multiples[0]], results["runs"][multiples[-1]]
        print(f"peak x{multiples[-1]} / x{multiples[0]}: {hi['peak_pss_mib'] / lo['peak_pss_mib']:.2f}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
