"""steppack.data: the step stream as a torch dataset, for a trainer of your own.

    from torch.utils.data import DataLoader
    from steppack.data import StepDataset

    ds = StepDataset("OUT", micro_batch=4)            # this rank's rows of steps 0, 1, ... in 4-row batches
    for batch in DataLoader(ds, batch_size=None):    # {"input_ids", "labels"}: (4, seq_len) int64 each
        loss = model(**batch).loss                   # a Hugging Face causal LM, or your own model
        ...
    torch.save({"model": ..., "data": ds.state_dict()}, path)   # resume: ds.load_state_dict(ckpt["data"])

It is `steppack train`'s reader (`steppack.trainer.data.StepStream`: step s = shard s, checked against
the manifest, read ahead in a background thread) and its targets (`steppack.trainer.targets`):

- Rows. Rank r of w yields rows [r*n, (r+1)*n) of every step, n = rows_per_step / w
  (`steppack.shards.slicing`, the rows `steppack train` and `verify` use), in order, step after
  step. rank and world_size default to torch.distributed's when it is initialized (when the dataset
  is first iterated), else 0 and 1.
- Items. `micro_batch=m`: one (m, seq_len) micro-batch per item, n/m per step (DataLoader with
  `batch_size=None`). `micro_batch=None`: one row per item, (seq_len,) tensors, for a loader that
  batches them itself (DataLoader's `batch_size`, HF Trainer's `per_device_train_batch_size`).
- Keys, int64 tensors with Hugging Face's names and conventions, so `model(**batch)` works:

      tokens        A0 A1 A2 B0 B1 B2 B3 P      two documents A, B and one padding token P
      input_ids     A0 A1 A2 B0 B1 B2 B3 P
      labels        -  A1 A2 B0 B1 B2 B3 -      attention='causal' (-: -100, nothing to predict)
      labels        -  A1 A2 -  B1 B2 B3 -      attention='doc': B0 is not predicted from A
      position_ids  0  1  2  0  1  2  3  0      attention='doc' only
      document_ids  0  0  0  1  1  1  1  2      attention='doc' only (padding is a block of its own)

  `labels[i]` is the token at position i, the target of the prediction made at position i-1: a
  Hugging Face causal LM shifts them itself (logits[:, :-1] against labels[:, 1:]); with a model of
  your own, do the same. These are exactly the labels `steppack train` trains on, one position later.
  With attention='doc', `position_ids` restart at 0 per document: Hugging Face models take that as
  packed sequences and keep attention inside each document. With sdpa and eager (transformers 5.x)
  through their packed-sequence mask, built only when no attention_mask is given and no KV cache is
  used: build the model with use_cache=False (`tests/test_loader.py` checks a Llama against each
  document run alone). With flash-attention through its varlen kernel, which transformers uses for
  a batch of one row only: flatten a micro-batch to (1, m * seq_len) (labels too; each row starts
  at position 0 with label -100, so no row predicts into the next) — read from transformers'
  source, not run here. `document_ids` is for a mask of your own (flex attention's
  `document_ids[q] == document_ids[kv]`). There is no `attention_mask`: padding only ever ends a
  row, so causal attention never shows it to a real token, and labels never ask for it.
- Resume. `state_dict()` is the position after the last item yielded: {"manifest" (the output's
  identity, as `steppack train` checkpoints it), "step", "row" (rows of this rank's slice of that
  step already yielded), "world_size"}; `load_state_dict(state)` makes the next iteration start
  there, reading nothing before it. A state from another output is refused; one saved between
  steps loads on any world size, one saved inside a step only on the world size that saved it.
  torchdata's `StatefulDataLoader` calls both itself. With the Hugging Face Trainer add
  `hf_trainer_callback()` (see there: the Trainer alone would re-read every step before the
  checkpoint to skip it).
- Workers. Use `num_workers=0` (the default): the stream already reads ahead in its own thread
  (pyarrow and numpy release the GIL), so worker processes add nothing, and each would yield every
  item. A DataLoader worker is refused in one line rather than duplicating the data.
- Ownership. A yielded batch is its own memory: the stream recycles its read buffers, and loaders
  (accelerate's, the Trainer's `get_batch_samples`) keep batches after asking for the next.
"""

from __future__ import annotations

try:
    import torch
