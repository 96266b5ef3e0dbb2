"""Per-source loss of mixtures: which source each label belongs to, sums that add up to the step's
loss, and the metrics lines of real runs (one process and two gloo ranks)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from steppack.shards import read_manifest, write_manifest
from steppack.shards.errors import FormatError
from steppack.cli import main
from tests.shardgen import make_output
from tests.test_trainer_support import read_metrics, torchrun, train_args
from steppack.trainer.data import MicroBatch, StepStream
from steppack.trainer.model import IGNORE, Decoder, next_token_loss_sum, next_token_losses, preset
from steppack.trainer.source_loss import label_sources, source_counts, source_fields, source_sums
from steppack.trainer.targets import make_targets, position_sources

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """4 steps of 8 rows x 32 tokens whose pieces come from 3 random sources."""
    path = str(tmp_path_factory.mktemp("mixed") / "out")
    make_output(path, num_steps=4, rows_per_step=8, seq_len=32, vocab_size=500, n_sources=3, seed=3)
    return path


def test_position_sources_of_rows_with_padding_and_documents_of_several_sources():
    # Tokens encode their document: 3 3 3 (source 1) | 5 5 (source 0) | padding; 7 x 8 (source 2).
    offsets, lens, source = [0, 2, 3], [3, 2, 8], [1, 0, 2]
    assert position_sources(offsets, lens, source, 8).tolist() == [
        [1, 1, 1, 0, 0, -1, -1, -1],
        [2, 2, 2, 2, 2, 2, 2, 2],
    ]
    # The same rows as a micro-batch's view into a longer step: offsets that do not start at 0.
    got = position_sources([2, 4, 5], [9, 9, 3, 2, 8, 4], [0, 0, 1, 0, 2, 1], 8)
    assert got.tolist() == position_sources(offsets, lens, source, 8).tolist()
    # An all-padding row is one padding block.
    assert position_sources([0, 0], [], [], 4, pad=7).tolist() == [[7, 7, 7, 7]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 9), st.integers(0, 4)), max_size=4), min_size=1, max_size=6))
def test_position_sources_match_the_row_by_row_definition(rows):
    seq_len = 40
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    got = position_sources(offsets, [n for r in rows for n, _ in r], [s for r in rows for _, s in r], seq_len)
    for i, row in enumerate(rows):
        want = [s for n, s in row for _ in range(n)]
        assert got[i].tolist() == want + [-1] * (seq_len - len(want))


def _mb(tokens, lens, source):
    t = torch.tensor(tokens, dtype=torch.int64)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lens])])
    flat = np.array([n for x in lens for n in x])
    return MicroBatch(range(0, len(tokens)), t, np.array([sum(x) for x in lens]), (offsets, flat),
                      np.array([s for x in source for s in x], np.uint16))


def test_a_label_belongs_to_the_source_of_the_position_it_is_predicted_from():
    # Row 0: 3 3 3 (source 1) | 5 5 (source 0) | 3 padding; row 1: 7 x 8 (source 2).
    mb = _mb([[3, 3, 3, 5, 5, 0, 0, 0], [7] * 8], [[3, 2], [8]], [[1, 0], [2]])
    _, labels, _, _ = make_targets(mb, doc=False, device=CPU)
    # Causal: position 2 (the last 3) predicts the first 5 and counts for source 1; position 4 (the
    # last 5) predicts padding: no label.
    assert label_sources(mb, labels).view(2, 8).tolist() == [[1, 1, 1, 0, -1, -1, -1, -1], [2] * 7 + [-1]]
    _, labels, _, _ = make_targets(mb, doc=True, device=CPU)
    assert label_sources(mb, labels).view(2, 8).tolist() == [[1, 1, -1, 0, -1, -1, -1, -1], [2] * 7 + [-1]]
    src = label_sources(mb, labels)
    assert source_counts(src, 3).tolist() == [1, 2, 7]
    per = torch.arange(16, dtype=torch.float32)  # position p's "loss" is p
    assert source_sums(per, src, 3).tolist() == [3.0, 0.0 + 1.0, sum(range(8, 15))]


def test_source_fields_name_only_the_sources_present():
    assert source_fields(["gsm8k", "proofs", "lean"], [12.5, 0.0, 3.0], [5, 0, 2]) == {
        "source_loss": {"gsm8k": 2.5, "lean": 1.5}, "source_tokens": {"gsm8k": 5, "lean": 2}}


def test_loss_sum_and_gradient_are_bit_for_bit_those_of_the_plain_cross_entropy():
    torch.manual_seed(0)
    model = Decoder(preset("tiny", vocab_size=64, context=16))
    tokens = torch.randint(0, 64, (3, 16))
    labels = torch.cat([tokens[:, 1:], torch.full((3, 1), IGNORE)], dim=1)
    labels[1, 5:] = IGNORE

    def run(fn):
        model.zero_grad()
        loss = fn(model(tokens), labels)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain, plain_grads = run(next_token_loss_sum)
    ours, our_grads = run(next_token_losses)
    assert torch.equal(plain, ours)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, our_grads))
    with torch.no_grad():
        _, per = next_token_losses(model(tokens), labels)
        want = F.cross_entropy(model(tokens).view(-1, 64), labels.view(-1), ignore_index=IGNORE, reduction="none")
    assert torch.equal(per, want) and per.shape == (48,)


@pytest.mark.parametrize("doc", [False, True])
def test_per_source_sums_add_up_to_the_loss_of_real_steps(mixed, doc):
    m = read_manifest(mixed)
    torch.manual_seed(0)
    model = Decoder(preset("tiny", vocab_size=512, context=32)).eval()
    stream = StepStream(mixed, m, rank=0, world_size=1, micro_batch=2, start=0, stop=4, doc_lens=doc,
                        sources=True, prefetch=0)
    seen = set()
    for batch, _ in stream:
        step_sum, step_labels = 0.0, 0
        sums, counts = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)
        for mb in batch.micro:
            tok, lab, pos, ids = make_targets(mb, doc=doc, device=CPU)
            src = label_sources(mb, lab)
            with torch.no_grad():
                logits = model(tok, pos, ids)
                loss, per = next_token_losses(logits, lab)
            s, c = source_sums(per, src, 3), source_counts(src, 3)
            # Against the definition, row by row and piece by piece.
            offsets, lens = mb.doc_lens
            want_s, want_c = np.zeros(3), np.zeros(3, np.int64)
            for r in range(len(mb.rows)):
                row_loss = F.cross_entropy(logits[r], lab[r], ignore_index=IGNORE, reduction="none")
                at = 0
                for k in range(offsets[r], offsets[r + 1]):
                    piece = slice(at, at + int(lens[k]))
                    has_label = lab[r, piece] != IGNORE
                    want_s[mb.source[k]] += float(row_loss[piece][has_label].double().sum())
                    want_c[mb.source[k]] += int(has_label.sum())
                    at += int(lens[k])
            np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-12, atol=1e-9)
            assert c.tolist() == want_c.tolist()
            sums += s
            counts += c
            step_sum += float(loss)
            step_labels += int((lab != IGNORE).sum())
        assert int(counts.sum()) == step_labels
        assert float(sums.sum()) == pytest.approx(step_sum, rel=1e-6)
        seen |= {i for i in range(3) if counts[i] > 0}
    assert seen == {0, 1, 2}


def _check_source_fields(lines, names):
    for r in lines:
        assert set(r["source_loss"]) == set(r["source_tokens"]) == set(names), r
        assert sum(r["source_tokens"].values()) == r["label_tokens"]
        mean = sum(r["source_loss"][n] * r["source_tokens"][n] for n in names) / r["label_tokens"]
        assert mean == pytest.approx(r["loss"], abs=1e-6)


def test_two_gloo_ranks_log_the_loss_of_each_source_as_one_rank_does(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, num_steps=3, rows_per_step=8, seq_len=32, vocab_size=500, n_sources=2, seed=5)
    one, two = str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")
    assert main(train_args(out, tmp_path, "--metrics", one, "--micro-batch", "4")) == 0
    proc = torchrun(2, train_args(out, tmp_path, "--metrics", two, "--micro-batch", "2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = read_metrics(one), read_metrics(two)
    assert [r["world_size"] for r in two] == [2, 2, 2]
    _check_source_fields(one, ["src0", "src1"])
    _check_source_fields(two, ["src0", "src1"])
    for a, b in zip(one, two):
        assert a["source_tokens"] == b["source_tokens"]
        for name in ("src0", "src1"):
            assert a["source_loss"][name] == pytest.approx(b["source_loss"][name], rel=1e-5)


def test_one_source_output_logs_no_per_source_fields_and_reads_no_sources(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, num_steps=2, rows_per_step=4, seq_len=32, vocab_size=500)
    metrics = str(tmp_path / "m.jsonl")
    assert main(train_args(out, tmp_path, "--metrics", metrics, "--micro-batch", "4", "--steps", "1")) == 0
    (rec,) = read_metrics(metrics)
    assert "source_loss" not in rec and "source_tokens" not in rec
    stream = StepStream(out, read_manifest(out), rank=0, world_size=1, micro_batch=4, start=0, stop=1, prefetch=0)
    (batch, _), = stream
    assert batch.micro[0].source is None and batch.micro[0].doc_lens is None


def test_a_piece_whose_source_the_manifest_does_not_list_is_refused(tmp_path):
    out = str(tmp_path / "out")
    m = make_output(out, num_steps=1, rows_per_step=4, seq_len=32, vocab_size=500, n_sources=3, seed=1)
    write_manifest(out, dataclasses.replace(m, sources=m.sources[:2]))
    stream = StepStream(out, read_manifest(out), rank=0, world_size=1, micro_batch=4, start=0, stop=1,
                        sources=True, prefetch=0)
    with pytest.raises(FormatError, match=r"step-00000000.arrow has a piece of source index 2 but the manifest "
                                          r"lists 2 sources"):
        stream.load(0)
