"""`steppack train`: launched directly for one process, or under torchrun for several.

    steppack train --data OUT --model tiny --steps 50 --micro-batch 4 --ckpt-dir ckpt --metrics m.jsonl
    torchrun --standalone --nproc-per-node 8 -m steppack.cli train --data OUT --model deepseek-1.3b ...

torch is imported only when this subcommand runs.
"""

from __future__ import annotations

from .config import TrainConfig, add_arguments as _add_config_arguments


def add_arguments(parser) -> None:
    parser.epilog = ("Launch with torchrun for data parallelism: torchrun --standalone --nproc-per-node K "
                     "-m steppack.cli train ... (gloo on CPU, NCCL on GPU); --parallel fsdp shards the model "
                     "and optimizer over the K ranks. rows_per_step must divide by world_size x --micro-batch. "
                     "See docs/trainer.md for parallelism and the resume contract.")
    _add_config_arguments(parser)


def main(args) -> int:
    cfg = TrainConfig.from_args(args)
    from .train import run

    run(cfg)
    return 0
