"""The decoder: presets, shapes, and intra-document attention against documents run one by one."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steppack.shards.errors import ConfigError
from steppack.trainer.data import MicroBatch
from steppack.trainer.model import IGNORE, PRESETS, Decoder, next_token_loss_sum, preset
from steppack.trainer.targets import doc_layout, make_targets

CPU = torch.device("cpu")


def test_presets_have_the_deepseek_shapes():
    b7 = PRESETS["deepseek-7b"]
    assert (b7.n_layers, b7.d_model, b7.ffn, b7.n_heads, b7.vocab_size, b7.context) == (30, 4096, 11008, 32, 102400, 4096)
    assert 6.8e9 < b7.num_params() < 7.0e9  # DeepSeek LLM 7B: 6.9B
    b1 = PRESETS["deepseek-1.3b"]
    embed = 2 * b1.vocab_size * b1.d_model
    assert 1.2e9 < b1.num_params() - embed < 1.3e9  # 1.21B without the (untied, 102400-row) embeddings
    assert PRESETS["tiny"].vocab_size == 102400 and PRESETS["tiny"].rope_theta == 10000.0


def test_embeddings_are_untied_and_params_counted():
    model = Decoder(preset("tiny", vocab_size=64, context=16))
    assert model.embed.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == model.cfg.num_params()


def test_preset_override_must_be_positive():
    with pytest.raises(ConfigError, match="vocab_size"):
        preset("tiny", vocab_size=0)


def test_doc_layout_of_two_documents_and_padding():
    ids, pos, last = doc_layout([0, 2], [3, 4], 8)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    assert last.tolist() == [2, 6]


def test_doc_layout_over_rows_full_padded_and_empty():
    # Row 0: 2 + 6 (full); row 1: 5 and 3 padding; row 2: all padding; row 3: 8.
    ids, pos, last = doc_layout([0, 2, 3, 3, 4], [2, 6, 5, 8], 8)
    assert ids.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1],
                            [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    assert pos.tolist() == [[0, 1, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 0, 1, 2],
                            [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert last.tolist() == [1, 7, 12, 31]
    # The same rows as a view into a longer step: offsets that do not start at 0.
    ids2, pos2, last2 = doc_layout([2, 4, 5, 5, 6], [9, 9, 2, 6, 5, 8, 1], 8)
    assert (ids2 == ids).all() and (pos2 == pos).all() and last2.tolist() == last.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 9), max_size=4), min_size=1, max_size=6))
def test_doc_layout_matches_the_row_by_row_definition(rows):
    seq_len = 40
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    ids, pos, last = doc_layout(offsets, [x for r in rows for x in r], seq_len)
    want_last = []
    for i, lens in enumerate(rows):  # the definition: blocks restart ids and positions
        blocks = lens + [seq_len - sum(lens)]
        assert ids[i].tolist() == [k for k, n in enumerate(blocks) for _ in range(n)]
        assert pos[i].tolist() == [p for n in blocks for p in range(n)]
        want_last += [i * seq_len + e - 1 for e in np.cumsum(lens)]
    assert last.tolist() == want_last


def _mb(tokens, lens):
    t = torch.tensor([tokens], dtype=torch.int64)
    return MicroBatch(range(0, 1), t, np.array([sum(lens)]), (np.array([0, len(lens)]), np.array(lens)))


def test_targets_mask_padding_and_document_ends():
    # Tokens encode their document: 3 3 3 | 5 5 5 5 5 | pad pad
    mb = _mb([3, 3, 3, 5, 5, 5, 5, 5, 0, 0], [3, 5])
    _, causal, _, _ = make_targets(mb, doc=False, device=CPU)
    assert causal[0].tolist() == [3, 3, 5, 5, 5, 5, 5, IGNORE, IGNORE, IGNORE]
    _, doc, pos, ids = make_targets(mb, doc=True, device=CPU)
    assert doc[0].tolist() == [3, 3, IGNORE, 5, 5, 5, 5, IGNORE, IGNORE, IGNORE]
    assert pos[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    assert ids[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]


def test_doc_attention_gives_the_loss_of_running_each_document_separately():
    torch.manual_seed(0)
    seq_len, lens = 24, [5, 9, 7]  # 3 documents and 3 padding tokens
    model = Decoder(preset("tiny", vocab_size=64, context=seq_len)).eval()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(2, 64, (n,), generator=gen) for n in lens]
    row = torch.cat(docs + [torch.zeros(seq_len - sum(lens), dtype=torch.int64)]).tolist()
    tokens, labels, pos, ids = make_targets(_mb(row, lens), doc=True, device=CPU)
    with torch.no_grad():
        logits = model(tokens, pos, ids)
        packed = next_token_loss_sum(logits, labels)
        alone, start = 0.0, 0
        for d in docs:
            lab = torch.cat([d[1:], torch.tensor([IGNORE])])[None]
            one = model(d[None])
            alone += next_token_loss_sum(one, lab)
            # Not only the loss: every position's logits are those of the document alone.
            torch.testing.assert_close(logits[0, start:start + len(d)], one[0], atol=2e-5, rtol=1e-5)
            start += len(d)
    assert int((labels != IGNORE).sum()) == sum(n - 1 for n in lens)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_both_document_attention_paths_equal_the_dense_block_diagonal_mask():
    from steppack.trainer.attention import DocMask, attend

    seq_len = 40
    # Row 0: 3 documents and padding; row 1: one document filling the row; row 2: 2 and padding.
    ids = torch.as_tensor(doc_layout([0, 3, 4, 6], [7, 1, 12, seq_len, 30, 4], seq_len)[0], dtype=torch.int64)
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 4, seq_len, 16, generator=gen) for _ in range(3))
    dense = (ids[:, :, None] == ids[:, None, :]) & torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None])
    spans = DocMask(ids, flex=False)
    assert spans.spans == [[(0, 7), (7, 8), (8, 20), (20, 40)], [(0, 40)], [(0, 30), (30, 34), (34, 40)]]
    torch.testing.assert_close(attend(q, k, v, spans), want, atol=1e-5, rtol=1e-5)
    # flex_attention's BlockMask (the CUDA path), here in its eager forward: it has no backward on CPU.
    torch.testing.assert_close(attend(q, k, v, DocMask(ids, flex=True)), want, atol=1e-5, rtol=1e-5)


def test_causal_attention_sees_across_documents():
    torch.manual_seed(0)
    model = Decoder(preset("tiny", vocab_size=64, context=16)).eval()
    row = list(range(2, 18))
    tokens, _, _, _ = make_targets(_mb(row, [8, 8]), doc=False, device=CPU)
    with torch.no_grad():
        whole = model(tokens)[0, 8:]
        second = model(tokens[:, 8:])[0]
    assert not torch.allclose(whole, second, atol=1e-3)


@pytest.mark.parametrize("chunk_bytes", [4 * 97 * 5, 4 * 97 * 64, 256 << 20])  # 5 positions, 64, all at once
def test_the_chunked_loss_equals_the_full_logits_loss_and_its_gradients(monkeypatch, chunk_bytes):
    from steppack.trainer import loss as chunked
    from steppack.trainer.model import next_token_losses

    monkeypatch.setattr(chunked, "CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=97, context=32, layers=2)
    tokens = torch.randint(0, 97, (3, 32))
    labels = torch.randint(0, 97, (3, 32))
    labels[0, :7] = IGNORE
    labels[2, -5:] = IGNORE

    def run(use_chunks):
        torch.manual_seed(1)
        model = Decoder(cfg)
        if use_chunks:
            total, per = model(tokens, labels=labels)
        else:
            total, per = next_token_losses(model(tokens), labels)
        (total * 0.37).backward()
        return total.detach(), per, {n: p.grad for n, p in model.named_parameters()}

    (want, want_per, want_grads), (got, got_per, got_grads) = run(False), run(True)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_per, want_per, rtol=1e-5, atol=1e-5) and not got_per.requires_grad
    assert (got_per[labels.view(-1) == IGNORE] == 0).all()
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-4, atol=1e-6), name


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    cfg = preset("tiny", vocab_size=97, context=32, layers=2)
    tokens = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))
    labels = torch.roll(tokens, -1, dims=1)

    def run(recompute):
        torch.manual_seed(1)
        model = Decoder(cfg, checkpoint_blocks=recompute)
        total, _ = model(tokens, labels=labels)
        total.backward()
        return total.detach(), {n: p.grad for n, p in model.named_parameters()}

    (want, want_grads), (got, got_grads) = run(False), run(True)
    assert torch.equal(got, want)
    for name, g in want_grads.items():  # recomputing the same ops on the CPU repeats them bit for bit
        assert torch.equal(got_grads[name], g), name
