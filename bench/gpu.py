"""The trainer's GPU figures for docs/trainer.md: deepseek-1.3b, bf16, 4096 context, one GPU, ddp then fsdp.

    python bench/gpu.py [--steps 24] [--micro-batch 4] [--rows-per-step 32] [--peak-tflops 989]

Prepares the bundled sample (every source weighted, so short ones repeat) into 4096-token steps,
trains `--steps` steps with each `--parallel` on one GPU, and reports from the metrics lines of the
steps after the first three (compilation and allocator warm-up): tokens/s, MFU, peak memory and the
data wait's share of step time. MFU counts 6N FLOPs per token for the N parameters (embedding and
output layer included) plus 6 x layers x d_model x seq_len for causal attention (half of the
12 L d T of full attention), against `--peak-tflops` (989: H100/H200 dense bf16).
Needs CUDA; nothing here runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [("gsm8k", "gsm8k/train.jsonl.zst", "{question}\\n\\n{answer}"),
           ("math500", "math/math500.jsonl", "{problem}\\n\\n{solution}"),
           ("stackmathqa", "stackmathqa/*.parquet", "{Q}\\n\\n{A}"),
           ("mathlib3", "mathlib3/*.jsonl.gz", "text"),
           ("proofnet-tex", "proofnet/tex/*.tex", "text")]


def steppack(*args: str) -> None:
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "steppack"), *args], check=True, cwd=REPO)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--rows-per-step", type=int, default=32)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--parallel", default="ddp,fsdp")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from steppack.trainer.model import Decoder, preset

    mcfg = preset("deepseek-1.3b")
    with torch.device("meta"):
        n = sum(p.numel() for p in Decoder(mcfg).parameters())
    flops_per_token = 6 * n + 6 * mcfg.n_layers * mcfg.d_model * mcfg.context
    results = {"gpu": torch.cuda.get_device_name(), "parameters": n, "flops_per_token": flops_per_token, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.toml")
        lines = [f"seq_len = {mcfg.context}", f"rows_per_step = {args.rows_per_step}", f"steps = {args.steps}"]
        for name, path, text in SOURCES:
            lines += ["[[source]]", f'name = "{name}"', f'paths = ["{REPO}/samples/{path}"]', f'text = "{text}"',
                      "weight = 1"]
        with open(job, "w") as f:
            f.write("\n".join(lines) + "\n")
        data = os.path.join(tmp, "data")
        steppack("prepare", "--config", job, "--output", data, "--quiet")
        for parallel in args.parallel.split(","):
            metrics = os.path.join(tmp, f"{parallel}.jsonl")
            steppack("train", "--data", data, "--model", "deepseek-1.3b", "--steps", str(args.steps),
                     "--micro-batch", str(args.micro_batch), "--dtype", "bf16", "--parallel", parallel,
                     "--metrics", metrics, "--quiet", "--seed", "0")
            recs = [json.loads(line) for line in open(metrics)][3:]
            tps = statistics.median(r["tokens_per_s"] for r in recs)
            results["runs"][parallel] = {
                "tokens_per_s": tps, "mfu": tps * flops_per_token / (args.peak_tflops * 1e12),
                "peak_memory_gib": max(r.get("cuda_max_memory_gib", 0) for r in recs),
                "data_wait_share": sum(r["data_wait_ms"] for r in recs) / sum(r["step_ms"] for r in recs),
                "steps_measured": len(recs), "last_loss": recs[-1]["loss"]}
    for p, r in results["runs"].items():
        print(f"{results['gpu']} deepseek-1.3b ({n / 1e9:.2f}B) bf16 --parallel {p}, micro-batch {args.micro_batch} x "
              f"{mcfg.context}: {r['tokens_per_s']:,.0f} tok/s, MFU {100 * r['mfu']:.1f}% (peak {args.peak_tflops:.0f} "
              f"TFLOPs), peak memory {r['peak_memory_gib']:.1f} GiB, data wait {100 * r['data_wait_share']:.3f}% of step time")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
