"""`TrainConfig`: every setting of `steppack train`, one frozen dataclass, the one source of `--help`.

Each field's `help` metadata becomes its flag's help text (`--max-lr` for `max_lr`), so the flags, the
checkpointed config and the docs cannot drift apart. Rules that involve the data (vocabulary,
context, divisibility of rows) are checked against the manifest in `steppack.trainer.data`, not here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from steppack.shards.errors import ConfigError

ATTENTION = ("causal", "doc")
PARALLEL = ("ddp", "fsdp")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: str = _f(None, "Prepared output directory or URI (gs://, s3://) holding manifest.json and steps/.",
                   required=True)
    recipe: str | None = _f(None, "DeepSeekMath's settings by name: deepseekmath-1.3b (deepseek-1.3b, peak LR "
                                  "5.3e-4) or deepseekmath-7b (deepseek-7b, 4.2e-4); both warm up 2000 steps, clip "
                                  "1.0, weight decay 0.1. Flags given win over it.",
                            choices=("deepseekmath-1.3b", "deepseekmath-7b"))
    model: str = _f("tiny", "Model preset: tiny (CPU tests), deepseek-1.3b, deepseek-7b.",
                    choices=("tiny", "deepseek-1.3b", "deepseek-7b"))
    vocab_size: int | None = _f(None, "Override the preset's vocabulary (102400, DeepSeek's 100,015 ids padded). "
                                      "Must be >= the tokenizer's vocab_size in the manifest.")
    context: int | None = _f(None, "Override the preset's context (4096). Must equal the data's seq_len.")
    layers: int | None = _f(None, "Override the preset's number of layers (e.g. to fit a large preset in memory).")
    attention: str = _f("causal", "causal: attend across the whole row, as DeepSeek did; doc: attend only inside "
                                  "each document (from doc_lens) and restart positions per document.",
                        choices=ATTENTION)
    steps: int | None = _f(None, "Length of the whole training in global steps (the schedule follows it). "
                                 "Default: every step shard, times --epochs.")
    epochs: int = _f(1, "Passes over the step shards. More than 1 lets --steps exceed the number of shards: "
                        "step s then reads shard s mod num_shards.")
    micro_batch: int = _f(1, "Rows per forward/backward pass on each rank; gradient accumulation = "
                             "rows_per_step / (world_size * micro_batch).")
    parallel: str = _f("ddp", "ddp: every rank holds the whole model and AdamW state (DistributedDataParallel; "
                              "checkpoints are one file, ckpt-00000123.pt). fsdp: FSDP2, parameters, gradients and "
                              "AdamW state sharded over the ranks (~1/world_size each; bf16 parameters with fp32 "
                              "gradient reduction on cuda when the dtype is bf16); checkpoints are sharded "
                              "torch.distributed.checkpoint directories (ckpt-00000123.dcp/) that resume on any "
                              "world size. A run resumes only with the --parallel it was written with.",
                       choices=PARALLEL)
    activation_checkpointing: bool = _f(False, "Keep only each transformer block's input in the forward pass and "
                                               "recompute the block in backward: activation memory of one block "
                                               "instead of all, for ~1/3 more compute. Same numbers.",
                                        action="store_true")
    max_lr: float = _f(5.3e-4, "Peak learning rate (DeepSeekMath: 5.3e-4 for 1.3B at 4M-token steps, "
                               "4.2e-4 for 7B at 10M).")
    warmup_steps: int = _f(2000, "Linear warm-up to --max-lr over this many steps.")
    weight_decay: float = _f(0.1, "AdamW weight decay, applied to matrices and embeddings, not to norms or biases.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value (0 disables).")
    seed: int = _f(0, "Seed of the model initialisation and of every RNG saved in checkpoints.")
    init_from: str | None = _f(None, "Start from a Hugging Face Llama model directory (config.json + safetensors, "
                                      "e.g. DeepSeek-Coder-v1.5) instead of random weights; --resume's checkpoint wins.")
    ckpt_dir: str | None = _f(None, "Directory for checkpoints (ckpt-00000123.pt, written atomically).")
    ckpt_every: int = _f(0, "Write a checkpoint every K steps (0: only at the end and at --exit-after).")
    keep_checkpoints: int = _f(2, "Keep the newest K checkpoints, delete older ones (0 keeps all).")
    resume: bool = _f(False, "Continue from the newest checkpoint in --ckpt-dir; refuses data whose manifest "
                             "changed, or a changed model, schedule or --steps.", action="store_true")
    exit_after: int | None = _f(None, "Stop cleanly after K steps of this launch, writing a checkpoint "
                                      "(for job time limits; Megatron's --exit-interval).")
    metrics: str | None = _f(None, "Append one JSON line per step here (step, loss, lr, grad_norm, tokens_per_s, "
                                   "data_wait_ms, ...).")
    prefetch: int = _f(1, "Steps read ahead in a background thread (0: read in the training thread).")
    no_verify_steps: bool = _f(False, "Do not check each step file against the manifest (size, sha256, step index, "
                               "seq_len, dtype) before it trains; recorded in the metrics.", action="store_true")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu or cuda.", choices=("auto", "cpu", "cuda"))
    dtype: str = _f("auto", "Autocast dtype: auto (bf16 on cuda, fp32 on cpu), bf16 or fp32.",
                    choices=("auto", "bf16", "fp32"))
    log_every: int = _f(1, "Print the progress line every K steps (rank 0).")
    quiet: bool = _f(False, "No per-step progress lines; only the final summary.", action="store_true")

    def __post_init__(self):
        for name in ("micro_batch", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.warmup_steps < 0 or self.ckpt_every < 0 or self.prefetch < 0 or self.keep_checkpoints < 0:
            raise ConfigError("--warmup-steps, --ckpt-every, --prefetch and --keep-checkpoints must be >= 0")
        if self.max_lr <= 0:
            raise ConfigError(f"--max-lr must be positive, got {self.max_lr}")
        if self.exit_after is not None and self.exit_after < 1:
            raise ConfigError(f"--exit-after must be >= 1, got {self.exit_after}")
        if (self.resume or self.exit_after or self.ckpt_every) and not self.ckpt_dir:
            raise ConfigError("--resume, --exit-after and --ckpt-every need --ckpt-dir DIR")

    @classmethod
    def from_args(cls, args) -> "TrainConfig":
        """The flags given (add_arguments leaves absent ones out of `args`) over the recipe's values."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        if given.get("recipe"):
            from steppack.recipes import recipe

            given = {**recipe(given["recipe"], "train"), **given}
        return cls(**given)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_arguments(parser) -> None:
    """One flag per TrainConfig field, its help from the field's metadata."""
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        flag = "--" + f.name.replace("_", "-")
        # An absent flag stays out of the parsed args (SUPPRESS), so a recipe can tell it from a default.
        if meta.get("action") == "store_true":
            parser.add_argument(flag, help=help_text, default=argparse.SUPPRESS, **meta)
            continue
        typ = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]  # "int | None" -> int
        shown = "" if f.default is None or meta.get("required") else f" (default: {f.default})"
        parser.add_argument(flag, type=typ, default=argparse.SUPPRESS, help=help_text + shown, **meta)
