"""The next-token loss without the full logits: the output layer and cross-entropy, chunk by chunk.

A micro-batch of 4 rows x 4096 tokens over DeepSeek's 102,400-word vocabulary has logits of
16,384 x 102,400: 6.7 GB in fp32, and as much again for their softmax and gradient. Here the
positions go through the output layer `CHUNK_BYTES` of fp32 logits at a time; each chunk's loss
and its gradients (w.r.t. the hidden states and the output weight) are computed in the forward
pass, and the logits dropped. Backward only scales the stored gradients by the loss's gradient
(a scalar: the loss is a sum), so nothing is recomputed. Peak: one chunk's logits and softmax,
the (positions x d_model) hidden gradient and an fp32 (vocab x d_model) weight gradient, which
the weight's own .grad holds anyway.

Numerics: logits in the dtype of the matmul (bf16 under autocast, else fp32), softmax and loss in
fp32, as `F.cross_entropy(logits.float())` over the whole micro-batch.
"""

from __future__ import annotations

import torch

IGNORE = -100
CHUNK_BYTES = 256 << 20


def chunk_positions(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype):
        n = hidden.shape[0]
        step = chunk_positions(weight.shape[0])
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        per_position = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for a in range(0, n, step):
            h, lab = hidden[a:a + step].to(compute_dtype), labels[a:a + step]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            keep = lab != IGNORE
            safe = torch.where(keep, lab, 0)
            per_position[a:a + step] = torch.where(keep, lse - logits.gather(1, safe[:, None])[:, 0], 0.0)
            # d(sum of losses)/d(logits) = softmax - one-hot, on the positions with a label.
            g = torch.exp(logits - lse[:, None])
            g[torch.arange(len(lab), device=g.device), safe] -= 1.0
            g *= keep[:, None]
            g = g.to(compute_dtype)
            grad_hidden[a:a + step] = (g @ w).to(hidden.dtype)
            grad_weight += (g.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(per_position)
        return per_position.sum(), per_position

    @staticmethod
    def backward(ctx, grad_total, grad_per_position):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total.to(grad_hidden.dtype), (grad_weight * grad_total).to(ctx.weight_dtype), None, None


def head_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the next-token losses over positions with a label, each position's loss detached,
    0 where the label is IGNORE): hidden (N, d) after the final norm, weight (vocab, d), labels (N,)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    with torch.autocast(device, enabled=False):
        return _HeadLoss.apply(hidden, weight, labels, dtype)
