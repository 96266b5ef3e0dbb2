"""The training loop: step s reads shard s, every rank its slice, one AdamW update per step.

The loss of a step is the mean next-token cross-entropy over every label token of the global
step (all ranks, all micro-batches). Each micro-batch contributes its loss *sum* divided by the
step's global label count (one small all-reduce before the forward passes), times world_size
because DDP and FSDP2 (`steppack.trainer.parallel`) both average gradients over ranks. So the
gradient is the same whatever the world size, micro-batch and --parallel: changing the first two
between restarts changes only float summation order.

Per step, rank 0 appends a JSON line to --metrics and prints a progress line; at the end, a summary.
When the manifest lists more than one source, the line also carries each source's mean loss and label
count (`steppack.trainer.source_loss`), carried by the same two all-reduces.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict

import torch

from steppack.shards.errors import ConfigError, InternalError
from steppack.shards.manifest import read_manifest

from . import checkpoint, dcp, dist, hf
from .config import TrainConfig
from .data import StepStream, check_model_fits_data, manifest_identity, total_steps
from .model import IGNORE, Decoder, preset
from .optim import Schedule, make_optimizer, set_lr
from .parallel import Parallel
from .preempt import StopRequest
from .source_loss import label_sources, source_counts, source_fields, source_sums
from .targets import make_targets, row_digest


def _bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")


def _autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if _bf16(cfg, device) else contextlib.nullcontext()


def run(cfg: TrainConfig) -> dict:
    """Train as `cfg` says; returns the summary (also printed by rank 0)."""
    d = dist.setup(cfg.device, group=cfg.parallel == "fsdp")
    try:
        with StopRequest() as stop_request:
            summary = _run(cfg, d, stop_request)
        # Every rank has finished its last collective before any rank tears the group down: a rank
        # that destroys it while its peer still reads the last reduction can abort that peer.
        dist.barrier(d)
        return summary
    finally:
        dist.teardown(d)


def _run(cfg: TrainConfig, d: dist.Dist, stop_request: StopRequest) -> dict:
    m = read_manifest(cfg.data)
    mcfg = preset(cfg.model, vocab_size=cfg.vocab_size, context=cfg.context, layers=cfg.layers)
    check_model_fits_data(m, vocab_size=mcfg.vocab_size, context=mcfg.context, model=cfg.model)
    total = total_steps(m, cfg.steps, cfg.epochs)
    schedule = Schedule(max_lr=cfg.max_lr, warmup_steps=cfg.warmup_steps, total_steps=total)
    manifest_id = manifest_identity(m)
    say = print if d.is_main and not cfg.quiet else (lambda *a, **k: None)

    if cfg.ckpt_dir:
        checkpoint.prepare_dir(cfg.ckpt_dir, resume=cfg.resume, clean=d.is_main)
    if cfg.metrics and d.is_main:
        try:
            open(cfg.metrics, "a").close()  # appended to as steps end: fail now, not after the first step
        except OSError as exc:
            raise ConfigError(f"--metrics {cfg.metrics} cannot be written ({exc.strerror or exc})") from exc
    path = checkpoint.latest(cfg.ckpt_dir) if cfg.resume else None
    if cfg.resume and path is None:
        say(f"no checkpoint in {cfg.ckpt_dir}: starting at step 0")
    start = checkpoint.step_of(path) if path else 0
    stop = total if cfg.exit_after is None else min(total, start + cfg.exit_after)
    # Made first: a micro-batch that does not divide the rows fails here with its message, before any
    # collective; and the first step is read while the model is built and the checkpoint loaded.
    stream = StepStream(cfg.data, m, rank=d.rank, world_size=d.world_size, micro_batch=cfg.micro_batch,
                        start=start, stop=stop, doc_lens=cfg.attention == "doc", sources=len(m.sources) > 1,
                        prefetch=cfg.prefetch, verify=not cfg.no_verify_steps)
    stream.start_prefetch()
    try:
        return _train(cfg, d, m, mcfg, schedule, manifest_id, stream, path, say, stop_request)
    finally:
        stream.close()


def _train(cfg, d, m, mcfg, schedule, manifest_id, stream, path, say, stop_request) -> dict:
    start, stop, total = stream.start, stream.stop, schedule.total_steps
    torch.manual_seed(cfg.seed)
    model = Decoder(mcfg, checkpoint_blocks=cfg.activation_checkpointing).to(d.device)
    ckpt = None
    if path:
        checkpoint.check_parallel(path, cfg.parallel)
        ckpt = dcp.load_state(path) if checkpoint.is_sharded(path) else checkpoint.load(path)
        checkpoint.check_resumable(ckpt, path, manifest_id=manifest_id, model=asdict(mcfg),
                                   schedule=schedule.to_dict(), config=cfg.to_dict())
        if ckpt["step"] != start:
            raise InternalError(f"{path} holds step {ckpt['step']}, its name says {start}")
        if "model" in ckpt:
            model.load_state_dict(ckpt["model"])
    elif cfg.init_from:
        hf.init_from(model, cfg.init_from, mcfg)
        say(f"initialised from {cfg.init_from}")
    par = Parallel(model, cfg.parallel, d, bf16=_bf16(cfg, d.device))  # every rank starts from the same weights
    optimizer = make_optimizer(model, schedule, cfg.weight_decay)  # after sharding: over the shards
    if ckpt:
        if "model" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        else:
            dcp.load_into(path, model, optimizer)
        checkpoint.set_rng_state(ckpt["rng"])
        say(f"resumed from {path}: step {start} of {total} (written by world size {ckpt['world_size']}, "
            f"now {d.world_size})")
    doc = cfg.attention == "doc"
    names = [src.name for src in m.sources]
    n_src = len(names) if stream.sources else 0  # one source: nothing per source to log
    n_micro = len(stream.micro_rows)
    tokens_per_step = m.rows_per_step * m.seq_len
    if start < stop:
        say(f"training {cfg.model} ({mcfg.num_params() / 1e6:.1f}M parameters, {cfg.attention} attention) on "
            f"{cfg.data}: steps {start}..{stop - 1} of {total}, {m.rows_per_step} rows x {m.seq_len} tokens per "
            f"step, world size {d.world_size} ({cfg.parallel}), {n_micro} x {cfg.micro_batch}-row micro-batches "
            f"per rank, device {d.device}")

    metrics = open(cfg.metrics, "a") if cfg.metrics and d.is_main else None
    tty = sys.stdout.isatty()
    losses, waits, step_times = [], [], []
    t_run = last_end = time.perf_counter()
    ckpt_path, stopping = None, False
    try:
        for batch, wait_ms in stream:
            s = batch.step
            lr = schedule.lr(s)
            set_lr(optimizer, lr)
            targets = [make_targets(mb, doc=doc, device=d.device) for mb in batch.micro]
            srcs = [label_sources(mb, lab) for mb, (_, lab, _, _) in zip(batch.micro, targets)] if n_src else []
            # Global label count (the loss denominator), the step's data fingerprint, whether any rank
            # was asked to stop (preempt.py) and the label count of each source (mixtures): one collective.
            counts = torch.stack([
                sum((lab != IGNORE).sum() for _, lab, _, _ in targets),
                sum(row_digest(mb, tok) for mb, (tok, _, _, _) in zip(batch.micro, targets)),
                torch.tensor(int(stop_request.requested), dtype=torch.int64, device=d.device),
            ])
            if n_src:
                counts = torch.cat([counts, torch.stack([source_counts(src, n_src) for src in srcs]).sum(0)])
            dist.all_reduce_sum(counts, d)
            n_labels, digest, stopping = max(int(counts[0]), 1), int(counts[1]), int(counts[2]) > 0
            # [loss sum, loss sum of each source]: one float64 vector, one collective after the step.
            loss_sum = torch.zeros(1 + n_src, dtype=torch.float64, device=d.device)
            for j, (tok, lab, pos, ids) in enumerate(targets):
                with par.micro_batch(last=j == n_micro - 1), _autocast(cfg, d.device):
                    loss, per_position = par.module(tok, pos, ids, labels=lab)
                (loss * (d.world_size / n_labels)).backward()
                loss_sum[0] += loss.detach().double()
                if n_src:
                    loss_sum[1:] += source_sums(per_position, srcs[j], n_src)
            grad_norm = par.clip(cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dist.all_reduce_sum(loss_sum, d)
            step_loss = float(loss_sum[0]) / n_labels
            done = s + 1
            if cfg.ckpt_dir and (done == stop or stopping or (cfg.ckpt_every and done % cfg.ckpt_every == 0)):
                ckpt_path = _save(cfg, d, model, optimizer, schedule, mcfg, manifest_id, done)
            end = time.perf_counter()
            step_ms = (end - last_end) * 1e3
            last_end = end
            losses.append(step_loss)
            waits.append(wait_ms)
            step_times.append(step_ms)
            rec = {"step": s, "loss": round(step_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6),
                   "tokens_per_s": round(tokens_per_step / (step_ms / 1e3), 1), "data_wait_ms": round(wait_ms, 3),
                   "read_ms": round(batch.read_ms, 3), "step_ms": round(step_ms, 3), "label_tokens": n_labels,
                   "shard": batch.shard, "data_digest": digest, "world_size": d.world_size,
                   "verified": not cfg.no_verify_steps}
            if d.device.type == "cuda":
                rec["cuda_max_memory_gib"] = round(torch.cuda.max_memory_allocated(d.device) / 2**30, 3)
            if n_src:
                rec.update(source_fields(names, loss_sum[1:].tolist(), counts[3:].tolist()))
            if metrics:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            if d.is_main and not cfg.quiet and (done % cfg.log_every == 0 or done == stop):
                line = (f"step {done:>6}/{total}  loss {step_loss:.4f}  lr {lr:.3e}  grad_norm {float(grad_norm):.3f}  "
                        f"{rec['tokens_per_s']:>10,.0f} tok/s  data wait {wait_ms:7.2f} ms")
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            if stopping:
                break
    finally:
        if metrics:
            metrics.close()
        if tty and d.is_main and not cfg.quiet and losses:
            print()
    wall = time.perf_counter() - t_run
    summary = {
        "steps_run": len(losses), "first_step": start, "next_step": start + len(losses), "total_steps": total,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "losses": losses, "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens_per_step * len(losses) / wall, 1) if losses else None,
        "data_wait_ms": round(sum(waits), 3),
        "data_wait_share": round(sum(waits) / sum(step_times), 6) if step_times else None,
        "data_wait_share_after_first": (round(sum(waits[1:]) / sum(step_times[1:]), 6)
                                        if len(step_times) > 1 else None),
        "checkpoint": ckpt_path, "world_size": d.world_size,
        "stopped_by": (stop_request.signal or "a signal to another rank") if stopping else None,
    }
    if n_src:  # mirrors last_loss; every step's figures are in the metrics file
        summary["last_source_loss"] = rec["source_loss"] if losses else None
    if d.is_main:
        if losses:
            print(f"done: steps {start}..{start + len(losses) - 1} of {total} in {wall:.1f} s, loss "
                  f"{losses[0]:.4f} -> {losses[-1]:.4f}, {summary['tokens_per_s']:,.0f} tok/s, data wait "
                  f"{sum(waits):.1f} ms ({100 * summary['data_wait_share']:.3f}% of step time)"
                  + (f", checkpoint {ckpt_path}" if ckpt_path else ""))
        else:
            print(f"nothing to do: the checkpoint is at step {start} of {total}")
        if summary["stopped_by"]:
            print(f"stopped by {summary['stopped_by']} after step {start + len(losses)} of {total}: "
                  + (f"checkpoint {ckpt_path}; continue with --resume" if ckpt_path
                     else "no --ckpt-dir, so nothing was saved"))
    return summary


def _save(cfg, d, model, optimizer, schedule, mcfg, manifest_id, step) -> str | None:
    state = {"step": step, "schedule": schedule.to_dict(), "rng": checkpoint.rng_state(), "manifest_id": manifest_id,
             "model_config": asdict(mcfg), "config": cfg.to_dict(), "world_size": d.world_size}
    if cfg.parallel == "fsdp":  # every rank writes its shards
        return dcp.save(cfg.ckpt_dir, step, model, optimizer, state, d, keep=cfg.keep_checkpoints)
    path = None
    if d.is_main:
        state.update(model=model.state_dict(), optimizer=optimizer.state_dict())
        path = checkpoint.save(cfg.ckpt_dir, step, state, keep=cfg.keep_checkpoints)
    dist.barrier(d)  # no rank runs ahead (or exits) before the checkpoint exists
    return path

