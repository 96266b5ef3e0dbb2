"""AdamW and the multi-step learning-rate schedule of DeepSeekMath §2.2 (DeepSeek LLM §2.3).

AdamW with beta1 0.9, beta2 0.95, weight decay 0.1 on matrices and embeddings (not on norms or
biases, the 1-D parameters), gradient clipping at 1.0. The learning rate of step s (0-based, the
s-th optimizer update) is

    max_lr * min(1, (s + 1) / warmup)  x  1      while s < 0.8 * steps
                                       x  0.316  while 0.8 * steps <= s < 0.9 * steps
                                       x  0.1    from 0.9 * steps on

i.e. linear warm-up to the peak, then the peak until 80% of the training tokens, 31.6% of it
until 90%, 10% of it to the end. The schedule is a pure function of the step, so a checkpoint needs
only the step and the three numbers, which resume checks are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BETAS = (0.9, 0.95)
EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class Schedule:
    max_lr: float
    warmup_steps: int
    total_steps: int

    def factor(self, step: int) -> float:
        """Multiplier of max_lr at 0-based step `step` (exact integer comparisons, no float drift)."""
        warm = 1.0 if step >= self.warmup_steps else (step + 1) / self.warmup_steps
        if 10 * step >= 9 * self.total_steps:
            stage = 0.1
        elif 10 * step >= 8 * self.total_steps:
            stage = 0.316
        else:
            stage = 1.0
        return warm * stage

    def lr(self, step: int) -> float:
        return self.max_lr * self.factor(step)

    def to_dict(self) -> dict:
        return {"max_lr": self.max_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on >= 2-D parameters (linear weights, embeddings); none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, schedule: Schedule, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=schedule.lr(0), betas=BETAS, eps=EPS)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
