"""Rank classification's option log-probabilities, both families: the shared prompt encoding
and the per-option reference equal the per-example target log-probability sums of a packed
training batch run through the model's full forward pass."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from trainers import models
from trainers.data import packing
from trainers.data.tokenizer import EOS_ID, ByteTokenizer
from trainers.eval.rank import OptionScore, OptionScorer
from trainers.spec import ModelConfig, UserError

TOK = ByteTokenizer()
T5 = ModelConfig(vocab_size=259, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_encoder_layers=1, num_decoder_layers=1)
PALM = ModelConfig(family="decoder", vocab_size=259, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_kv_heads=1,
                   num_encoder_layers=0, num_decoder_layers=2, tie_embeddings=True, parallel_block=True)
GQA = ModelConfig(family="decoder", vocab_size=259, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_kv_heads=2,
                  num_encoder_layers=0, num_decoder_layers=1, tie_embeddings=False, parallel_block=False)

PROMPTS = ["Q: Which is a prime number?\nA:", "Capital of France?", "The answer is"]
OPTIONS = [["A", "B", "C", "D"], ["Paris", "Paris, France", "Lyon"], ["yes", "no"]]
# Different option counts (none, one, five) and lengths (the empty option scores EOS alone).
VARIED_PROMPTS = PROMPTS + ["Pick one.", "x" * 70, "Nothing to rank here", "Long options follow:"]
VARIED_OPTIONS = OPTIONS + [["(A)", "(B)", "(C)", "(D)", "(E)"], ["only"], [],
                            ["", "a much longer option of about forty chars", "mid length"]]


@pytest.fixture(scope="module", params=[T5, PALM], ids=["t5", "decoder"])
def model(request):
    return request.param, models.init_params(request.param, jax.random.key(0, impl="rbg"))


def reference(cfg, params, prompts, options, max_prompt_tokens=0):
    """Every (prompt, option + EOS) example packed, several per row, into a training batch;
    the model's forward pass; each example's target log-probabilities summed by segment."""
    examples = []
    for prompt, opts in zip(prompts, options):
        inp = TOK.encode(prompt) + [EOS_ID]
        inp = inp[-max_prompt_tokens:] if max_prompt_tokens else inp
        examples += [(inp, TOK.encode(o) + [EOS_ID]) for o in opts]
    li = 2 * max(len(i) for i, _ in examples)
    lt = 2 * max(len(t) for _, t in examples)
    rows = packing.pack_best_fit(examples, cfg.family, li, lt)
    assert max(map(len, rows)) > 1  # the layout differs from the scorer's one example per row
    batch = packing.build_batch([[examples[k] for k in row] for row in rows], cfg.family, li, lt)
    forward = jax.jit(lambda p, b: models.build(cfg).apply({"params": p}, b))
    logits = np.asarray(forward(params, batch), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_lp = np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    token_lp *= batch["decoder_loss_weights"]
    seg = batch["decoder_segment_ids"]
    sums = np.zeros(len(examples))
    for r, row in enumerate(rows):
        for s, k in enumerate(row, 1):
            sums[k] = token_lp[r][seg[r] == s].sum()
    out, i = [], 0
    for opts in options:
        out.append(list(sums[i: i + len(opts)]))
        i += len(opts)
    return out


def logprobs(scores):
    return [[s.logprob for s in q] for q in scores]


def assert_close(got, want):
    assert [len(q) for q in got] == [len(q) for q in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_shared_encoding_equals_full_forward(model):
    cfg, params = model
    got = OptionScorer(cfg, params, TOK, batch_size=4)(PROMPTS, OPTIONS)
    assert_close(logprobs(got), reference(cfg, params, PROMPTS, OPTIONS))
    assert got[1][1] == OptionScore(got[1][1].logprob, len("Paris, France") + 1, len("Paris, France"))
    assert all(s.logprob < 0 for q in got for s in q)
    # The EOS keeps "Paris" from scoring as a mere prefix of "Paris, France".
    assert got[1][0].logprob != pytest.approx(got[1][1].logprob)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [T5, PALM, GQA], ids=["t5", "decoder-mqa", "decoder-gqa-serial"])
@pytest.mark.parametrize("batch_size", [2, 8])
def test_varied_option_counts_and_lengths(cfg, batch_size):
    params = models.init_params(cfg, jax.random.key(1, impl="rbg"))
    want = reference(cfg, params, VARIED_PROMPTS, VARIED_OPTIONS)
    shared = OptionScorer(cfg, params, TOK, batch_size=batch_size)(VARIED_PROMPTS, VARIED_OPTIONS)
    per_option = OptionScorer(cfg, params, TOK, batch_size=batch_size, shared=False)(VARIED_PROMPTS, VARIED_OPTIONS)
    assert shared[5] == [] and per_option[5] == []
    assert [s.num_tokens for s in shared[6]] == [1, 41 + 1, 10 + 1]
    assert_close(logprobs(shared), want)
    assert_close(logprobs(per_option), want)
    assert_close(logprobs(shared), logprobs(per_option))


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-option"])
def test_prompts_truncated_to_max_prompt_tokens(model, shared):
    cfg, params = model
    prompts = ["header that will be cut off. " * 3 + "Q: 2+2?", "short"]
    options = [["4", "5"], ["a", "bb"]]
    got = logprobs(OptionScorer(cfg, params, TOK, max_prompt_tokens=16, shared=shared)(prompts, options))
    assert_close(got, reference(cfg, params, prompts, options, max_prompt_tokens=16))
    whole = reference(cfg, params, prompts, options)
    assert not np.allclose(got[0], whole[0], atol=1e-3)  # the first prompt lost its head
    np.testing.assert_allclose(got[1], whole[1], rtol=1e-5, atol=1e-4)  # the short one is untouched


def test_bad_arguments_are_refused_before_any_model_runs():
    with pytest.raises(UserError, match="batch_size: 0"):
        OptionScorer(T5, None, TOK, batch_size=0)
    with pytest.raises(UserError, match="max_prompt_tokens: -1"):
        OptionScorer(T5, None, TOK, max_prompt_tokens=-1)
    scorer = OptionScorer(T5, None, TOK)
    with pytest.raises(ValueError, match="2 prompts but 1 option lists"):
        scorer(["a", "b"], [["x"]])
    with pytest.raises(TypeError, match="not a string"):
        scorer(["a"], ["ABCD"])
    assert scorer(["a"], [[]]) == [[]]
