"""End-to-end `steppack prepare` throughput against the tokenizers' own limits, and peak memory.

    python bench/prepare.py [--corpus ../shared/corpus] [--multiples 4,16] [--workers 2] [--repeats 2]

For each multiple k the corpus is copied k times into a temporary folder (distinct file names, so
distinct documents) and one job.toml reads every format with a text template per source.

- timing, on the largest multiple: the limits and the job alternate (L J L J L for --repeats 2),
  so that a machine whose speed drifts (a shared VM: one pass varies by 10-20% within minutes)
  moves both alike; each job's ratios are over the mean of the limits just before and after it,
  and the medians are reported.
  - limits: the corpus's texts (read by the job's own readers, outside the timing; one copy:
    a rate does not depend on how many copies) through each engine alone in one process with 2
    threads, batches of 1024 documents: HF tokenizers' `encode_batch_fast` and fastokens'
    `encode_batch_flat`.
  - job: `steppack prepare --config job.toml --workers 2 --quiet` as a separate process. End to
    end: tokens over launch-to-exit wall time (Beam start-up, workers, shuffle, packing, writing
    included). Steady state: tokens over the time from the first tokenized document to the last
    (polled from the job's progress files). First-token latency: launch to the first document.
- memory, every multiple: --memory-repeats runs with the summed PSS of the job's process tree
  sampled every 250 ms (not the timed runs: sampling costs CPU); the last line is the ratio of
  the largest multiple's median peak to the smallest's.

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

    PSS, not RSS: the workers share the pages of the libraries they load, which RSS would count
    once per process. The tree is walked through each
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
    progress = os.path.join(out, "_work", "progress")
    first = last = None
    seen = 0
    while proc.poll() is None:  # when tokenizing starts and ends, from the workers' progress files
        time.sleep(0.1)
        n = progress_tokens(progress)
        now = time.perf_counter() - t0
        if n and first is None:
            first = now
        if n > seen:
            seen, last = n, now
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
    tokens = report["tokens"]["read"]
    steady = tokens / (last - first) if first is not None and last > first else None
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "steady_tokens_per_s": steady,
            "first_token_s": first, "peak_pss_mib": peak[0] / 2**20, "cpu_s": cpu, "steps": report["steps"],
            "documents": report["documents"]["read"], "engine": report["tokenizer"]["library"]}


def progress_tokens(folder: str) -> int:
    """Tokens the job's workers have tokenized so far (their progress files; run.Progress reads the same)."""
    total = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    total += json.load(f).get("tokens", 0)
            except (OSError, ValueError):
                continue
    return total


LIMIT_CODE = r"""
import json, sys, time
import numpy as np
from steppack.shards import tokenizer as T
texts = json.load(open(sys.argv[1]))
path = T.resolve_path("deepseek-llm")
if sys.argv[2] == "tokenizers":
    tok = T.load("deepseek-llm")
    encode = lambda b: sum(len(e.ids) for e in tok.encode_batch_fast(b, add_special_tokens=False))
else:
    import fastokens
    tok = fastokens.Tokenizer.from_file(path)
    encode = lambda b: len(np.frombuffer(tok.encode_batch_flat(b, add_special_tokens=False)[0], np.uint32))
t0, c0 = time.perf_counter(), time.process_time(); n = 0
for i in range(0, len(texts), 1024):
    n += encode(texts[i:i + 1024]) + 2 * len(texts[i:i + 1024])  # + BOS and EOS, as the job counts
print(json.dumps({"tokens": n, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}))
"""
ENGINE_LIBRARIES = ("tokenizers", "fastokens")


def dump_texts(job: str) -> str:
    """The job's texts, read by its own readers (outside any timing), as a JSON file next to job."""
    sys.path.insert(0, REPO)
    from steppack.pipeline.logs import quiet_logging

    quiet_logging()  # Beam's import-time warnings, as in the job itself
    from steppack.pipeline.config import build, load_toml
    from steppack.pipeline.sources import Reject, discover, read_unit

    cfg = build(load_toml(job), os.path.dirname(job), {"output": os.path.join(os.path.dirname(job), "unused")})
    units, _ = discover(cfg)
    texts = [it[1] for u in units for it in read_unit(u) if not isinstance(it, Reject) and it[1].strip()]
    path = os.path.join(os.path.dirname(job), "texts.json")
    with open(path, "w") as f:
        json.dump(texts, f)
    return path


def measure_limit(texts: str, threads: int, library: str) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), FASTOKENS_BPE_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="true")
    res = subprocess.run([sys.executable, "-c", LIMIT_CODE, texts, library], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"tokens": r["tokens"], "tokens_per_s": r["tokens"] / r["seconds"], "cpu_s": r["cpu_s"]}


