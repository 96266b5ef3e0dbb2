"""Benchmark: peak memory of one training micro-batch, the full-logits loss against the chunked one.

Each variant runs in a process of its own: build the model, one forward and backward of one
micro-batch of random tokens (fp32 on CPU unless --device cuda, then bf16 autocast), and report the
process's peak resident memory (CPU) or peak allocated memory (CUDA). `full` materialises the
(tokens x vocab) logits and takes `F.log_softmax` + `nll_loss` of them (the loss `steppack train`
used before trainer/loss.py); `chunked` is `Decoder(..., labels=...)`. Losses agree to 1e-5.

    python bench/loss_memory.py                                  # tiny, 4096 x micro-batch 4, CPU
    python bench/loss_memory.py --model deepseek-1.3b --device cuda --micro-batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child(args) -> None:
    import torch

    from steppack.trainer.model import Decoder, next_token_losses, preset

    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = Decoder(preset(args.model, context=args.context)).to(dev)
    tokens = torch.randint(0, model.cfg.vocab_size, (args.micro_batch, args.context), device=dev)
    labels = torch.roll(tokens, -1, dims=1)
    auto = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with auto:
        loss, _ = (model(tokens, labels=labels) if args.child == "chunked"
                   else next_token_losses(model(tokens), labels))
    loss.backward()
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"variant": args.child, "loss": float(loss) / labels.numel(), "peak_bytes": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    out = {}
    for variant in ("full", "chunked"):
        r = subprocess.run([sys.executable, __file__, "--child", variant, "--model", args.model, "--context",
                            str(args.context), "--micro-batch", str(args.micro_batch), "--device", args.device],
                           capture_output=True, text=True, check=True)
        out[variant] = json.loads(r.stdout.strip().splitlines()[-1])
    full, chunked = out["full"], out["chunked"]
    print(f"{args.model}, {args.micro_batch} x {args.context} tokens, {args.device}: peak "
          f"{full['peak_bytes'] / 2**30:.2f} GiB with the full logits, {chunked['peak_bytes'] / 2**30:.2f} GiB "
          f"chunked ({chunked['peak_bytes'] / full['peak_bytes']:.1%}); loss {full['loss']:.6f} vs "
          f"{chunked['loss']:.6f}")


if __name__ == "__main__":
    main()
