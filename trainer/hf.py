"""Hugging Face Llama checkpoints in and out: `steppack train --init-from DIR` and `steppack export`.

DeepSeek LLM and DeepSeek-Coder-v1.5 are `LlamaForCausalLM`: the same decoder as `model.py`
(RMSNorm, SwiGLU, rotate-half RoPE, untied embeddings, no biases), parameter for parameter:

    model.embed_tokens                      embed
    model.layers.i.input_layernorm          layers.i.attn_norm
    model.layers.i.self_attn.{q,k,v,o}_proj layers.i.attn.{q,k,v,o}
    model.layers.i.post_attention_layernorm layers.i.ffn_norm
    model.layers.i.mlp.{gate,up,down}_proj  layers.i.ffn.{gate,up,down}
    model.norm                              norm
    lm_head                                 lm_head

A directory holds `config.json` and `model.safetensors` or sharded `model-*.safetensors` with
`model.safetensors.index.json`. The architecture in config.json must be the preset's (widths,
layers, heads, vocabulary, RoPE theta, norm eps; no grouped-query attention, no RoPE scaling,
no biases); anything else is refused naming the values, as is a tensor of another shape.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from steppack.shards.errors import ConfigError, FormatError

if TYPE_CHECKING:  # torch is imported where it is used: `steppack export --help` needs none
    import torch

    from .model import ModelConfig

_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          **{f"self_attn.{p}_proj": f"attn.{p}" for p in "qkvo"},
          **{f"mlp.{p}_proj": f"ffn.{p}" for p in ("gate", "up", "down")}}
_TOP = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}
_LAYER_HF, _TOP_HF = {v: k for k, v in _LAYER.items()}, {v: k for k, v in _TOP.items()}


def to_steppack(name: str) -> str | None:
    """A Llama parameter's name in steppack's model (None: not a parameter steppack has)."""
    base, _, leaf = name.rpartition(".")
    if base in _TOP:
        return f"{_TOP[base]}.{leaf}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", base)
    if m and m.group(2) in _LAYER:
        return f"layers.{m.group(1)}.{_LAYER[m.group(2)]}.{leaf}"
    return None


def to_hf(name: str) -> str:
    """The inverse of `to_steppack`."""
    base, _, leaf = name.rpartition(".")
    if base in _TOP_HF:
        return f"{_TOP_HF[base]}.{leaf}"
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", base)
    return f"model.layers.{m.group(1)}.{_LAYER_HF[m.group(2)]}.{leaf}"


def hf_config(cfg: ModelConfig) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ffn, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_heads, "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context,
            "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
            "torch_dtype": "float32"}


def check_config(path: str, hf: dict, cfg: ModelConfig) -> None:
    """Refuse a config.json whose architecture is not `cfg`'s, naming every difference."""
    want = hf_config(cfg)
    rope = hf.get("rope_parameters") or {}  # transformers 5 writes rope_theta / rope_type here
    hf = {**hf, "rope_theta": hf.get("rope_theta", rope.get("rope_theta"))}
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
            "rms_norm_eps", "rope_theta")
    diff = [f"{k} {hf.get(k)} there vs {want[k]} here" for k in keys if hf.get(k) != want[k]]
    if rope.get("rope_type", "default") != "default":
        diff.append(f"rope_type {rope['rope_type']} (steppack's RoPE is unscaled)")
    head_dim = hf.get("head_dim") or cfg.d_model // cfg.n_heads
    if head_dim != cfg.d_model // cfg.n_heads:
        diff.append(f"head_dim {head_dim} there vs {cfg.d_model // cfg.n_heads} here")
    kv = hf.get("num_key_value_heads", hf.get("num_attention_heads"))
    if kv != hf.get("num_attention_heads"):
        diff.append(f"num_key_value_heads {kv} (grouped-query attention, which steppack's model has not)")
    for k in ("rope_scaling", "attention_bias", "mlp_bias"):
        if hf.get(k):
            diff.append(f"{k} {hf[k]} (steppack's model has none)")
    if hf.get("tie_word_embeddings"):
        diff.append("tie_word_embeddings true (steppack's embeddings are untied)")
    if hf.get("hidden_act", "silu") != "silu":
        diff.append(f"hidden_act {hf['hidden_act']}")
    if diff:
        raise ConfigError(f"{path} is not this model: {'; '.join(diff)}; pick the preset that matches "
                          "(--model, --vocab-size) or another checkpoint")


def _tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise ConfigError(f"{path} holds neither model.safetensors nor model.safetensors.index.json "
                          "(a Hugging Face model directory saved with safetensors)")
    out = {}
    for name in files:
        try:
            out.update(load_file(os.path.join(path, name)))
        except (OSError, ValueError, RuntimeError) as exc:
            raise FormatError(f"{os.path.join(path, name)} cannot be read as safetensors ({exc})") from exc
    return out


def init_from(model: torch.nn.Module, path: str, cfg: ModelConfig) -> None:
    """Load a Hugging Face Llama directory's weights into `model` (built from `cfg`)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--init-from {path}: no readable config.json ({exc})") from exc
    check_config(path, hf, cfg)
    own = model.state_dict()
    state, unknown = {}, []
    for name, t in _tensors(path).items():
        mine = to_steppack(name)
        if mine is None:
            if not name.endswith("rotary_emb.inv_freq"):  # a buffer older exports carry
                unknown.append(name)
            continue
        if tuple(t.shape) != tuple(own[mine].shape):
            raise ConfigError(f"--init-from {path}: {name} has shape {tuple(t.shape)}, steppack's {mine} "
                              f"{tuple(own[mine].shape)}")
        state[mine] = t.to(own[mine].dtype)
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise ConfigError(f"--init-from {path}: " + "; ".join(
            x for x in (f"tensors steppack has no place for: {', '.join(unknown[:5])}" if unknown else "",
                        f"missing: {', '.join(missing[:5])}" if missing else "") if x))
    model.load_state_dict(state)


def export(state: dict[str, torch.Tensor], cfg: ModelConfig, out: str) -> None:
    """Write a model's state as a Hugging Face Llama directory (config.json, model.safetensors)."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=1)
    save_file({to_hf(k): v.detach().contiguous().float() for k, v in state.items()},
              os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def add_arguments(parser) -> None:
    parser.add_argument("--ckpt", required=True, help="a steppack checkpoint: ckpt-00000123.pt, or the sharded "
                        "directory ckpt-00000123.dcp of a --parallel fsdp run (read whole, in one process)")
    parser.add_argument("--out", required=True, help="directory to write config.json and model.safetensors to")


def main(args) -> int:
    from . import checkpoint, dcp
    from .model import ModelConfig

    if checkpoint.is_sharded(args.ckpt):
        model, ckpt = dcp.full_model_state(args.ckpt)
    else:
        ckpt = checkpoint.load(args.ckpt)
        model = ckpt["model"]
    cfg = ModelConfig(**ckpt["model_config"])
    export(model, cfg, args.out)
    print(f"exported {args.ckpt} (step {ckpt['step']}) to {args.out}: LlamaForCausalLM, "
          f"{cfg.num_params() / 1e6:.1f}M parameters (transformers' AutoModelForCausalLM loads it)")
    return 0
