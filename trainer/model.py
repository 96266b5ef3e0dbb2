"""A DeepSeek LLM-style decoder: pre-norm RMSNorm, SwiGLU, RoPE (theta 10000), untied embeddings.

    tokens (B, T) -> embed -> [RMSNorm -> attention(RoPE) -> +residual -> RMSNorm -> SwiGLU -> +residual] x L
                  -> RMSNorm -> lm_head (untied) -> logits (B, T, vocab)

Attention (trainer/attention.py) is causal across the whole row (what DeepSeek did), or, with
`doc_ids` (B, T), causal inside each document only: flex_attention block masks on CUDA, one SDPA
call per document elsewhere, neither with a (T, T) mask. Positions then restart at 0 for every
document, so a document packed mid-row is computed exactly as if it stood alone (the test checks
this against running each one separately).

Presets. The 7B is DeepSeek LLM 7B (30 layers, d 4096, 32 heads, FFN 11008). DeepSeekMath's 1.3B
ablation model is "the same framework as DeepSeek LLMs"; its shape is not published, so the preset
takes DeepSeek-Coder 1.3B's (24 layers, d 2048, 16 heads, FFN 5504), the same family: 1.21B
parameters without embeddings; with DeepSeek LLM's untied 102,400-row embeddings it has 1.63B in
all (the Coder's 32K vocabulary made it 1.35B). Both use the DeepSeek vocabulary, 100,015 ids padded
to 102,400. `tiny` is for CPU tests and smoke runs; its
vocabulary is also 102,400 so it trains on DeepSeek-tokenized data (the embedding then dominates
its size: 2 x 102400 x 128 = 26M of its 27M parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from steppack.shards.errors import ConfigError

from .attention import DocMask, attend
from .loss import IGNORE, head_losses  # IGNORE: the label of positions with no next-token loss


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int
    """Rows of the embedding and of the output layer; >= the tokenizer's vocabulary."""
    context: int
    """Tokens per row the model is built for (RoPE table); must equal the data's seq_len."""
    d_model: int
    n_layers: int
    n_heads: int
    ffn: int
    """SwiGLU hidden width."""
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self):
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model {self.d_model} must split into {self.n_heads} heads of even width")

    def num_params(self) -> int:
        d, f, v = self.d_model, self.ffn, self.vocab_size
        return 2 * v * d + self.n_layers * (4 * d * d + 3 * d * f + 2 * d) + d


PRESETS = {
    "tiny": ModelConfig(vocab_size=102_400, context=4096, d_model=128, n_layers=2, n_heads=4, ffn=352),
    "deepseek-1.3b": ModelConfig(vocab_size=102_400, context=4096, d_model=2048, n_layers=24, n_heads=16, ffn=5504),
    "deepseek-7b": ModelConfig(vocab_size=102_400, context=4096, d_model=4096, n_layers=30, n_heads=32, ffn=11008),
}


def preset(name: str, *, vocab_size: int | None = None, context: int | None = None,
           layers: int | None = None) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    over = {k: v for k, v in (("vocab_size", vocab_size), ("context", context), ("n_layers", layers)) if v is not None}
    for k, v in over.items():
        if v < 1:
            raise ConfigError(f"model {k} must be >= 1, got {v}")
    return replace(cfg, **over)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_table(context: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.outer(torch.arange(context, dtype=torch.float64), inv)  # (context, head_dim/2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd); cos/sin (B or 1, 1, T, hd/2). Rotate-half convention (LLaMA / DeepSeek)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, docs: DocMask | None):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o(attend(q, k, v, docs).transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, cos, sin, docs):
        x = x + self.attn(self.attn_norm(x), cos, sin, docs)
        return x + self.ffn(self.ffn_norm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, *, checkpoint_blocks: bool = False):
        """`checkpoint_blocks`: in training, keep each block's input only and recompute the block in
        backward (activation checkpointing; the parameters and state dict are the same)."""
        super().__init__()
        self.cfg = cfg
        self.checkpoint_blocks = checkpoint_blocks
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # untied from embed
        cos, sin = rope_table(cfg.context, cfg.d_model // cfg.n_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        # Output projections of the residual branches scaled by 1/sqrt(2L) (GPT-2 / Megatron).
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, out_std if name.endswith(("o.weight", "down.weight")) else std)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """tokens (B, T) int64 -> logits (B, T, vocab). `positions`/`doc_ids` (B, T) for doc attention.
        With `labels` (B, T): (loss sum, per-position losses) as `next_token_losses` gives them,
        computed chunk by chunk without the full logits (trainer/loss.py)."""
        b, t = tokens.shape
        if t > self.cfg.context:
            raise ConfigError(f"rows of {t} tokens are longer than the model context {self.cfg.context}")
        if positions is None:
            cos, sin = self.rope_cos[:t][None, None], self.rope_sin[:t][None, None]
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        docs = None if doc_ids is None else DocMask(doc_ids)
        x = self.embed(tokens)
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, docs, use_reentrant=False) if recompute else layer(x, cos, sin, docs)
        x = self.norm(x)
        if labels is not None:
            return head_losses(x.reshape(b * t, -1), self.lm_head.weight, labels.reshape(-1))
        return self.lm_head(x)


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of cross-entropy over positions whose label is not IGNORE, in fp32."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                           ignore_index=IGNORE, reduction="sum")


def next_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum, per-position losses): the sum exactly as `next_token_loss_sum` computes it, and
    each position's loss, detached, 0 where the label is IGNORE (a (B*T,) fp32 vector).

    `F.cross_entropy` is `log_softmax` followed by `nll_loss`; done here in two calls, the sum and
    its gradient are bit for bit those of `next_token_loss_sum`, and the per-position losses are
    read from the same log-probabilities, so no second (B*T, vocab) array is made."""
    logp = F.log_softmax(logits.float().view(-1, logits.shape[-1]), dim=-1)
    flat = labels.view(-1)
    total = F.nll_loss(logp, flat, ignore_index=IGNORE, reduction="sum")
    with torch.no_grad():
        per_position = F.nll_loss(logp.detach(), flat, ignore_index=IGNORE, reduction="none")
    return total, per_position