def time_job(job: str, out: str, texts: str, args) -> dict:
    """L J L J L: each job between two passes of each limit; medians of the ratios."""
    lims = [{lib: measure_limit(texts, args.threads, lib) for lib in ENGINE_LIBRARIES}]
    runs = []
    for _ in range(args.repeats):
        r = run_prepare(job, out, args.workers, sample_memory=False)
        lims.append({lib: measure_limit(texts, args.threads, lib) for lib in ENGINE_LIBRARIES})
        for lib in ENGINE_LIBRARIES:
            around = statistics.mean(x[lib]["tokens_per_s"] for x in lims[-2:])
            r[f"end_to_end/{lib}"] = r["tokens_per_s"] / around
            r[f"steady/{lib}"] = (r["steady_tokens_per_s"] or 0) / around
        runs.append(r)
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {
        "limits": {lib: {"tokens_per_s": statistics.median(x[lib]["tokens_per_s"] for x in lims),
                         "cpu_s": statistics.median(x[lib]["cpu_s"] for x in lims), "passes": len(lims)}
                   for lib in ENGINE_LIBRARIES},
        "job": {key: med(key) for key in ("wall_s", "cpu_s", "tokens", "tokens_per_s", "steady_tokens_per_s",
                                          "first_token_s")} | {"engine": runs[0]["engine"]},
        "ratios": {key: med(key) for key in runs[0] if "/" in key},
        "per_run": [{k: round(v, 3) for k, v in r.items() if "/" in k} for r in runs],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(REPO, "..", "shared", "corpus"))
    ap.add_argument("--multiples", default="4,16", help="comma-separated corpus repetitions; timing on the largest")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of each engine's limit")
    ap.add_argument("--repeats", type=int, default=2, help="timed job runs, each between limit passes (0: none)")
    ap.add_argument("--memory-repeats", type=int, default=1, help="memory runs per multiple (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.corpus):
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 2
    multiples = sorted(int(x) for x in args.multiples.split(","))
    results = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}", "workers": args.workers, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="steppack-bench-") as tmp:
        texts = dump_texts(make_corpus(args.corpus, os.path.join(tmp, "x1"), 1))
        for k in multiples:
            d = os.path.join(tmp, f"x{k}")
            job = make_corpus(args.corpus, d, k)
            out = os.path.join(d, "out")
            if k == multiples[-1] and args.repeats:
                results["timing"] = dict(time_job(job, out, texts, args), multiple=k)
            mem = [run_prepare(job, out, args.workers, sample_memory=True) for _ in range(args.memory_repeats)]
            if mem:
                results["runs"][k] = {"tokens": mem[0]["tokens"], "wall_s": statistics.median(r["wall_s"] for r in mem),
                                      "peak_pss_mib": statistics.median(r["peak_pss_mib"] for r in mem),
                                      "peaks": [round(r["peak_pss_mib"]) for r in mem]}
            shutil.rmtree(d)
    report(results, args, multiples)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


def report(results: dict, args, multiples: list[int]) -> None:
    print(f"machine: {results['machine']}; prepare --workers {args.workers}")
    if "timing" in results:
        t = results["timing"]
        lim, job, ratio = t["limits"], t["job"], t["ratios"]
        print(f"limits, {args.threads} threads, medians of {lim['tokenizers']['passes']} passes: HF tokenizers "
              f"{lim['tokenizers']['tokens_per_s'] / 1e6:.3f}M tok/s, fastokens {lim['fastokens']['tokens_per_s'] / 1e6:.3f}M tok/s")
        print(f"prepare x{t['multiple']} ({job['tokens'] / 1e6:.1f}M tokens, engine {job['engine']}), medians of "
              f"{args.repeats}: wall {job['wall_s']:.1f} s, {job['cpu_s']:.1f} CPU s; end to end "
              f"{job['tokens_per_s'] / 1e6:.3f}M tok/s, steady {job['steady_tokens_per_s'] / 1e6:.3f}M tok/s, "
              f"first token after {job['first_token_s']:.1f} s")
        for lib in ENGINE_LIBRARIES:
            per = ", ".join(f"{r['end_to_end/' + lib]:.2f}" for r in t["per_run"])
            print(f"  / {lib} limit: end to end {ratio['end_to_end/' + lib]:.2f}, steady {ratio['steady/' + lib]:.2f} "
                  f"(end to end per run: {per})")
    if results["runs"]:
        print(f"peak memory, {args.memory_repeats} run(s) per corpus size with the sampler on (medians):")
        print(f"{'corpus':>7} {'tokens':>12} {'wall s':>8} {'peak PSS MiB':>13}  per run")
    for k, r in results["runs"].items():
        print(f"{'x' + str(k):>7} {r['tokens']:>12,.0f} {r['wall_s']:>8.1f} {r['peak_pss_mib']:>13.0f}  "
              f"{', '.join(map(str, r['peaks']))}")
    if len(results["runs"]) > 1:
        lo, hi = results["runs"][multiples[0]], results["runs"][multiples[-1]]
        print(f"peak x{multiples[-1]} / x{multiples[0]}: {hi['peak_pss_mib'] / lo['peak_pss_mib']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
