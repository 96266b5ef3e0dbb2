"""Sharded checkpoints of `--parallel fsdp` runs, written with `torch.distributed.checkpoint` (DCP).

    ckpt-00000123.dcp/
      .metadata          DCP's index: every tensor's global shape and which file holds which piece
      __0_0.distcp ...   one file per rank: that rank's shards of the model and the AdamW moments
      state.pt           everything else a .pt checkpoint holds: step, schedule, RNG, manifest
                         identity, model config, launch config, world size (rank 0's, weights_only)

Every rank writes its own shards into `ckpt-00000123.dcp.tmp/`; `dcp.save` returns on rank 0
only after every rank's write is reported, then rank 0 adds `state.pt` and renames the directory
into place, so a job killed mid-write leaves the previous checkpoint as the newest complete one
(the leftover `.tmp` directory is deleted at the next start, `checkpoint.prepare_dir`). The
directory must be one that every rank sees (a shared filesystem) when ranks span machines.

Loading reads, on each rank, the pieces its own shards need: a checkpoint written by 2 ranks
resumes on 1 or 4. Model and optimizer go through `get_state_dict` / `set_state_dict`
(parameter names, not optimizer indices). Without a process group (`steppack export`) every piece
is read into full tensors.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from steppack.shards.errors import FormatError

from . import checkpoint, dist

STATE = "state.pt"
STATE_KEYS = tuple(k for k in checkpoint.KEYS if k not in ("model", "optimizer"))


def save(ckpt_dir: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
         d: dist.Dist, keep: int = 0) -> str:
    """Every rank: write this rank's shards and (rank 0) `state` as the checkpoint of `step`; keep
    the newest `keep` checkpoints (0: all). Returns the checkpoint's path."""
    import torch.distributed.checkpoint as torch_dcp  # here, not at the top: a ddp run never imports it (~0.5 s)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoint.path_for(ckpt_dir, step, sharded=True)
    tmp = final + ".tmp"
    model_state, optim_state = get_state_dict(model, optimizer)
    torch_dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
    if d.is_main:
        with open(os.path.join(tmp, STATE), "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        checkpoint.prune(ckpt_dir, keep)
    dist.barrier(d)  # no rank runs ahead (or exits) before the checkpoint exists
    return final


def load_state(path: str) -> dict:
    """The checkpoint's `state.pt` (every key of a .pt checkpoint but the model and optimizer)."""
    if not os.path.isfile(os.path.join(path, STATE)) or not os.path.isfile(os.path.join(path, ".metadata")):
        raise FormatError(f"{path} is not a sharded steppack checkpoint (it lacks {STATE} or DCP's .metadata); "
                          "remove it from --ckpt-dir")
    return checkpoint.load(os.path.join(path, STATE), keys=STATE_KEYS)


def load_into(path: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank: fill the (sharded) model and optimizer from the checkpoint at `path`."""
    import torch.distributed.checkpoint as torch_dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    torch_dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_model_state(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(the model's full state dict, the checkpoint's state) in one process, no process group."""
    import torch.distributed.checkpoint as torch_dcp

    from .model import Decoder, ModelConfig

    state = load_state(path)
    with torch.device("meta"):
        shapes = Decoder(ModelConfig(**state["model_config"])).state_dict()
    model = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    with warnings.catch_warnings():  # "...assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        torch_dcp.load({"model": model}, checkpoint_id=path, no_dist=True)
    return model, state
