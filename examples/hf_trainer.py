"""The Hugging Face Trainer on a steppack output: one Trainer step per steppack step, exact resume.

    python examples/hf_trainer.py OUT --output-dir runs/hf --max-steps 8 --stop-after 4   # checkpoint-4, stop
    python examples/hf_trainer.py OUT --output-dir runs/hf --max-steps 8 --resume         # steps 4..7
    torchrun --nproc-per-node 2 examples/hf_trainer.py OUT --output-dir runs/hf --max-steps 8 --per-device 2

Two processes train the same losses as one, and a checkpoint of one resumes on two (checked by hand
on CPU: 4 steps of an 8-row output, per-device 2, losses 4.1644 4.1726 4.1553 4.1465 each way).

What it takes (each point is checked, a mismatch refused in one line: by `hf_trainer_callback()`, the
workers by the dataset):
- `StepDataset(out, rank=0, world_size=1)`: the Trainer batches rows itself (micro_batch=None, one
  row per item) and accelerate splits each batch across processes, so the dataset yields whole steps.
- per_device_train_batch_size x gradient_accumulation_steps x processes = the output's rows_per_step:
  the Trainer's global step g is then steppack step g (shard g).
- `callbacks=[hf_trainer_callback()]` and `ignore_data_skip=True`: a checkpoint records the steppack
  position (in trainer_state.json) and a resumed run starts reading there. Without them the Trainer
  resumes an IterableDataset by reading it again from step 0 and dropping what it had trained on:
  exact, but every earlier step is read and hashed again.
- `use_cache=False` in the model config when training with attention='doc': Hugging Face models keep
  attention inside the documents that `position_ids` mark only when they build no KV cache.
- `dataloader_num_workers=0` (the default): the dataset reads ahead in its own thread.
The model here is a tiny Llama sized from the manifest; any causal LM whose vocabulary covers the
tokenizer's ids and whose context is at least seq_len takes these batches.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from steppack.data import StepDataset, hf_trainer_callback


class StopAfter(TrainerCallback):
    """End train() after `steps` steps of this launch, saving a checkpoint (as a job time limit would)."""

    def __init__(self, steps: int):
        self.steps, self.first = steps, None

    def on_step_end(self, args, state, control, **kwargs):
        self.first = state.global_step - 1 if self.first is None else self.first
        if state.global_step - self.first >= self.steps:
            control.should_save = control.should_training_stop = True


def build_trainer(data: str, output_dir: str, *, max_steps: int, per_device: int, save_steps: int,
                  attention: str = "causal", lr: float = 1e-3, callbacks=()) -> Trainer:
    ds = StepDataset(data, rank=0, world_size=1, attention=attention)
    m = ds.manifest
    processes = int(os.environ.get("WORLD_SIZE", 1))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=m.tokenizer.vocab_size, max_position_embeddings=m.seq_len, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, use_cache=False))
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, learning_rate=lr, seed=0,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=m.rows_per_step // (per_device * processes),
        ignore_data_skip=True,  # the callback resumes the dataset; the Trainer must not skip batches too
        save_strategy="steps", save_steps=save_steps, logging_steps=1, report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())
    return Trainer(model=model, args=args, train_dataset=ds, callbacks=[hf_trainer_callback(), *callbacks])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="a steppack output (manifest.json + steps/)")
    p.add_argument("--output-dir", required=True, help="the Trainer's output directory (checkpoint-N/ folders)")
    p.add_argument("--max-steps", type=int, required=True, help="the run's length in steps")
    p.add_argument("--per-device", type=int, default=1, help="rows per forward/backward pass on each process")
    p.add_argument("--save-steps", type=int, default=4, help="write a checkpoint every this many steps")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of this launch")
    p.add_argument("--attention", choices=("causal", "doc"), default="causal",
                   help="doc: no attention or label across documents (position_ids restart per document)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    args = p.parse_args(argv)
    trainer = build_trainer(args.data, args.output_dir, max_steps=args.max_steps, per_device=args.per_device,
                            save_steps=args.save_steps, attention=args.attention,
                            callbacks=[StopAfter(args.stop_after)] if args.stop_after else [])
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    if trainer.is_world_process_zero():
        print(f"at step {trainer.state.global_step}; losses of steps 1..{len(losses)}: {losses}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
