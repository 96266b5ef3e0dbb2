"""Recipes: DeepSeekMath's settings by name, for `steppack prepare --recipe` and `steppack train --recipe`.

DeepSeekMath (§2.2, after DeepSeek LLM §2.3): 4096-token context; 4M tokens per global step for
1.3B runs (1,024 rows of 4,096), 10M for 7B; AdamW (0.9, 0.95, weight decay 0.1), gradient clip
1.0, 2,000 warm-up steps to a peak of 5.3e-4 (1.3B) or 4.2e-4 (7B), then the multi-step decay at
80% and 90% of the steps (trainer/optim.py applies it to every run). For 10M tokens: 2,560 rows
(10.49M tokens), divisible by every power of two up to 512 ranks, rather than 2,441 (the nearest
to 10M, a prime). A recipe fills in what the job file and the flags leave out; both win over it.
The manifest's config and every checkpoint record the recipe's name.
"""

from __future__ import annotations

from steppack.shards.errors import ConfigError

_TRAIN = {"max_lr": 5.3e-4, "warmup_steps": 2000, "grad_clip": 1.0, "weight_decay": 0.1}
RECIPES = {
    "deepseekmath-1.3b": {"prepare": {"seq_len": 4096, "rows_per_step": 1024},
                          "train": {**_TRAIN, "model": "deepseek-1.3b"}},
    "deepseekmath-7b": {"prepare": {"seq_len": 4096, "rows_per_step": 2560},
                        "train": {**_TRAIN, "model": "deepseek-7b", "max_lr": 4.2e-4}},
}


def recipe(name: str, part: str) -> dict:
    """The settings recipe `name` gives `part` ("prepare" or "train")."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name][part])
