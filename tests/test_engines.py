"""The tokenizer engines: the fast engine's probe, the choice, and the guard that keeps its ids
exactly HF tokenizers' (pipeline/engines.py, pipeline/tokenize.py)."""

from __future__ import annotations

import numpy as np
import pytest

from steppack.pipeline import engines
from steppack.pipeline.config import build
from steppack.pipeline.engines import Encoded, FastEngine, Guard, HFEngine, choose, probe
from steppack.pipeline.tokenize import DocTokenizer, split_text, tokenizer_info, tokenizer_json
from steppack.shards.errors import ConfigError


@pytest.fixture(scope="module")
def job():
    cfg = build(None, "/x", {"input": ["a.jsonl"], "output": "o", "piece_chars": 50}, cwd="/cwd")
    return cfg, tokenizer_info(cfg), tokenizer_json(cfg)


class Differs:
    """An engine that gives one text wrong ids: what the probe and the guard are for."""

    name, library = "fast", "broken"

    def __init__(self, inner, bad: str):
        self.inner, self.bad = inner, bad

    def encode(self, texts):
        enc = self.inner.encode(texts)
        ids = enc.ids.copy()
        for i, t in enumerate(texts):
            if self.bad in t and enc.offsets[i + 1] > enc.offsets[i]:
                ids[enc.offsets[i]] += 1
        return Encoded(ids, enc.offsets)


def test_the_fast_engine_gives_the_reference_ids_on_every_probe(job):
    _, _, text = job
    assert probe(FastEngine(text), HFEngine(text)) is None
    assert choose("auto", text) == ("fast", None)
    assert choose("hf", text) == ("hf", None)


def test_the_probe_catches_an_engine_that_differs_on_one_text(job):
    _, _, text = job
    got = probe(Differs(FastEngine(text), "勾股定理"), HFEngine(text))
    assert got is not None and "勾股定理" in got


def test_auto_falls_back_to_hf_with_the_reason_and_fast_refuses(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # a pre-tokenizer fastokens does not have
    engine, warning = choose("auto", tok.to_str())
    assert engine == "hf" and "fastokens cannot load this tokenizer.json" in warning
    with pytest.raises(ConfigError, match="--tokenizer-engine fast: fastokens cannot load"):
        choose("fast", tok.to_str())


def test_doc_tokenizer_adds_bos_eos_and_joins_a_long_text_s_pieces(job):
    cfg, info, text = job
    doc = DocTokenizer(cfg, info, engine="fast")
    texts = ["Let $x^2 = 4$.", "Then x = 2 or x = -2.\n" * 10, ""]  # the second is cut into pieces
    got, differed = doc.encode(texts, [True, True, True])
    ref = HFEngine(text)
    assert differed == []
    for t, ids in zip(texts, got):
        pieces = ref.encode(split_text(t, cfg.piece_chars))
        assert ids.tolist() == [info.bos_id] + pieces.ids.tolist() + [info.eos_id]
        assert ids.dtype == np.uint32


def test_the_guard_writes_the_reference_ids_of_a_document_the_engine_got_wrong(job):
    cfg, info, text = job
    doc = DocTokenizer(cfg, info, engine="fast")
    doc.engine = Differs(doc.engine, "odd one")
    texts = ["fine text", "the odd one out", "the odd one, unchecked"]
    got, differed = doc.encode(texts, [True, True, False])
    want = [DocTokenizer(cfg, info, engine="hf").encode([t])[0][0] for t in texts]
    assert differed == [1]
    assert got[1].tolist() == want[1].tolist()  # checked: the reference's ids
    assert got[0].tolist() == want[0].tolist()
    assert got[2].tolist() != want[2].tolist()  # not checked: what the engine said


def test_guard_settings_and_a_seeded_sample_by_doc_id():
    assert Guard.parse("all").every == 1 and Guard.parse("none").every == 0 and Guard.parse("1/1000").every == 1000
    for bad in ("some", "2/3", "1/0", "1/x"):
        with pytest.raises(ConfigError, match="give all, none or 1/N"):
            Guard.parse(bad)
    g = Guard.parse("1/100")
    picked = [d for d in range(100_000) if g.picks(d)]
    assert 800 < len(picked) < 1200 and picked == [d for d in range(100_000) if Guard(100).picks(d)]
    assert all(Guard(1).picks(d) for d in range(10)) and not any(Guard(0).picks(d) for d in range(10))


def test_the_setting_is_checked_with_the_config():
    with pytest.raises(ConfigError, match="tokenizer-engine 'turbo'"):
        build(None, "/x", {"input": ["a.jsonl"], "output": "o", "tokenizer_engine": "turbo"})
    with pytest.raises(ConfigError, match="--verify-tokenizer"):
        build(None, "/x", {"input": ["a.jsonl"], "output": "o", "verify_tokenizer": "often"})


def test_record_names_the_library_and_its_version():
    assert engines.record("fast")["library"] == "fastokens" and engines.record("hf")["library"] == "tokenizers"
    assert engines.record("fast")["version"][0].isdigit()
