"""T5 span corruption: noise statistics, sentinels, reconstruction, packing, resume."""

import gzip
import json

import numpy as np
import pytest

from trainers.data.pretrain import random_spans_noise_mask, raw_length, span_corrupt, span_corruption_batches
from trainers.data.tokenizer import ByteTokenizer
from trainers.spec import UserError

VOCAB = 384


def _uncorrupt(inputs, targets):
    """Rebuild the original chunk by putting each target span back at its sentinel."""
    spans, cur = {}, None
    for t in targets[:-1]:
        if t >= VOCAB - 100:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inputs[:-1]:
        out += spans[t] if t >= VOCAB - 100 else [t]
    return out


def test_noise_mask_density_and_spans():
    rng = np.random.default_rng(0)
    mask = random_spans_noise_mask(1000, 0.15, 3.0, rng)
    assert mask.sum() == 150 and not mask[0]
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == 50  # mean span length 3


def test_span_corrupt_reconstructs_and_sentinels_count_down():
    tokens = list(range(10, 110))
    mask = random_spans_noise_mask(100, 0.15, 3.0, np.random.default_rng(1))
    inputs, targets = span_corrupt(tokens, mask, VOCAB)
    sentinels = [t for t in inputs if t >= VOCAB - 100]
    assert sentinels == list(range(VOCAB - 1, VOCAB - 1 - len(sentinels), -1))
    assert inputs[-1] == 1 and targets[-1] == 1 and targets[0] == VOCAB - 1
    assert _uncorrupt(inputs, targets) == tokens


def test_raw_length_fits_budgets():
    n = raw_length(512, 114, 0.15, 3.0)
    assert n == 568  # T5's 512/114 setting


def test_batches_pack_resume_and_reconstruct(tmp_path):
    corpus = tmp_path / "c.txt.gz"
    with gzip.open(corpus, "wt") as f:
        for i in range(200):
            f.write(f"Document {i} says the quick brown fox jumps over {i % 7} lazy dogs.\n\n")
    tok = ByteTokenizer()
    it = span_corruption_batches(tok, "t5", 4, 96, 24, 0, VOCAB, corpus, window=32)
    b = next(it)
    assert b["encoder_input_tokens"].shape == (4, 96) and b["decoder_loss_weights"].sum() > 0
    row_in, row_seg = b["encoder_input_tokens"][0], b["encoder_segment_ids"][0]
    tgt, tseg = b["decoder_target_tokens"][0], b["decoder_segment_ids"][0]
    text = tok.decode(_uncorrupt(list(row_in[row_seg == 1]), list(tgt[tseg == 1])))
    assert "Document" in text or "lazy" in text or "fox" in text
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.state()))
    cont = [next(it) for _ in range(3)]
    again = span_corruption_batches(tok, "t5", 4, 96, 24, 0, VOCAB, corpus, window=32)
    again.restore(state)
    for a, c in zip(cont, [next(again) for _ in range(3)]):
        for k in a:
            np.testing.assert_array_equal(a[k], c[k])


def test_suite_corpus_and_decoder_family():
    it = span_corruption_batches(ByteTokenizer(), "decoder", 2, 64, 16, 0, VOCAB, window=16)
    b = next(it)
    assert b["decoder_target_tokens"].shape == (2, 80) and it.last_efficiency > 0.8


def test_no_room_for_sentinels():
    with pytest.raises(UserError, match="sentinels"):
        span_corruption_batches(ByteTokenizer(), "t5", 2, 64, 16, 0, 259)
