"""How the model is spread over the ranks: `--parallel ddp` (replicated) or `fsdp` (FSDP2, sharded).

    ddp   every rank holds the whole model, its gradients and the AdamW moments; DDP all-reduces
          (averages) the gradients after the last micro-batch of a step.
    fsdp  `fully_shard` on the embedding, on every transformer block, then on the root (final
          norm and output layer): each rank holds 1/world_size of every parameter, gradient and
          AdamW moment as DTensor shards; a unit's parameters are all-gathered for its forward and
          its backward, its gradients reduce-scattered (averaged) after the last micro-batch.

Both average over the ranks, so the loss scaling of train.py (x world_size) gives both the same
gradient. The chunked loss head (loss.py) runs inside the root's forward, where FSDP2 has
swapped the output layer's weight for its all-gathered (plain tensor) version; its gradient then
reaches the sharded parameter through the root's reduce-scatter like any other. (The output layer
cannot be a unit of its own: the loss reads its weight without calling it, which would hand the
custom autograd function a sharded DTensor.)

Mixed precision under fsdp: on CUDA with a bf16 run, parameters are all-gathered in bf16 and
gradients reduced in fp32 (`MixedPrecisionPolicy`); the sharded parameters and AdamW state stay
fp32. Elsewhere everything is fp32 (bf16 autocast on CPU works as under ddp).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import dist


class Parallel:
    """The model as the training loop drives it: `module` runs the forward, `micro_batch(last)`
    defers the gradient reduction to the step's last micro-batch, `clip` clips the global norm."""

    def __init__(self, model: nn.Module, kind: str, d: dist.Dist, *, bf16: bool):
        self.model, self.kind = model, kind
        self._ddp = None
        if kind == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = init_device_mesh(d.device.type, (d.world_size,))
            mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if bf16 and d.device.type == "cuda" else MixedPrecisionPolicy())
            for unit in (model.embed, *model.layers):
                fully_shard(unit, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)
        elif d.initialized:
            self._ddp = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        self.module = self._ddp or model

    def micro_batch(self, last: bool):
        """Around one micro-batch's forward and backward: reduce gradients over the ranks only on the last."""
        if self.kind == "fsdp":
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return self._ddp.no_sync() if self._ddp is not None and not last else contextlib.nullcontext()

    def clip(self, max_norm: float) -> torch.Tensor:
        """Clip the gradient norm over the whole model (all shards) to `max_norm`; the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return norm.full_tensor() if self.kind == "fsdp" else norm  # fsdp: a replicated DTensor
