"""Packed batches: the masks built from them never cross examples, loss weights cover
exactly the target tokens, and the iterator resumes exactly."""

import json
import random

import numpy as np
import pytest

from trainers.data.packing import (
    PACKERS,
    build_batch,
    pack_best_fit,
    pack_greedy,
    packing_efficiency,
    truncate,
)
from trainers.data.pipeline import make_batches
from trainers.models import masks
from trainers.spec import DataConfig, UserError

CFG = DataConfig(task_count=89, input_length=96, target_length=32, examples_per_task=50)


def _examples(n, seed=0, max_in=40, max_tgt=12):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        inp = [rng.randint(3, 258) for _ in range(rng.randint(1, max_in))] + [1]
        tgt = [rng.randint(3, 258) for _ in range(rng.randint(1, max_tgt))] + [1]
        out.append((inp, tgt))
    return out


def _reference_t5(rows):
    """Expected per-position example id / role, computed independently of build_batch."""
    enc, dec = [], []
    for row in rows:
        enc.append([(s, inp[p], p) for s, (inp, _) in enumerate(row, 1) for p in range(len(inp))])
        dec.append([(s, tgt[p], p, 0 if p == 0 else tgt[p - 1]) for s, (_, tgt) in enumerate(row, 1) for p in range(len(tgt))])
    return enc, dec


@pytest.mark.parametrize("packer", ["best_fit", "greedy"])
def test_t5_batch_layout_and_masks(packer):
    li, lt = 64, 24
    exs = [truncate(e, "t5", li, lt) for e in _examples(40)]
    rows = [[exs[k] for k in row] for row in PACKERS[packer](exs, "t5", li, lt)]
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in exs)  # each example exactly once
    batch = build_batch(rows, "t5", li, lt)
    enc_ref, dec_ref = _reference_t5(rows)
    for r in range(len(rows)):
        for p in range(li):
            if p < len(enc_ref[r]):
                s, tok, pos = enc_ref[r][p]
                assert (batch["encoder_segment_ids"][r, p], batch["encoder_input_tokens"][r, p], batch["encoder_positions"][r, p]) == (s, tok, pos)
            else:
                assert batch["encoder_segment_ids"][r, p] == 0 and batch["encoder_input_tokens"][r, p] == 0
        for p in range(lt):
            if p < len(dec_ref[r]):
                s, tok, pos, prev = dec_ref[r][p]
                assert batch["decoder_segment_ids"][r, p] == s and batch["decoder_target_tokens"][r, p] == tok
                assert batch["decoder_positions"][r, p] == pos and batch["decoder_input_tokens"][r, p] == prev
                assert batch["decoder_loss_weights"][r, p] == 1.0
            else:
                assert batch["decoder_segment_ids"][r, p] == 0 and batch["decoder_loss_weights"][r, p] == 0.0
    # Attention masks, position by position.
    es, ds = batch["encoder_segment_ids"], batch["decoder_segment_ids"]
    em = np.asarray(masks.encoder_mask(es))[:, 0]
    dm = np.asarray(masks.decoder_mask(ds))[:, 0]
    cm = np.asarray(masks.cross_mask(ds, es))[:, 0]
    for r in range(len(rows)):
        for q in range(li):
            for k in range(li):
                assert em[r, q, k] == (es[r, q] > 0 and es[r, q] == es[r, k])
        for q in range(lt):
            for k in range(lt):
                assert dm[r, q, k] == (ds[r, q] > 0 and ds[r, q] == ds[r, k] and k <= q)
            for k in range(li):
                assert cm[r, q, k] == (ds[r, q] > 0 and ds[r, q] == es[r, k])
    # A decoder token only ever sees earlier tokens of its own target.
    assert not (dm & ~np.tril(np.ones((lt, lt), bool))).any()


