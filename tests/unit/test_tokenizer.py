"""Byte and SentencePiece tokenizers with T5's special ids."""

import pytest

from trainers.data.tokenizer import ByteTokenizer, load_spm, load_tokenizer
from trainers.spec import DataConfig, UserError


def test_byte_round_trip():
    tok = load_tokenizer(DataConfig(tokenizer="byte"), "/nonexistent")
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (259, 0, 1)
    text = "Größe 42 — ok"
    ids = tok.encode(text)
    assert min(ids) >= 3 and max(ids) < 259 and 1 not in ids
    assert tok.decode(ids + [1, 50, 60]) == text  # stops at EOS
    assert tok.decode([0] + ids + [0, 300]) == text  # drops pad and out-of-vocabulary ids
    assert ByteTokenizer().encode("A") == [ord("A") + 3]


def test_spm_trained_cached_and_t5_ids(tmp_path):
    cfg = DataConfig(tokenizer="spm", task_count=9, examples_per_task=50)
    tok = load_tokenizer(cfg, tmp_path, vocab_size=300)
    models = list((tmp_path / "tokenizers").glob("*.model"))
    assert len(models) == 1 and tok.vocab_size <= 300
    assert (tok.pad_id, tok.eos_id, tok._sp.unk_id(), tok._sp.bos_id()) == (0, 1, 2, -1)
    text = "How many apples are left? Let's think step by step."
    ids = tok.encode(text)
    assert 1 not in ids and 0 not in ids
    assert tok.decode(ids + [1] + ids) == text
    # Cached: a second load reads the same file and encodes identically.
    again = load_tokenizer(cfg, tmp_path, vocab_size=300)
    assert again.encode(text) == ids and list((tmp_path / "tokenizers").glob("*.model")) == models
    # Cells of the ladder over the same source share the vocabulary.
    other = load_tokenizer(DataConfig(tokenizer="spm", task_count=89, examples_per_task=50, formats=("zs_opt",)), tmp_path, vocab_size=300)
    assert other.encode(text) == ids and len(list((tmp_path / "tokenizers").glob("*.model"))) == 1
    # A user's .model path works the same way.
    assert load_tokenizer(DataConfig(tokenizer=str(models[0])), tmp_path).encode(text) == ids


def test_bad_model_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_spm(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(UserError, match="not a valid SentencePiece model"):
        load_tokenizer(DataConfig(tokenizer=str(bad)), tmp_path)
