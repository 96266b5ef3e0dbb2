"""steppack.data: the step stream as a torch dataset, for a trainer of your own.

Each rank's rows in order; Hugging Face labels whose loss is the next-token loss over real tokens;
an exact resume from `state_dict()` (by hand, through torchdata's StatefulDataLoader, in a plain loop
and in the Hugging Face Trainer); one-line refusals. The two examples in examples/ are what the
loop and Trainer tests run, so the documented code is the tested code.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from steppack.data import IGNORE, StepDataset
from steppack.shards.errors import ConfigError
from tests.shardgen import make_output
from tests.test_trainer_support import tokens_of, write_rows

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"steppack_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("loader") / "out")
    make_output(path, num_steps=6, rows_per_step=4, seq_len=16, vocab_size=64)
    return path


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """One step of two hand-made rows: documents [3 3 3][5 5] then 3 padding tokens; [9 8 7 6 5][4 3 2]."""
    path = str(tmp_path_factory.mktemp("loader") / "padded")
    write_rows(path, [[([3, 3, 3, 5, 5], [3, 2]), ([9, 8, 7, 6, 5, 4, 3, 2], [5, 3])]], seq_len=8)
    return path


def _tokens_per_step(ds: StepDataset, steps: int) -> list[np.ndarray]:
    """The input_ids of `steps` steps, each (rows of this rank, seq_len)."""
    items = iter(ds)
    return [np.concatenate([np.atleast_2d(next(items)["input_ids"].numpy()) for _ in range(ds.items_per_step)])
            for _ in range(steps)]


def test_each_rank_yields_its_rows_of_every_step_in_order(out):
    for world, micro in ((1, 4), (1, None), (2, 1), (2, None), (4, 1)):
        ranks = [_tokens_per_step(StepDataset(out, rank=r, world_size=world, micro_batch=micro), 6)
                 for r in range(world)]
        for s in range(6):
            np.testing.assert_array_equal(np.concatenate([rank[s] for rank in ranks]), tokens_of(out, s))


def test_items_are_micro_batches_or_rows_of_int64_tensors(out):
    assert {k: (tuple(v.shape), v.dtype) for k, v in next(iter(StepDataset(out, micro_batch=2))).items()} == {
        "input_ids": ((2, 16), torch.int64), "labels": ((2, 16), torch.int64)}
    row = next(iter(StepDataset(out, attention="doc")))
    assert {k: tuple(v.shape) for k, v in row.items()} == {
        "input_ids": (16,), "labels": (16,), "position_ids": (16,), "document_ids": (16,)}


def test_labels_positions_and_document_ids_of_a_padded_row(padded):
    # Row 0: A = [3 3 3], B = [5 5], 3 padding tokens (0).
    causal = next(iter(StepDataset(padded)))
    assert causal["input_ids"].tolist() == [3, 3, 3, 5, 5, 0, 0, 0]
    assert causal["labels"].tolist() == [IGNORE, 3, 3, 5, 5, IGNORE, IGNORE, IGNORE]
    doc = next(iter(StepDataset(padded, attention="doc")))
    assert doc["labels"].tolist() == [IGNORE, 3, 3, IGNORE, 5, IGNORE, IGNORE, IGNORE]
    assert doc["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert doc["document_ids"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("attention", ["causal", "doc"])
def test_hf_llama_loss_of_a_batch_is_the_next_token_loss_over_real_tokens(padded, attention):
    """model(**batch).loss equals the mean cross-entropy of every next token of the real tokens, padding
    left out: of each whole row ('causal'), or of each document run through the model alone ('doc', so
    HF's packed-sequence attention from position_ids is checked too)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8,
                                         use_cache=False)).eval()
    (batch,) = StepDataset(padded, micro_batch=2, attention=attention)
    rows = [([3, 3, 3, 5, 5], [3, 2]), ([9, 8, 7, 6, 5, 4, 3, 2], [5, 3])]
    pieces = [t for t, _ in rows] if attention == "causal" else [
        t[sum(lens[:i]):sum(lens[:i + 1])] for t, lens in rows for i in range(len(lens))]
    nll, n = torch.tensor(0.0), 0
    with torch.no_grad():
        for p in pieces:
            x = torch.tensor([p])
            nll += torch.nn.functional.cross_entropy(model(input_ids=x).logits[0, :-1], x[0, 1:], reduction="sum")
            n += len(p) - 1
        loss = model(**batch).loss
    assert n == int((batch["labels"] != IGNORE).sum())
    torch.testing.assert_close(loss, nll / n)