except ImportError as e:  # the base install (prepare, shards) has no torch
    raise ImportError("steppack.data needs torch: pip install 'steppack[train]'") from e
from torch.utils.data import IterableDataset, get_worker_info

from steppack.shards.errors import ConfigError
from steppack.shards.manifest import Manifest, read_manifest
from steppack.shards.slicing import rank_micro_batches, rank_rows
from steppack.trainer.config import ATTENTION
from steppack.trainer.data import MicroBatch, StepStream, manifest_identity, total_steps
from steppack.trainer.model import IGNORE
from steppack.trainer.targets import make_targets

__all__ = ["IGNORE", "StepDataset", "hf_trainer_callback"]


class StepDataset(IterableDataset):
    """This rank's rows of steps `start_step` .. `steps - 1` of a prepared output, as dicts of tensors.

    out: the output directory or URI (gs://, s3://) holding manifest.json and steps/.
    micro_batch: rows per item, (m, seq_len) tensors; None: one row per item, (seq_len,) tensors.
    rank, world_size: this process's place among the data-parallel ranks; both or neither
        (default: torch.distributed's when the dataset is iterated and it is initialized, else 0 of 1).
    start_step: the first step yielded (a state loaded later overrides it).
    steps: the run's length in steps, counted from step 0 as `steppack train --steps` counts them
        (default: every step shard, times `epochs`).
    epochs: passes over the step shards; more than 1 lets `steps` exceed them (step s reads shard
        s mod num_shards, as in `steppack train --epochs`).
    attention: 'causal' (labels across document boundaries, as DeepSeek trained) or 'doc' (no label
        across documents; adds position_ids and document_ids).
    verify: check each step file against the manifest (size, sha256, step index) before using it.
    prefetch: steps read ahead in a background thread (0: read when asked).
    """

    def __init__(self, out: str, *, micro_batch: int | None = None, rank: int | None = None,
                 world_size: int | None = None, start_step: int = 0, steps: int | None = None, epochs: int = 1,
                 attention: str = "causal", verify: bool = True, prefetch: int = 1):
        if attention not in ATTENTION:
            raise ConfigError(f"attention={attention!r}: use one of {', '.join(ATTENTION)}")
        if (rank is None) != (world_size is None):
            raise ConfigError(f"rank={rank}, world_size={world_size}: give both, or neither to take "
                              "torch.distributed's")
        if micro_batch is not None and micro_batch <= 0:
            raise ConfigError(f"micro_batch must be >= 1 (or None for one row per item), got {micro_batch}")
        self.out = out
        self.manifest: Manifest = read_manifest(out)
        self.identity = manifest_identity(self.manifest)
        self.micro_batch, self.attention, self.verify, self.prefetch = micro_batch, attention, verify, prefetch
        self.stop = total_steps(self.manifest, steps, epochs)
        if not 0 <= start_step <= self.stop:
            raise ConfigError(f"start_step {start_step} is outside the run's steps 0..{self.stop - 1}")
        self._rank, self._world_size = rank, world_size
        if rank is not None:
            self._rows()  # a layout that does not divide fails here, naming the numbers
        self._step, self._row = start_step, 0  # the position: the next item is row `_row` of step `_step`

    @property
    def items_per_step(self) -> int:
        """Items this rank yields per step: its micro-batches, or its rows when micro_batch is None (the
        gradient accumulation of a loop that steps the optimizer once per steppack step)."""
        n = len(self._rows())
        return n // self.micro_batch if self.micro_batch else n

    def _layout(self) -> tuple[int, int]:
        if self._rank is not None:
            return self._rank, self._world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _rows(self) -> range:
        """This rank's rows of a step; a micro-batch that does not divide them is refused."""
        rank, world = self._layout()
        if self.micro_batch is not None:
            micro = rank_micro_batches(self.manifest.rows_per_step, rank, world, self.micro_batch)
            return range(micro[0].start, micro[-1].stop)
        return rank_rows(self.manifest.rows_per_step, rank, world)

    def _items(self, mb: MicroBatch) -> dict[str, torch.Tensor]:
        tokens, labels, positions, doc_ids = make_targets(mb, doc=self.attention == "doc", device=torch.device("cpu"))
        # Hugging Face's labels are the next-token labels one position later (the model shifts them back).
        hf_labels = torch.full_like(labels, IGNORE)
        hf_labels[:, 1:] = labels[:, :-1]
        # A copy: the stream reuses its buffer for a later step while the consumer may still hold this one.
        item = {"input_ids": tokens.clone(), "labels": hf_labels}
        if positions is not None:
            item["position_ids"], item["document_ids"] = positions, doc_ids
        return item

    def __iter__(self):
        if get_worker_info() is not None:
            raise ConfigError("StepDataset in a DataLoader worker process: use num_workers=0 (the stream reads "
                              "ahead in its own thread; every worker would yield every item)")
        rank, world = self._layout()
        rows = self._rows()
        n = len(rows)
        if self._step >= self.stop:
            return
        stream = StepStream(self.out, self.manifest, rank=rank, world_size=world,
                            micro_batch=self.micro_batch or n, start=self._step, stop=self.stop,
                            doc_lens=self.attention == "doc", prefetch=self.prefetch, verify=self.verify)
        try:
            for batch, _ in stream:
                for mb in batch.micro:
                    first = mb.rows.start - rows.start  # offset of the micro-batch in this rank's slice
                    if first + len(mb.rows) <= self._row:
                        continue  # yielded before the state this iteration resumed from
                    item = self._items(mb)
                    if self.micro_batch is not None:
                        self._advance(batch.step, first + len(mb.rows), n)
                        yield item
                        continue
                    for i in range(self._row - first, len(mb.rows)):
                        self._advance(batch.step, first + i + 1, n)
                        yield {k: v[i] for k, v in item.items()}
        finally:
            stream.close()

    def _advance(self, step: int, row: int, n: int) -> None:
        """Record that rows [0, row) of this rank's slice of `step` have been yielded."""
        self._step, self._row = (step + 1, 0) if row == n else (step, row)

    def state_dict(self) -> dict:
        """The position after the last item yielded (plain numbers and strings: JSON and torch.save
        with weights_only=True both take it)."""
        return {"manifest": self.identity, "step": self._step, "row": self._row, "world_size": self._layout()[1]}

    def load_state_dict(self, state: dict) -> None:
        """Start the next iteration where `state` (from `state_dict`) says; refuses another output's state,
        and a position inside a step saved by another world size or micro-batch."""
        keys = ("manifest", "step", "row", "world_size")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise ConfigError(f"not a StepDataset state: expected a dict with {', '.join(keys)}, got "
                              f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if state["manifest"] != self.identity:
            raise ConfigError(f"this state was saved reading another output (manifest identity "
                              f"{state['manifest'][:12]}…, {self.out} has {self.identity[:12]}…): resume on the "
                              "output it was saved from")
        step, row = int(state["step"]), int(state["row"])
        if not 0 <= step <= self.stop:
            raise ConfigError(f"the state is at step {step}, outside this run's steps 0..{self.stop - 1}; "
                              f"pass steps= of at least {step}")
        if row:
            world, n = self._layout()[1], len(self._rows())
            if state["world_size"] != world:
                raise ConfigError(f"the state is inside step {step} (row {row} of a rank's slice) at world size "
                                  f"{state['world_size']}, this run has {world}: resume on {state['world_size']} "
                                  "ranks, or from a state saved between steps")
            if row >= n or (self.micro_batch is not None and row % self.micro_batch):
                raise ConfigError(f"the state is at row {row} of step {step}, which is no micro-batch boundary of "
                                  f"{n} rows in micro-batches of {self.micro_batch}: resume with the micro_batch "
                                  "that saved it, or from a state saved between steps")
        self._step, self._row = step, row


_CALLBACK = None


def hf_trainer_callback():
    """A `transformers.TrainerCallback` that resumes a `StepDataset` exactly, reading nothing twice.

    The Hugging Face Trainer resumes an IterableDataset by iterating it again from the start and
    dropping the batches trained before the checkpoint: exact, but every earlier step is read (and
    hashed) again. With this callback (and `TrainingArguments(ignore_data_skip=True)`, which stops
    that) a checkpoint records the steppack position in trainer_state.json, and a resumed run loads it
    into the dataset before the first batch. The Trainer's global step g is then step
    `start_step + g` of the output: each Trainer step must be one steppack step,
    per_device_train_batch_size x gradient_accumulation_steps x processes = rows_per_step, with
    `micro_batch=None`. Several processes: give the dataset rank=0, world_size=1 (the whole step), as
    accelerate splits each batch across processes itself. attention='doc' needs a model config with
    use_cache=False (with a KV cache, Hugging Face models attend across documents), and with flash
    attention per_device_train_batch_size=1. Each mismatch is refused in one line.
    """
    global _CALLBACK
    if _CALLBACK is None:
        _CALLBACK = _make_callback_class()
    return _CALLBACK()


def _make_callback_class():
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class StepDatasetCallback(TrainerCallback, ExportableState):
        # The Trainer saves state() in each checkpoint's trainer_state.json ("stateful_callbacks") and
        # hands the loaded file back as `state` on resume.
        def __init__(self, position: dict | None = None):
            self.position = position
            self._dataset: StepDataset | None = None
            self._origin = (0, 0)  # (dataset step, Trainer global step) when this train() began

        def state(self) -> dict:
            return {"args": {}, "attributes": {"position": self.position}}

        def on_init_end(self, args, state, control, **kwargs):
            if not args.ignore_data_skip:
                raise ConfigError("hf_trainer_callback() resumes the StepDataset itself: pass "
                                  "TrainingArguments(ignore_data_skip=True), or the Trainer would also skip the "
                                  "trained batches by reading them again")

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            ds = train_dataloader
            for _ in range(4):  # DataLoaderShard / DataLoaderDispatcher -> IterableDatasetShard -> ours
                if isinstance(ds, StepDataset):
                    break
                ds = getattr(ds, "dataset", None)
            else:
                raise ConfigError("hf_trainer_callback() found no StepDataset as the Trainer's train_dataset")
            if ds.micro_batch is not None:
                raise ConfigError(f"StepDataset(micro_batch={ds.micro_batch}) yields batches, and the Trainer "
                                  "batches items again: create it with micro_batch=None and set "
                                  "per_device_train_batch_size")
            world = ds._layout()[1]
            if args.world_size > 1 and world != 1:
                raise ConfigError(f"the StepDataset reads 1/{world} of each step, and accelerate splits batches "
                                  f"across the Trainer's {args.world_size} processes itself: create it with "
                                  "rank=0, world_size=1")
            config = getattr(kwargs.get("model"), "config", None)
            if ds.attention == "doc" and getattr(config, "use_cache", False):
                raise ConfigError("attention='doc' with a model whose config has use_cache=True: Hugging Face "
                                  "models then attend across documents (a KV cache turns off their packed-sequence "
                                  "mask); set use_cache=False in the model's config")
            impl = str(getattr(config, "_attn_implementation", "") or "")
            if ds.attention == "doc" and "flash" in impl and args.per_device_train_batch_size > 1:
                raise ConfigError(f"attention='doc' with {impl}: transformers keeps flash attention inside "
                                  "documents for a batch of one row only; set per_device_train_batch_size=1 "
                                  "(or use sdpa)")
            m = ds.manifest
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            if per_step != m.rows_per_step:
                raise ConfigError(
                    f"a Trainer step takes {args.per_device_train_batch_size} x {args.gradient_accumulation_steps} x "
                    f"{args.world_size} = {per_step} rows (per_device_train_batch_size x gradient_accumulation_steps "
                    f"x processes), a steppack step has {m.rows_per_step}: make the product {m.rows_per_step}")
            if state.global_step:
                saved = (state.stateful_callbacks or {}).get(type(self).__name__) or {}
                position = saved.get("attributes", {}).get("position") if isinstance(saved, dict) else None
                if position is None:
                    raise ConfigError(f"the checkpoint at step {state.global_step} holds no StepDataset position "
                                      "(saved without hf_trainer_callback()); resume it without the callback and "
                                      "with ignore_data_skip=False (slow: every earlier step is read again)")
                ds.load_state_dict(position)
            elif ds._row:
                raise ConfigError(f"the StepDataset is inside step {ds._step} (row {ds._row}); a Trainer step "
                                  "must start at a step boundary")
            self._dataset, self._origin = ds, (ds._step, state.global_step)
            self.position = ds.state_dict()

        def on_step_end(self, args, state, control, **kwargs):
            # The position of the rows trained so far (the loader may have read ahead of them): what the
            # checkpoint saved right after this event must hold.
            step = self._origin[0] + state.global_step - self._origin[1]
            self.position = {**self._dataset.state_dict(), "step": step, "row": 0}

    return StepDatasetCallback
