"""A plain PyTorch loop on a steppack output: one optimizer step per steppack step, exact resume.

    python examples/torch_loop.py OUT --steps 8 --ckpt /tmp/loop.pt --exit-after 4   # steps 0..3, checkpoint
    python examples/torch_loop.py OUT --steps 8 --ckpt /tmp/loop.pt                  # resumes: steps 4..7
    torchrun --nproc-per-node 2 examples/torch_loop.py OUT --steps 8                 # data parallel (gloo)

The model is a stand-in (an embedding and an output layer: a bigram model); put yours in its place.
Labels follow Hugging Face's convention (`steppack.data`): the logits at position i are scored
against labels[:, i + 1], so `model(**batch).loss` of a Hugging Face causal LM is the same loss.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from steppack.data import IGNORE, StepDataset


def train(data: str, *, steps: int | None, micro_batch: int, ckpt: str | None, exit_after: int | None,
          lr: float = 1e-2, seed: int = 0, on_batch=None) -> list[float]:
    """Train; returns the loss of each step trained. `on_batch(batch)` sees every micro-batch (tests)."""
    ds = StepDataset(data, micro_batch=micro_batch, steps=steps)  # rank and world size: torch.distributed's
    vocab = ds.manifest.tokenizer.vocab_size
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, 32), torch.nn.Linear(32, vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    if ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ds.load_state_dict(state["data"])  # the next batch is the first one not trained on
    world = dist.get_world_size() if dist.is_initialized() else 1
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    batches = iter(DataLoader(ds, batch_size=None))  # batch_size=None: the items are micro-batches already
    losses = []
    while ds.state_dict()["step"] < ds.stop and (exit_after is None or len(losses) < exit_after):
        micro = [next(batches) for _ in range(ds.items_per_step)]  # this rank's share of one steppack step
        # The loss is the mean over every label of the global step, whatever the world size and micro-batch.
        n_labels = sum((b["labels"] != IGNORE).sum() for b in micro)
        if world > 1:
            dist.all_reduce(n_labels)
        total = torch.zeros(())
        for b in micro:
            if on_batch:
                on_batch(b)
            logits = ddp(b["input_ids"])
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(),
                                   ignore_index=IGNORE, reduction="sum") / n_labels
            (loss * world).backward()  # DDP averages gradients over ranks; the loss is already global
            total += loss.detach()
        opt.step()
        opt.zero_grad()
        if world > 1:
            dist.all_reduce(total)  # this rank's share of the step's loss -> the step's loss
        losses.append(total.item())
        if ckpt and (not dist.is_initialized() or dist.get_rank() == 0):
            # Between steps the position is the same on every rank and loads on any world size.
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "data": ds.state_dict()}, ckpt)
    return losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="a steppack output (manifest.json + steps/)")
    p.add_argument("--steps", type=int, default=None, help="the run's length in steps (default: every step)")
    p.add_argument("--micro-batch", type=int, default=1, help="rows per forward/backward pass")
    p.add_argument("--ckpt", default=None, help="checkpoint file, written after every step; resumed from if present")
    p.add_argument("--exit-after", type=int, default=None, help="stop after this many steps of this launch")
    args = p.parse_args(argv)
    if "WORLD_SIZE" in os.environ:  # under torchrun
        dist.init_process_group("gloo")
    losses = train(args.data, steps=args.steps, micro_batch=args.micro_batch, ckpt=args.ckpt,
                   exit_after=args.exit_after)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"trained {len(losses)} steps, loss " + " ".join(f"{x:.4f}" for x in losses))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