@pytest.mark.parametrize("micro", [1, None])
def test_state_dict_resumes_inside_a_step_exactly(out, micro):
    whole = [b["input_ids"] for b in StepDataset(out, micro_batch=micro, start_step=1)]
    ds = StepDataset(out, micro_batch=micro, start_step=1)
    items = iter(ds)
    first = [next(items)["input_ids"] for _ in range(3)]  # inside step 1 (4 rows)
    state = json.loads(json.dumps(ds.state_dict()))
    assert (state["step"], state["row"]) == (1, 3)
    resumed = StepDataset(out, micro_batch=micro)
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in resumed]
    assert len(first) + len(rest) == len(whole)
    for a, b in zip(first + rest, whole):
        torch.testing.assert_close(a, b)
    assert resumed.state_dict()["step"] == 6


def test_torchdata_stateful_dataloader_resumes_it_exactly(out):
    from torchdata.stateful_dataloader import StatefulDataLoader

    whole = [b["input_ids"] for b in StatefulDataLoader(StepDataset(out), batch_size=2)]
    loader = StatefulDataLoader(StepDataset(out), batch_size=2)
    batches = iter(loader)
    first = [next(batches)["input_ids"] for _ in range(5)]
    state = loader.state_dict()
    again = StatefulDataLoader(StepDataset(out), batch_size=2)
    again.load_state_dict(state)
    rest = [b["input_ids"] for b in again]
    assert len(first) + len(rest) == len(whole) == 12
    for a, b in zip(first + rest, whole):
        torch.testing.assert_close(a, b)


def test_a_state_from_another_output_is_refused_in_one_line(tmp_path, out):
    other = str(tmp_path / "other")
    make_output(other, num_steps=6, rows_per_step=4, seq_len=16, vocab_size=64, seed=1)
    with pytest.raises(ConfigError, match=r"^this state was saved reading another output [^\n]*$"):
        StepDataset(out).load_state_dict(StepDataset(other).state_dict())
    with pytest.raises(ConfigError, match="not a StepDataset state"):
        StepDataset(out).load_state_dict({"step": 3})


def test_a_state_inside_a_step_loads_only_on_its_world_size_and_one_between_steps_on_any(out):
    ds = StepDataset(out, rank=0, world_size=2, micro_batch=1)
    items = iter(ds)
    next(items)
    inside = ds.state_dict()
    for _ in range(ds.items_per_step - 1):
        next(items)
    between = ds.state_dict()
    assert (between["step"], between["row"]) == (1, 0)
    with pytest.raises(ConfigError, match=r"inside step 0 .* world size 2, this run has 1"):
        StepDataset(out, micro_batch=1).load_state_dict(inside)
    one = StepDataset(out, micro_batch=1)
    one.load_state_dict(between)
    np.testing.assert_array_equal(_tokens_per_step(one, 1)[0], tokens_of(out, 1))


def test_rank_and_world_size_come_from_torch_distributed_when_the_dataset_is_iterated(out, monkeypatch):
    ds = StepDataset(out, micro_batch=1)  # made before the process group, as a script may do
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    np.testing.assert_array_equal(_tokens_per_step(ds, 1)[0], tokens_of(out, 0)[2:])


def test_dataloader_worker_processes_are_refused_rather_than_duplicating_the_data(out):
    with pytest.raises(ConfigError, match="use num_workers=0"):
        next(iter(DataLoader(StepDataset(out, micro_batch=1), batch_size=None, num_workers=1)))


def test_a_micro_batch_that_does_not_divide_a_ranks_rows_is_refused_naming_the_numbers(out):
    with pytest.raises(ConfigError, match=r"rows_per_step 4 is not divisible by world_size 2 x micro_batch 4"):
        StepDataset(out, rank=0, world_size=2, micro_batch=4)


