"""--parallel fsdp (FSDP2 over gloo, real torchrun processes): the losses of DDP, sharded DCP
checkpoints that resume on another world size, refusals across kinds, export from shards.

Two torchrun launches for the whole module (each costs ~10 s of start-up on 2 cores): DDP on 2
ranks, and FSDP2 on 2 ranks with activation checkpointing and a checkpoint every 2 steps. The
resume tests copy that run's step-2 checkpoint into a directory of their own: what a run stopped
at step 2 leaves behind, without a third launch.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from steppack.cli import main
from steppack.trainer import checkpoint
from tests.shardgen import make_output
from tests.test_trainer_support import read_metrics, torchrun, train_args

STEPS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    out = str(tmp / "out")
    make_output(out, num_steps=STEPS, rows_per_step=8, seq_len=32, vocab_size=500)
    done = {"out": out, "tmp": tmp}
    for kind, extra in (("ddp", []), ("fsdp", ["--parallel", "fsdp", "--activation-checkpointing",
                                               "--ckpt-every", "2", "--keep-checkpoints", "0"])):
        ckpt, metrics = str(tmp / f"ckpt-{kind}"), str(tmp / f"{kind}.jsonl")
        proc = torchrun(2, train_args(out, tmp, "--ckpt-dir", ckpt, "--metrics", metrics, "--micro-batch", "2",
                                      "--steps", str(STEPS), *extra))
        assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
        done[kind] = (ckpt, read_metrics(metrics))
    return done


def _copy(runs, kind: str, step: int, into) -> str:
    """A --ckpt-dir holding only `kind`'s checkpoint of `step`, as a run stopped there leaves it."""
    src = checkpoint.path_for(runs[kind][0], step, sharded=kind == "fsdp")
    os.makedirs(into)
    (shutil.copytree if kind == "fsdp" else shutil.copy)(src, os.path.join(into, os.path.basename(src)))
    return str(into)


def test_fsdp_on_two_gloo_ranks_gives_the_losses_and_grad_norms_of_ddp(runs):
    (_, ddp), (_, fsdp) = runs["ddp"], runs["fsdp"]
    assert [r["step"] for r in fsdp] == list(range(STEPS)) and {r["world_size"] for r in fsdp} == {2}
    assert [r["data_digest"] for r in fsdp] == [r["data_digest"] for r in ddp]
    # The same gradient up to float summation order: reduce-scatter vs all-reduce, sharded norm.
    for a, b in zip(fsdp, ddp):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
    assert fsdp[-1]["loss"] != fsdp[0]["loss"]  # it trained


def test_every_rank_writes_its_shards_into_one_directory_per_checkpoint(runs):
    ckpt = runs["fsdp"][0]
    assert [os.path.basename(p) for _, p in checkpoint.list_checkpoints(ckpt)] == \
        ["ckpt-00000002.dcp", "ckpt-00000004.dcp"]  # --keep-checkpoints 0 keeps both; no .tmp left
    assert sorted(os.listdir(os.path.join(ckpt, "ckpt-00000004.dcp"))) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    state = torch.load(os.path.join(ckpt, "ckpt-00000004.dcp", "state.pt"), weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2 and state["config"]["parallel"] == "fsdp"
    assert set(state) >= {"schedule", "rng", "manifest_id", "model_config", "config"}


def test_a_two_rank_sharded_checkpoint_resumes_on_one_rank_to_the_same_losses(runs, tmp_path):
    ckpt = _copy(runs, "fsdp", 2, tmp_path / "ckpt")
    os.makedirs(os.path.join(ckpt, "ckpt-00000004.dcp.tmp"))  # a killed write's leftover: deleted at start
    metrics = str(tmp_path / "resumed.jsonl")
    assert main(train_args(runs["out"], tmp_path, "--parallel", "fsdp", "--ckpt-dir", ckpt, "--metrics", metrics,
                           "--micro-batch", "4", "--steps", str(STEPS), "--resume")) == 0
    resumed, whole = read_metrics(metrics), runs["fsdp"][1]
    assert [r["step"] for r in resumed] == [2, 3] and {r["world_size"] for r in resumed} == {1}
    for a, b in zip(resumed, whole[2:]):
        assert a["data_digest"] == b["data_digest"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
    assert sorted(os.listdir(ckpt)) == ["ckpt-00000002.dcp", "ckpt-00000004.dcp"]
    assert "__1_0.distcp" not in os.listdir(os.path.join(ckpt, "ckpt-00000004.dcp"))  # written by one rank


@pytest.mark.parametrize("written,now", [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_resume_with_the_other_parallel_is_refused_in_one_line_naming_both(runs, tmp_path, capsys, written, now):
    ckpt = _copy(runs, written, 4, tmp_path / "ckpt")
    assert main(train_args(runs["out"], tmp_path, "--parallel", now, "--ckpt-dir", ckpt, "--micro-batch", "4",
                           "--resume")) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert f"was written by a --parallel {written} run, this launch is --parallel {now}" in line, line


def test_a_sharded_checkpoint_keeps_the_resume_checks_and_the_one_run_per_directory_rule(runs, tmp_path, capsys):
    ckpt = _copy(runs, "fsdp", 2, tmp_path / "ckpt")
    argv = train_args(runs["out"], tmp_path, "--parallel", "fsdp", "--ckpt-dir", ckpt, "--micro-batch", "4")
    assert main(argv + ["--resume", "--grad-clip", "0.5"]) == 2
    assert "--grad-clip 1.0 in the checkpoint vs 0.5 now" in capsys.readouterr().err
    assert main(argv) == 2
    assert "already holds checkpoints (newest ckpt-00000002.dcp): pass --resume" in capsys.readouterr().err
    assert os.listdir(ckpt) == ["ckpt-00000002.dcp"]


def test_export_reads_a_sharded_checkpoint_whole_and_gives_the_weights_ddp_trained(runs, tmp_path):
    from safetensors.torch import load_file

    for kind in ("ddp", "fsdp"):
        src = checkpoint.path_for(runs[kind][0], STEPS, sharded=kind == "fsdp")
        assert main(["export", "--ckpt", src, "--out", str(tmp_path / kind)]) == 0
    a, b = (load_file(tmp_path / kind / "model.safetensors") for kind in ("ddp", "fsdp"))
    assert a.keys() == b.keys() and len(a) == 2 * 9 + 3  # tiny: 2 blocks of 9 tensors, embed, norm, lm_head
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
