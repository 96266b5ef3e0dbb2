"""Checkpoints and resume: exact loss curves, world-size changes, refusals; a 2-process gloo run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from steppack.shards.errors import ConfigError
from steppack.cli import main
from tests.shardgen import make_output
from tests.test_trainer_support import digests, read_metrics, torchrun, train_args
from steppack.trainer import checkpoint


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("resume") / "out")
    make_output(path, num_steps=6, rows_per_step=8, seq_len=32, vocab_size=500)
    return path


def _train(out, tmp, name, *extra):
    metrics = os.path.join(tmp, f"{name}.jsonl")
    assert main(train_args(out, tmp, "--ckpt-dir", os.path.join(tmp, f"ckpt-{name}"), "--metrics", metrics,
                           "--micro-batch", "2", *extra)) == 0
    return metrics


def test_interrupted_and_resumed_run_has_the_same_losses_as_an_uninterrupted_one(out, tmp_path):
    whole = read_metrics(_train(out, tmp_path, "whole"))
    part = _train(out, tmp_path, "part", "--exit-after", "2")
    assert [r["step"] for r in read_metrics(part)] == [0, 1]
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "ckpt-part")] == [2]
    _train(out, tmp_path, "part", "--resume", "--exit-after", "3")  # steps 2..4, a second interruption
    _train(out, tmp_path, "part", "--resume")                       # step 5 to the end
    resumed = read_metrics(part)
    assert [r["step"] for r in resumed] == list(range(6))
    # CPU, same process layout: bit for bit, not approximately.
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in whole]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in whole]
    a = torch.load(checkpoint.latest(tmp_path / "ckpt-whole"), weights_only=False)
    b = torch.load(checkpoint.latest(tmp_path / "ckpt-part"), weights_only=False)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_after_the_last_step_does_nothing(out, tmp_path, capsys):
    _train(out, tmp_path, "done", "--steps", "2")
    capsys.readouterr()
    _train(out, tmp_path, "done", "--steps", "2", "--resume")
    assert "nothing to do" in capsys.readouterr().out


def test_checkpoints_are_kept_every_k_steps_and_pruned(out, tmp_path):
    _train(out, tmp_path, "every", "--ckpt-every", "2", "--keep-checkpoints", "2", "--steps", "5")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "ckpt-every")] == [4, 5]
    assert not [n for n in os.listdir(tmp_path / "ckpt-every") if ".tmp" in n]
    ckpt = torch.load(checkpoint.latest(tmp_path / "ckpt-every"), weights_only=False)
    assert set(ckpt) >= {"model", "optimizer", "schedule", "step", "rng", "manifest_id", "model_config", "config"}
    assert ckpt["schedule"] == {"max_lr": 3e-3, "warmup_steps": 2, "total_steps": 5}


def test_resume_refuses_data_whose_manifest_changed(out, tmp_path, capsys):
    _train(out, tmp_path, "data", "--exit-after", "1")
    other = str(tmp_path / "other")
    make_output(other, num_steps=6, rows_per_step=8, seq_len=32, vocab_size=500, seed=7)
    assert main(train_args(other, tmp_path, "--ckpt-dir", str(tmp_path / "ckpt-data"), "--micro-batch", "2",
                           "--resume")) == 2
    assert "manifest identity" in capsys.readouterr().err


def test_resume_refuses_a_changed_schedule_naming_both_values(out, tmp_path):
    _train(out, tmp_path, "sched", "--exit-after", "1")
    with pytest.raises(ConfigError, match="total_steps 6 in the checkpoint vs 4 now"):
        from steppack.trainer.config import TrainConfig
        from steppack.trainer.train import run
        run(TrainConfig(data=out, vocab_size=512, context=32, warmup_steps=2, max_lr=3e-3, quiet=True,
                        micro_batch=2, ckpt_dir=str(tmp_path / "ckpt-sched"), resume=True, steps=4))


def test_two_gloo_ranks_train_checkpoint_and_resume_on_one_rank_reading_the_same_rows(out, tmp_path):
    one = read_metrics(_train(out, tmp_path, "one", "--steps", "4"))
    ckpt = str(tmp_path / "ckpt-two")
    metrics = str(tmp_path / "two.jsonl")
    proc = torchrun(2, train_args(out, tmp_path, "--ckpt-dir", ckpt, "--metrics", metrics, "--micro-batch", "2",
                                  "--steps", "4", "--exit-after", "2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(ckpt)] == [2]
    assert torch.load(checkpoint.latest(ckpt), weights_only=False)["world_size"] == 2
    # Continue on 1 rank with another micro-batch: the same rows make up every step.
    assert main(train_args(out, tmp_path, "--ckpt-dir", ckpt, "--metrics", metrics, "--micro-batch", "4",
                           "--steps", "4", "--resume")) == 0
    mixed = read_metrics(metrics)
    assert [r["world_size"] for r in mixed] == [2, 2, 1, 1]
    assert digests(mixed) == digests(one)
    # Same gradients up to float summation order (2 ranks sum in another order than 1).
    for a, b in zip(mixed, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_a_fresh_run_into_a_directory_holding_checkpoints_is_refused_and_deletes_nothing(out, tmp_path, capsys):
    _train(out, tmp_path, "theirs", "--exit-after", "2")
    ckpt = tmp_path / "ckpt-theirs"
    before = sorted(os.listdir(ckpt))
    # Without --resume: before, this run's pruning deleted the other run's checkpoints and a later
    # --resume continued them.
    assert main(train_args(out, tmp_path, "--ckpt-dir", str(ckpt), "--micro-batch", "2",
                           "--keep-checkpoints", "1")) == 2
    assert "already holds checkpoints (newest ckpt-00000002.pt): pass --resume" in capsys.readouterr().err
    assert sorted(os.listdir(ckpt)) == before


@pytest.mark.parametrize("flag,then,now", [("--attention", "causal", "doc"), ("--grad-clip", "1.0", "0.5"),
                                           ("--dtype", "fp32", "bf16"), ("--weight-decay", "0.1", "0.0")])
def test_resume_refuses_a_changed_training_setting_naming_both_values(out, tmp_path, capsys, flag, then, now):
    _train(out, tmp_path, "set", "--exit-after", "1", flag, then)
    assert main(train_args(out, tmp_path, "--ckpt-dir", str(tmp_path / "ckpt-set"), "--micro-batch", "2",
                           "--resume", flag, now)) == 2
    err = capsys.readouterr().err
    assert f"{flag} {then} in the checkpoint vs {now} now" in err, err


def test_a_killed_checkpoint_write_leaves_no_temporary_file_after_the_next_start(out, tmp_path):
    _train(out, tmp_path, "tmp", "--exit-after", "1")
    ckpt = tmp_path / "ckpt-tmp"
    (ckpt / "ckpt-00000002.pt.tmp-12345").write_bytes(b"half a checkpoint")  # as a killed write leaves it
    (ckpt / "mine.txt").write_text("not steppack's")
    _train(out, tmp_path, "tmp", "--resume", "--exit-after", "1")
    assert sorted(os.listdir(ckpt)) == ["ckpt-00000001.pt", "ckpt-00000002.pt", "mine.txt"]


def _preempt(cmd, metrics, sig) -> tuple[int, str]:
    """Run `cmd`, send `sig` once it has logged a step more than `metrics` held; (steps logged, stdout)."""
    before = len(read_metrics(metrics)) if metrics.exists() else 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not metrics.exists() or len(metrics.read_text().splitlines()) < before + 1:  # mid-run
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    return len(read_metrics(metrics)), stdout


def test_a_preempted_run_finishes_its_step_checkpoints_exits_0_and_resumes_to_the_same_losses(tmp_path):
    out = str(tmp_path / "long")
    make_output(out, num_steps=30, rows_per_step=4, seq_len=32, vocab_size=500)
    whole = read_metrics(_train(out, tmp_path, "whole"))
    metrics, ckpt = tmp_path / "cut.jsonl", tmp_path / "ckpt-cut"
    argv = train_args(out, tmp_path, "--ckpt-dir", str(ckpt), "--metrics", str(metrics), "--micro-batch", "2")
    cmd = [os.path.join(os.path.dirname(sys.executable), "steppack"), *[a for a in argv if a != "--quiet"]]
    # Slurm's --signal (SIGUSR1), then a scheduler's SIGTERM on the resumed run.
    for sig, extra in ((signal.SIGUSR1, []), (signal.SIGTERM, ["--resume"])):
        done, stdout = _preempt(cmd + extra, metrics, sig)
        assert done < 30
        assert f"stopped by {sig.name} after step {done} of 30: checkpoint {ckpt}/ckpt-{done:08d}.pt" in stdout
        assert checkpoint.list_checkpoints(ckpt)[-1][0] == done
    assert main(argv + ["--resume"]) == 0
    assert [r["step"] for r in read_metrics(metrics)] == list(range(30))
    assert [r["loss"] for r in read_metrics(metrics)] == [r["loss"] for r in whole]
