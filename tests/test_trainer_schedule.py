"""The learning-rate schedule and the optimizer of DeepSeekMath §2.2."""

import pytest
import torch

from steppack.trainer.model import Decoder, preset
from steppack.trainer.optim import BETAS, Schedule, make_optimizer

# steps=100, warmup=10, peak 1.0: linear warm-up, peak to step 79, x0.316 for 80..89, x0.1 from 90.
TABLE_100 = [
    (0, 0.1), (1, 0.2), (4, 0.5), (8, 0.9), (9, 1.0), (10, 1.0), (50, 1.0), (79, 1.0),
    (80, 0.316), (85, 0.316), (89, 0.316), (90, 0.1), (95, 0.1), (99, 0.1),
]


@pytest.mark.parametrize("step,factor", TABLE_100)
def test_schedule_matches_the_table_for_100_steps(step, factor):
    s = Schedule(max_lr=1.0, warmup_steps=10, total_steps=100)
    assert s.lr(step) == pytest.approx(factor, rel=1e-12)


def test_schedule_at_deepseekmath_scale():
    # 1.3B ablation: 5.3e-4 peak, 2000 warm-up steps; a 150B-token run of 4M-token steps ~ 35763 steps.
    s = Schedule(max_lr=5.3e-4, warmup_steps=2000, total_steps=35763)
    assert s.lr(0) == pytest.approx(5.3e-4 / 2000)
    assert s.lr(999) == pytest.approx(5.3e-4 / 2)
    assert s.lr(1999) == pytest.approx(5.3e-4)
    assert s.lr(28610) == pytest.approx(5.3e-4)          # 28610 < 0.8 * 35763 = 28610.4
    assert s.lr(28611) == pytest.approx(5.3e-4 * 0.316)
    assert s.lr(32186) == pytest.approx(5.3e-4 * 0.316)  # 32186 < 0.9 * 35763 = 32186.7
    assert s.lr(32187) == pytest.approx(5.3e-4 * 0.1)
    assert s.lr(35762) == pytest.approx(5.3e-4 * 0.1)


def test_schedule_with_warmup_longer_than_the_run_multiplies_both():
    s = Schedule(max_lr=1.0, warmup_steps=20, total_steps=10)
    assert [round(s.factor(i), 4) for i in range(10)] == [
        0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.316 * 0.45, 0.1 * 0.5]


def test_adamw_decays_matrices_and_embeddings_but_not_norms():
    model = Decoder(preset("tiny", vocab_size=64, context=16))
    opt = make_optimizer(model, Schedule(max_lr=1e-3, warmup_steps=1, total_steps=1), 0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[-2] for p in no_decay["params"]} == {"attn_norm", "ffn_norm", "norm"}
    assert any(names[id(p)] == "embed.weight" for p in decay["params"])
    assert decay["betas"] == BETAS == (0.9, 0.95)
    assert isinstance(opt, torch.optim.AdamW)


@pytest.mark.parametrize("argv,want", [
    ([], {"recipe": None, "model": "tiny", "max_lr": 5.3e-4, "warmup_steps": 2000}),
    (["--recipe", "deepseekmath-1.3b"], {"model": "deepseek-1.3b", "max_lr": 5.3e-4, "warmup_steps": 2000,
                                         "grad_clip": 1.0, "weight_decay": 0.1}),
    (["--recipe", "deepseekmath-7b"], {"model": "deepseek-7b", "max_lr": 4.2e-4, "warmup_steps": 2000}),
    (["--recipe", "deepseekmath-7b", "--max-lr", "1e-4", "--model", "tiny", "--warmup-steps", "0"],
     {"recipe": "deepseekmath-7b", "model": "tiny", "max_lr": 1e-4, "warmup_steps": 0, "grad_clip": 1.0}),
])
def test_a_train_recipe_fills_in_what_the_flags_leave_out(argv, want):
    import argparse

    from steppack.trainer.config import TrainConfig, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = TrainConfig.from_args(p.parse_args(["--data", "OUT", *argv]))
    assert {k: getattr(cfg, k) for k in want} == want
    assert cfg.to_dict()["recipe"] == want.get("recipe", argv[1] if argv else None)  # checkpoints record it
