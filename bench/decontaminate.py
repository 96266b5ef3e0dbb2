"""What decontamination costs `steppack prepare`: CPU of the same job with and without it.

    python bench/decontaminate.py [--corpus ../shared/corpus] [--multiple 4] [--repeats 2]

The bench corpus of bench/prepare.py, repeated `--multiple` times, prepared alternately without
and with `[decontaminate]` against GSM8K test and MATH test (as DeepSeekMath did), the runs in
pairs so that a drifting machine moves both alike; the ratio is of the jobs' CPU seconds (every
process of the job), medians over the pairs. Two corpora:

- `whole`: the bench corpus as it is. It holds GSM8K test, MATH test and MATH500 themselves, so
  decontamination drops them (~a quarter of the tokens) and the job has less to tokenize.
- `no-test-sets`: the same less those three files, so that nothing is dropped: the price of the
  check alone (the benchmark index built, every document's words hashed and looked up).

Also the index's size and build time, and the check's own CPU per MB of text (in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import prepare as bench  # noqa: E402  (bench/prepare.py: the corpus, the job runner)

BENCHMARKS = '''
[decontaminate]
[[decontaminate.benchmark]]
name = "gsm8k-test"
paths = ["{c}/gsm8k/test.jsonl.zst"]
text = "{{question}} {{answer}}"
[[decontaminate.benchmark]]
name = "math-test"
paths = ["{c}/math/test.jsonl.zst"]
text = "{{problem}} {{solution}}"
'''
TEST_SETS = ("gsm8k/test.jsonl.zst", "math/test.jsonl.zst", "math/math500.jsonl")


def jobs(corpus: str, d: str, k: int, drop_test_sets: bool) -> tuple[str, str]:
    """(job without, job with decontamination) over k copies of the corpus."""
    plain = bench.make_corpus(corpus, d, k)
    if drop_test_sets:
        for i in range(k):
            for rel in TEST_SETS:
                os.remove(os.path.join(d, f"copy-{i}", rel))
    with open(plain) as f:
        text = f.read()
    if drop_test_sets:  # the math source has no file left: it goes
        text = re.sub(r'\[\[source\]\]\nname = "math"\n.*?\n\n', "", text, flags=re.S)
    with open(plain, "w") as f:
        f.write(text)
    decon = os.path.join(d, "decontaminated.toml")
    with open(decon, "w") as f:
        f.write(text + BENCHMARKS.format(c=os.path.abspath(corpus)))
    return plain, decon


def check_cost(corpus: str) -> dict:
    """The index (size, build seconds) and the check's CPU per MB over the corpus's texts, batched
    as the job batches them."""
    from steppack.pipeline.audit import benchmark_index
    from steppack.pipeline.config import SourceConfig
    from steppack.pipeline.transforms import BATCH_CHARS, BATCH_DOCS

    t0 = time.process_time()
    index = benchmark_index([SourceConfig(name="gsm8k-test", paths=(f"{corpus}/gsm8k/test.jsonl.zst",),
                                          text="{question} {answer}"),
                             SourceConfig(name="math-test", paths=(f"{corpus}/math/test.jsonl.zst",),
                                          text="{problem} {solution}")], 10, 3)
    build = time.process_time() - t0
    with tempfile.TemporaryDirectory() as d:
        texts = json.load(open(bench.dump_texts(bench.make_corpus(corpus, d, 1))))
    batches, cur, chars = [], [], 0
    for t in texts:
        cur.append(t)
        chars += len(t)
        if len(cur) >= BATCH_DOCS or chars >= BATCH_CHARS:
            batches.append(cur)
            cur, chars = [], 0
    batches.append(cur)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    t0 = time.process_time()
    dropped = sum(len(index.match_texts(b)) for b in batches)
    cpu = time.process_time() - t0
    return {"grams": int(len(index.keys)), "index_mib": index.nbytes / 2**20, "build_cpu_s": build,
            "text_mb": mb, "check_cpu_ms_per_mb": 1000 * cpu / mb, "documents_dropped": dropped}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(bench.REPO, "..", "shared", "corpus"))
    ap.add_argument("--multiple", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (without, with) per corpus")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.corpus):
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 2
    results = {"multiple": args.multiple, "check": check_cost(os.path.abspath(args.corpus))}
    for name, drop in (("whole", False), ("no-test-sets", True)):
        with tempfile.TemporaryDirectory(prefix="steppack-bench-") as tmp:
            plain, decon = jobs(args.corpus, tmp, args.multiple, drop)
            pairs = []
            for _ in range(args.repeats):
                a = bench.run_prepare(plain, os.path.join(tmp, "out"), args.workers, sample_memory=False)
                b = bench.run_prepare(decon, os.path.join(tmp, "out"), args.workers, sample_memory=False)
                pairs.append((a, b))
            results[name] = {
                "cpu_s": [statistics.median(p[i]["cpu_s"] for p in pairs) for i in (0, 1)],
                "wall_s": [statistics.median(p[i]["wall_s"] for p in pairs) for i in (0, 1)],
                "tokens": [pairs[0][i]["tokens"] for i in (0, 1)],
                "cpu_ratio": statistics.median(b["cpu_s"] / a["cpu_s"] for a, b in pairs),
                "per_pair": [round(b["cpu_s"] / a["cpu_s"], 3) for a, b in pairs],
            }
    c = results["check"]
    print(f"index: GSM8K test + MATH test, {c['grams']:,} grams, {c['index_mib']:.1f} MiB, built in "
          f"{c['build_cpu_s']:.2f} CPU s; check alone {c['check_cpu_ms_per_mb']:.1f} CPU ms per MB of text "
          f"({c['text_mb']:.1f} MB, {c['documents_dropped']:,} documents contaminated)")
    for name in ("whole", "no-test-sets"):
        r = results[name]
        print(f"x{args.multiple} {name}: without {r['cpu_s'][0]:.1f} CPU s ({r['tokens'][0] / 1e6:.1f}M tokens), with "
              f"{r['cpu_s'][1]:.1f} CPU s ({r['tokens'][1] / 1e6:.1f}M tokens); with / without "
              f"{r['cpu_ratio']:.3f} (per pair: {', '.join(map(str, r['per_pair']))}); wall "
              f"{r['wall_s'][0]:.1f} -> {r['wall_s'][1]:.1f} s")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
