"""The step stream and the trainer's refusals: rows per rank, prefetch, padding, clear errors."""

import numpy as np
import pytest

from steppack.shards import read_manifest
from steppack.shards.errors import ConfigError
from steppack.cli import main
from tests.shardgen import make_output
from tests.test_trainer_support import tokens_of, train_args, write_rows
from steppack.trainer.data import StepStream, check_model_fits_data, manifest_identity, total_steps


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "out")
    make_output(path, num_steps=4, rows_per_step=8, seq_len=32, vocab_size=500)
    return path


def _rows_read(out, world, micro, steps=range(4), prefetch=1):
    """Per step: the tokens every rank read, concatenated in rank order."""
    m = read_manifest(out)
    per_rank = []
    for r in range(world):
        stream = StepStream(out, m, rank=r, world_size=world, micro_batch=micro, start=steps.start,
                            stop=steps.stop, prefetch=prefetch)
        # Copy: a step's tensors are reused once the stream moves two steps on.
        per_rank.append([np.concatenate([mb.tokens.numpy().copy() for mb in b.micro]) for b, _ in stream])
    return [np.concatenate([per_rank[r][i] for r in range(world)]) for i in range(len(steps))]


def test_every_world_size_reads_the_same_rows_of_each_step(out):
    one = _rows_read(out, 1, 8)
    for s in range(4):
        np.testing.assert_array_equal(one[s], tokens_of(out, s))
    for world, micro in ((2, 2), (4, 1), (8, 1), (2, 4)):
        for s, rows in enumerate(_rows_read(out, world, micro)):
            np.testing.assert_array_equal(rows, one[s])


def test_prefetch_and_synchronous_reads_agree_and_start_at_any_step(out):
    assert all(np.array_equal(a, b) for a, b in zip(_rows_read(out, 2, 2, prefetch=0),
                                                     _rows_read(out, 2, 2, prefetch=3)))
    np.testing.assert_array_equal(_rows_read(out, 1, 4, steps=range(2, 4))[0], tokens_of(out, 2))


def test_stream_closed_early_stops_its_thread(out):
    stream = StepStream(out, read_manifest(out), rank=0, world_size=1, micro_batch=1, start=0, stop=4, prefetch=1)
    for batch, _ in stream:
        break
    assert stream._thread is None


def test_padding_is_reported_per_row(tmp_path):
    out = str(tmp_path / "pad")
    write_rows(out, [[([3, 3, 3, 5, 5], [3, 2]), ([7] * 8, [8])]], seq_len=8)
    (batch, _), = StepStream(out, read_manifest(out), rank=0, world_size=1, micro_batch=2, start=0, stop=1,
                             doc_lens=True)
    mb = batch.micro[0]
    assert mb.used.tolist() == [5, 8]
    offsets, lens = mb.doc_lens
    assert [lens[offsets[i]:offsets[i + 1]].tolist() for i in range(2)] == [[3, 2], [8]]
    assert mb.tokens.tolist()[0] == [3, 3, 3, 5, 5, 0, 0, 0]


def test_manifest_identity_changes_with_the_data(tmp_path, out):
    other = str(tmp_path / "other")
    make_output(other, num_steps=4, rows_per_step=8, seq_len=32, vocab_size=500, seed=1)
    assert manifest_identity(read_manifest(out)) == manifest_identity(read_manifest(out))
    assert manifest_identity(read_manifest(out)) != manifest_identity(read_manifest(other))


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused_naming_both(out):
    with pytest.raises(ConfigError, match=r"vocabulary of 400 .* has 500 ids"):
        check_model_fits_data(read_manifest(out), vocab_size=400, context=32, model="tiny")


def test_model_context_different_from_seq_len_is_refused_naming_both(out):
    with pytest.raises(ConfigError, match=r"context of 4096 tokens .* seq_len 32"):
        check_model_fits_data(read_manifest(out), vocab_size=102400, context=4096, model="tiny")


def test_rows_not_divisible_by_world_size_times_micro_batch_is_a_clear_error(out):
    with pytest.raises(ConfigError, match=r"rows_per_step 8 is not divisible by world_size 2 x micro_batch 3"):
        StepStream(out, read_manifest(out), rank=0, world_size=2, micro_batch=3, start=0, stop=1)


def test_more_steps_than_shards_needs_epochs(out):
    m = read_manifest(out)
    with pytest.raises(ConfigError, match=r"--steps 10 .* 4 step shards.*--epochs 3"):
        total_steps(m, 10, 1)
    assert total_steps(m, 10, 3) == 10
    assert total_steps(m, None, 2) == 8


def test_epochs_wrap_around_to_shard_zero(out):
    m = read_manifest(out)
    stream = StepStream(out, m, rank=0, world_size=1, micro_batch=8, start=3, stop=6)
    got = [(b.step, b.shard, b.micro[0].tokens.numpy().copy()) for b, _ in stream]
    assert [(s, sh) for s, sh, _ in got] == [(3, 3), (4, 0), (5, 1)]
    np.testing.assert_array_equal(got[1][2], tokens_of(out, 0))


@pytest.mark.parametrize("extra,message", [
    (["--vocab-size", "100"], "vocabulary of 100 but the data's tokenizer (synthetic) has 500 ids"),
    (["--context", "64"], "context of 64 tokens but the data's rows have seq_len 32"),
    (["--micro-batch", "3"], "rows_per_step 8 is not divisible by world_size 1 x micro_batch 3"),
    (["--steps", "5"], "--steps 5 asks for more steps than the data has: 4 step shards"),
    (["--resume"], "--resume, --exit-after and --ckpt-every need --ckpt-dir DIR"),
])
def test_cli_prints_user_errors_without_traceback(out, tmp_path, capsys, extra, message):
    args = train_args(out, tmp_path)
    # later flags win: the override goes after the defaults train_args sets
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("attention,labels", [("causal", 4 + 7), ("doc", 2 + 1 + 7)])
def test_padding_and_document_ends_carry_no_loss_in_a_real_run(tmp_path, attention, labels):
    from tests.test_trainer_support import read_metrics

    out = str(tmp_path / "pad")
    rows = [([3, 3, 3, 5, 5], [3, 2]), ([7] * 8, [8])]  # row 0: two documents, then 3 padding tokens
    write_rows(out, [rows, rows], seq_len=8)
    metrics = str(tmp_path / "m.jsonl")
    assert main(train_args(out, tmp_path, "--attention", attention, "--metrics", metrics, vocab=64, context=8)) == 0
    assert [r["label_tokens"] for r in read_metrics(metrics)] == [labels, labels]