def test_decoder_batch_layout_and_masks():
    li, lt = 48, 16
    exs = [truncate(e, "decoder", li, lt) for e in _examples(30)]
    rows = [[exs[k] for k in row] for row in pack_best_fit(exs, "decoder", li, lt)]
    batch = build_batch(rows, "decoder", li, lt)
    length = li + lt
    seg, pos = batch["decoder_segment_ids"], batch["decoder_positions"]
    for r, row in enumerate(rows):
        expect = []  # (segment, target token, input token, position, is target)
        for s, (inp, tgt) in enumerate(row, 1):
            seq = inp + tgt
            expect += [(s, seq[p], 0 if p == 0 else seq[p - 1], p, p >= len(inp)) for p in range(len(seq))]
        for p in range(length):
            if p < len(expect):
                s, tok, prev, ps, is_tgt = expect[p]
                assert (seg[r, p], batch["decoder_target_tokens"][r, p], batch["decoder_input_tokens"][r, p], pos[r, p]) == (s, tok, prev, ps)
                assert batch["decoder_loss_weights"][r, p] == (1.0 if is_tgt else 0.0)
            else:
                assert seg[r, p] == 0 and batch["decoder_loss_weights"][r, p] == 0.0
    dm = np.asarray(masks.decoder_mask(seg))[:, 0]
    for r in range(len(rows)):
        for q in range(length):
            for k in range(length):
                assert dm[r, q, k] == (seg[r, q] > 0 and seg[r, q] == seg[r, k] and k <= q)
    # Loss weight total = number of target tokens.
    assert batch["decoder_loss_weights"].sum() == sum(len(t) for row in rows for _, t in row)


def test_truncation_keeps_eos():
    inp, tgt = list(range(3, 103)) + [1], list(range(3, 53)) + [1]
    i, t = truncate((inp, tgt), "t5", 20, 8)
    assert len(i) == 20 and i[-1] == 1 and len(t) == 8 and t[-1] == 1
    i, t = truncate((inp, tgt), "decoder", 20, 8)
    assert len(i) + len(t) == 28 and i[-1] == 1 and t[-1] == 1 and len(t) == 8


def test_best_fit_beats_greedy_on_long_tail():
    rng = np.random.default_rng(0)
    exs = [([5] * int(min(500, rng.lognormal(4, 0.8))) + [1], [5] * int(min(100, rng.lognormal(2, 0.7))) + [1]) for _ in range(600)]
    bf, gr = pack_best_fit(exs, "t5", 512, 128), pack_greedy(exs, "t5", 512, 128)
    for rows in (bf, gr):
        assert sorted(k for r in rows for k in r) == list(range(600))
        for r in rows:
            assert sum(len(exs[k][0]) for k in r) <= 512 and sum(len(exs[k][1]) for k in r) <= 128
    assert len(bf) < len(gr)


@pytest.mark.parametrize("family, window", [("t5", 16), ("t5", 64), ("decoder", 16)])
def test_make_batches_resume_is_exact(tmp_path, family, window):
    # window 16 holds fewer rows than a few batches, so batches straddle windows.
    it = make_batches(CFG, family, 4, 7, tmp_path, window=window)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.state()))
    assert state["skip_rows"] > 0  # stopped in the middle of a window
    cont = [next(it) for _ in range(4)]
    resumed = make_batches(CFG, family, 4, 7, tmp_path, window=window)
    resumed.restore(state)
    for a, b in zip(cont, [next(resumed) for _ in range(4)]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert 0.5 < packing_efficiency(cont[0]) <= 1.0
    assert it.tokenizer.eos_id == 1 and it.tokenizer.pad_id == 0


def test_process_slices_partition_the_global_batch(tmp_path):
    full = next(make_batches(CFG, "t5", 4, 3, tmp_path, window=64))
    parts = [next(make_batches(CFG, "t5", 4, 3, tmp_path, window=64, process_index=i, process_count=2)) for i in range(2)]
    for k in full:
        np.testing.assert_array_equal(full[k], np.concatenate([p[k] for p in parts]))
    with pytest.raises(UserError):
        make_batches(CFG, "t5", 3, 3, tmp_path, process_count=2)


def test_bad_family_and_small_vocab_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="family"):
        make_batches(CFG, "gpt", 2, 0, tmp_path)
    with pytest.raises(UserError, match="vocab_size"):
        make_batches(CFG, "t5", 2, 0, tmp_path, vocab_size=200)  # byte ids go up to 258
