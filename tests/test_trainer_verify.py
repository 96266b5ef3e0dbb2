"""The trainer checks every step file against the manifest before the step trains: another step's
file, edited tokens or another output's file stop the run with one line naming the file."""

from __future__ import annotations

import os
import shutil

import pytest

from steppack.cli import main
from tests.shardgen import make_output
from tests.test_trainer_support import read_metrics, train_args


def _out(tmp_path, name="out", seed=0):
    path = str(tmp_path / name)
    make_output(path, num_steps=3, rows_per_step=4, seq_len=32, vocab_size=500, seed=seed)
    return path


def _train(out, tmp_path, capsys, *extra):
    metrics = tmp_path / f"m{len(list(tmp_path.glob('m*.jsonl')))}.jsonl"
    code = main(train_args(out, tmp_path, "--metrics", str(metrics), "--micro-batch", "4", *extra))
    err = capsys.readouterr().err
    return code, err, (read_metrics(metrics) if metrics.exists() else [])


def step_path(out, s):
    return os.path.join(out, "steps", f"step-{s:08d}.arrow")


def test_another_step_s_file_in_place_of_step_0_stops_the_run_before_it_trains(tmp_path, capsys):
    out = _out(tmp_path)
    shutil.copy(step_path(out, 1), step_path(out, 0))
    code, err, metrics = _train(out, tmp_path, capsys)
    assert code == 2 and metrics == []
    (line,) = [x for x in err.splitlines() if x]
    assert "step-00000000.arrow says it is step 1" in line and "step 0 is not trained on" in line


def test_an_edited_token_stops_the_run_at_its_step(tmp_path, capsys):
    out = _out(tmp_path)
    path = step_path(out, 1)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01  # inside the token buffer: the file still reads
    open(path, "wb").write(bytes(data))
    code, err, metrics = _train(out, tmp_path, capsys)
    assert code == 2 and [r["step"] for r in metrics] == [0]
    assert "step-00000001.arrow does not match the manifest's sha256" in err
    # Deliberately skipped: the run trains on it and says so in every metrics line.
    code, _, metrics = _train(out, tmp_path, capsys, "--no-verify-steps")
    assert code == 0 and [r["step"] for r in metrics] == [0, 1, 2] and not any(r["verified"] for r in metrics)


def test_another_output_s_step_reached_through_the_manifest_is_refused(tmp_path, capsys):
    out, other = _out(tmp_path), _out(tmp_path, "other", seed=1)
    shutil.copy(step_path(other, 2), step_path(out, 2))
    code, err, metrics = _train(out, tmp_path, capsys)
    assert code == 2 and [r["step"] for r in metrics] == [0, 1] and all(r["verified"] for r in metrics)
    assert "step-00000002.arrow" in err and ("sha256" in err or "bytes" in err)


class _Planted:
    """What a planted checkpoint would run when unpickled with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_the_checkpoint_directory_is_refused_and_never_run(tmp_path, capsys):
    import torch

    out, ckpt, marker = _out(tmp_path), tmp_path / "ckpt", tmp_path / "ran"
    ckpt.mkdir()
    torch.save({"step": 1, "payload": _Planted(marker)}, ckpt / "ckpt-00000001.pt")
    code, err, _ = _train(out, tmp_path, capsys, "--ckpt-dir", str(ckpt), "--resume")
    assert code == 2 and not marker.exists()
    (line,) = [x for x in err.splitlines() if x]
    assert "ckpt-00000001.pt is not a steppack checkpoint" in line and "not loaded" in line
    (ckpt / "ckpt-00000001.pt").write_bytes(os.urandom(4096))  # random bytes: one line too
    code, err, _ = _train(out, tmp_path, capsys, "--ckpt-dir", str(ckpt), "--resume")
    assert code == 2 and len([x for x in err.splitlines() if x]) == 1 and "ckpt-00000001.pt" in err
    torch.save({"step": 1}, ckpt / "ckpt-00000001.pt")  # loads, but is not ours
    code, err, _ = _train(out, tmp_path, capsys, "--ckpt-dir", str(ckpt), "--resume")
    assert code == 2 and "is not a steppack checkpoint (it lacks model" in err


@pytest.mark.parametrize("flag", ["--ckpt-dir", "--metrics"])
def test_an_output_the_trainer_cannot_write_is_refused_before_any_step(tmp_path, capsys, flag):
    out = str(tmp_path / "out")
    make_output(out, num_steps=2, rows_per_step=4, seq_len=16, vocab_size=100, seed=0)
    (tmp_path / "a-file").write_text("")
    where = str(tmp_path / "a-file" / "inside")  # under a file: not writable, even for root
    assert main(train_args(out, tmp_path, flag, where, "--micro-batch", "4", "--context", "16")) == 2
    err = capsys.readouterr()
    assert f"{flag} {where} cannot be written (Not a directory)" in err.err
    assert "step " not in err.out
