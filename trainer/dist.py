"""Process group and device: one process launched directly, or one per rank under torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables; without them the run is
a world of one and no process group is created, unless one is asked for (`group=True`: FSDP2
shards over a device mesh, which needs a group even of one rank; a single process then gets an
in-memory store). The backend follows the device: gloo on CPU, NCCL on CUDA (one GPU per local rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from steppack.shards.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group: bool = False
    """A process group exists (world size > 1, or asked for)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return self.group


def setup(device: str = "auto", *, group: bool = False) -> Dist:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    group = group or world > 1
    if group and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        # Without torchrun's rendezvous variables (a world of one launched directly): a store in memory.
        store = {} if "MASTER_ADDR" in os.environ else {"store": dist.HashStore(), "rank": 0, "world_size": 1}
        dist.init_process_group(backend, device_id=dev if device == "cuda" else None, **store)
    return Dist(rank, world, local, dev, group)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.initialized:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if d.initialized:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.initialized and dist.is_initialized():
        dist.destroy_process_group()