def test_a_plain_torch_loop_resumed_from_its_checkpoint_trains_like_an_uninterrupted_one(out, tmp_path):
    loop = _example("torch_loop")
    seen_whole, seen_parts = [], []
    whole = loop.train(out, steps=5, micro_batch=2, ckpt=None, exit_after=None,
                       on_batch=lambda b: seen_whole.append(b["input_ids"]))
    ckpt = str(tmp_path / "loop.pt")
    part = loop.train(out, steps=5, micro_batch=2, ckpt=ckpt, exit_after=2,
                      on_batch=lambda b: seen_parts.append(b["input_ids"]))
    part += loop.train(out, steps=5, micro_batch=2, ckpt=ckpt, exit_after=None,
                       on_batch=lambda b: seen_parts.append(b["input_ids"]))
    assert len(seen_parts) == len(seen_whole) == 10  # 5 steps x 2 micro-batches
    for a, b in zip(seen_parts, seen_whole):
        torch.testing.assert_close(a, b)
    assert part == whole  # bit for bit: same batches, same model and optimizer state


def test_hf_trainer_resumed_from_a_checkpoint_sees_the_batches_of_an_uninterrupted_run(tmp_path):
    """4 Trainer steps (2 rows x 2 accumulated per step = the output's 4 rows per step) without a stop,
    then 2, a checkpoint, and a resume from it: the resumed run's batches are the uninterrupted run's
    steps 3-4, read without opening the files of steps 0-1 (they are deleted before the resume)."""
    hf = _example("hf_trainer")
    data = str(tmp_path / "out")
    make_output(data, num_steps=6, rows_per_step=4, seq_len=16, vocab_size=64)

    def run(output_dir, *, stop_after=None, resume=False):
        trainer = hf.build_trainer(data, str(tmp_path / output_dir), max_steps=4, per_device=2, save_steps=2,
                                   callbacks=[hf.StopAfter(stop_after)] if stop_after else [])
        seen = []
        trainer.model.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append((kwargs["input_ids"].clone(), kwargs["labels"].clone())),
            with_kwargs=True)
        trainer.train(resume_from_checkpoint=resume or None)
        return seen, [h["loss"] for h in trainer.state.log_history if "loss" in h]

    whole, whole_losses = run("whole")
    assert len(whole) == 8  # 4 steps x 2 micro-batches
    np.testing.assert_array_equal(torch.cat([whole[2][0], whole[3][0]]).numpy(), tokens_of(data, 1))
    first, _ = run("parts", stop_after=2)
    assert sorted(os.listdir(tmp_path / "parts")) == ["checkpoint-2"]
    for s in (0, 1):
        os.remove(os.path.join(data, "steps", f"step-{s:08d}.arrow"))
    rest, losses = run("parts", resume=True)
    assert len(first) == len(rest) == 4
    for (ids, labels), (ids_w, labels_w) in zip(first + rest, whole):
        torch.testing.assert_close(ids, ids_w)
        torch.testing.assert_close(labels, labels_w)
    assert losses == whole_losses


def test_hf_trainer_callback_refuses_what_would_make_the_resume_wrong(out, tmp_path):
    from transformers import Trainer, TrainingArguments

    from steppack.data import hf_trainer_callback

    hf = _example("hf_trainer")
    trainer = hf.build_trainer(out, str(tmp_path / "a"), max_steps=1, per_device=1, save_steps=1)
    trainer.args.gradient_accumulation_steps = 2
    with pytest.raises(ConfigError, match=r"takes 1 x 2 x 1 = 2 rows .* a steppack step has 4: make the product 4"):
        trainer.train()
    with pytest.raises(ConfigError, match=r"pass TrainingArguments\(ignore_data_skip=True\)"):
        Trainer(model=trainer.model, train_dataset=StepDataset(out), callbacks=[hf_trainer_callback()],
                args=TrainingArguments(output_dir=str(tmp_path / "b"), max_steps=1, report_to="none", use_cpu=True))
    trainer = Trainer(model=trainer.model, train_dataset=StepDataset(out, micro_batch=2),
                      callbacks=[hf_trainer_callback()],
                      args=TrainingArguments(output_dir=str(tmp_path / "c"), max_steps=1, report_to="none",
                                             use_cpu=True, ignore_data_skip=True))
    with pytest.raises(ConfigError, match=r"create it with micro_batch=None"):
        trainer.train()
    trainer = hf.build_trainer(out, str(tmp_path / "d"), max_steps=1, per_device=2, save_steps=1, attention="doc")
    trainer.model.config.use_cache = True
    with pytest.raises(ConfigError, match=r"set use_cache=False in the model's config"):
        trainer.train()
