"""Hugging Face Llama weights in and out, checked against `transformers` itself: a random
LlamaForCausalLM saved with save_pretrained gives the same logits in steppack's model (so RoPE,
RMSNorm, SwiGLU and the layout match the real thing), and an exported checkpoint loads in
transformers with the same logits."""

from __future__ import annotations

import os

import pytest
import torch

from steppack.cli import main
from steppack.shards.errors import ConfigError
from steppack.trainer import checkpoint, hf
from steppack.trainer.model import Decoder, preset
from tests.shardgen import make_output
from tests.test_trainer_support import train_args

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e '.[test]'")

VOCAB, CONTEXT = 512, 32
CFG = preset("tiny", vocab_size=VOCAB, context=CONTEXT, layers=2)


def llama(**overrides):
    c = dict(hf.hf_config(CFG))
    c.update(overrides)
    c.pop("architectures"), c.pop("model_type"), c.pop("torch_dtype")
    torch.manual_seed(3)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**c, attn_implementation="eager")).eval()


def logits_equal(ours: Decoder, theirs, atol=1e-5) -> None:
    tokens = torch.randint(0, VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = ours(tokens), theirs(tokens).logits
    assert torch.allclose(a, b, atol=atol, rtol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("shard", [None, "60KB"])
def test_a_saved_llama_gives_the_same_logits_in_steppacks_model(tmp_path, shard):
    theirs = llama()
    theirs.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert os.path.exists(tmp_path / ("model.safetensors.index.json" if shard else "model.safetensors"))
    ours = Decoder(CFG)
    hf.init_from(ours, str(tmp_path), CFG)
    logits_equal(ours.eval(), theirs)


@pytest.mark.parametrize("change,message", [
    ({"num_hidden_layers": 3}, "num_hidden_layers 3 there vs 2 here"),
    ({"num_key_value_heads": 2}, "grouped-query attention"),
    ({"vocab_size": 640}, "vocab_size 640 there vs 512 here")])
def test_another_architecture_is_refused_naming_the_difference(tmp_path, change, message):
    llama(**change).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=message):
        hf.init_from(Decoder(CFG), str(tmp_path), CFG)


def test_train_starts_from_a_llama_and_export_gives_transformers_the_trained_weights(tmp_path, capsys):
    src = tmp_path / "llama"
    llama().save_pretrained(src)
    out = str(tmp_path / "out")
    make_output(out, num_steps=2, rows_per_step=4, seq_len=CONTEXT, vocab_size=500)
    ckpt = tmp_path / "ckpt"
    argv = train_args(out, tmp_path, "--init-from", str(src), "--ckpt-dir", str(ckpt), "--micro-batch", "4",
                      "--layers", "2")
    assert main([a for a in argv if a != "--quiet"]) == 0
    assert f"initialised from {src}" in capsys.readouterr().out
    exported = tmp_path / "exported"
    assert main(["export", "--ckpt", checkpoint.latest(str(ckpt)), "--out", str(exported)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()
    ours = Decoder(CFG)
    ours.load_state_dict(checkpoint.load(checkpoint.latest(str(ckpt)))["model"])
    logits_equal(ours.eval(), theirs)
