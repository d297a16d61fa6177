"""Incremental decoding (prefill + decode_step) reproduces the full forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers import models
from trainers.spec import ModelConfig

T5 = ModelConfig(vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_encoder_layers=1, num_decoder_layers=2)
PALM = ModelConfig(family="decoder", vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_kv_heads=1,
                   num_encoder_layers=0, num_decoder_layers=2, tie_embeddings=True, parallel_block=True)
GQA = ModelConfig(family="decoder", vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_kv_heads=2,
                  num_encoder_layers=0, num_decoder_layers=1, tie_embeddings=False, parallel_block=False)

LENGTHS = (3, 6, 1)  # right-padded prompts of different lengths in one batch
PROMPT_LEN, STEPS = 6, 5


def _data():
    rng = np.random.default_rng(0)
    prompts = np.zeros((len(LENGTHS), PROMPT_LEN), np.int32)
    for row, n in enumerate(LENGTHS):
        prompts[row, :n] = rng.integers(3, 100, n)
    targets = rng.integers(3, 100, (len(LENGTHS), STEPS)).astype(np.int32)
    return prompts, targets


def _reference(cfg, params, prompts, targets):
    """Full-sequence (teacher-forced) logits [B, STEPS, V] at the positions decoding visits."""
    module = models.build(cfg)
    fwd = jax.jit(lambda p, batch: module.apply({"params": p}, batch))
    if cfg.family == "t5":
        dec_in = np.concatenate([np.zeros((len(LENGTHS), 1), np.int32), targets[:, :-1]], axis=1)
        return np.asarray(fwd(params, {"encoder_input_tokens": prompts, "decoder_input_tokens": dec_in}))
    # Training's layout: the prompt and targets shifted right behind a 0, one segment.
    dec_in = np.zeros((len(LENGTHS), PROMPT_LEN + STEPS), np.int32)
    segments = np.zeros_like(dec_in)
    for row, n in enumerate(LENGTHS):
        seq = np.concatenate([prompts[row, :n], targets[row]])
        dec_in[row, 1:n + STEPS] = seq[:-1]
        segments[row, :n + STEPS] = 1
    full = np.asarray(fwd(params, {"decoder_input_tokens": dec_in, "decoder_segment_ids": segments}))
    # The logits predicting target t sit at its own position: n + t.
    return np.stack([full[row, n:n + STEPS] for row, n in enumerate(LENGTHS)])


@pytest.mark.parametrize("cfg", [T5, PALM, GQA], ids=["t5", "palm-mqa-parallel-tied", "gqa-serial-untied"])
def test_teacher_forced_decoding_matches_forward(cfg):
    params = models.init_params(cfg, jax.random.key(0, impl="rbg"))
    prompts, targets = _data()
    ref = _reference(cfg, params, prompts, targets)
    state = models.prefill(cfg, params, prompts, STEPS)
    token = np.zeros(len(LENGTHS), np.int32)  # both families start by feeding 0
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for t in range(STEPS):
        logits, state = models.decode_step(cfg, params, state, token)
        assert logits.shape == (len(LENGTHS), cfg.vocab_size) and logits.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(logits), ref[:, t], atol=1e-5, err_msg=f"step {t}")
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes  # fixed-size, jit-friendly
        token = targets[:, t]


def test_greedy_decoding_runs_inside_scan():
    """The state is a plain pytree: a whole greedy loop compiles as one lax.scan."""
    params = models.init_params(PALM, jax.random.key(1, impl="rbg"))
    prompts, _ = _data()

    def greedy(params, prompts):
        state = models.prefill(PALM, params, prompts, STEPS)

        def step(carry, _):
            state, token = carry
            logits, state = models.decode_step(PALM, params, state, token)
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return (state, token), token

        _, tokens = jax.lax.scan(step, (state, jnp.zeros(len(LENGTHS), jnp.int32)), None, length=STEPS)
        return tokens.T

    scanned = np.asarray(jax.jit(greedy)(params, prompts))
    # The same loop step by step in Python.
    state, token, expected = models.prefill(PALM, params, prompts, STEPS), np.zeros(len(LENGTHS), np.int32), []
    for _ in range(STEPS):
        logits, state = models.decode_step(PALM, params, state, token)
        token = np.asarray(jnp.argmax(logits, axis=-1)).astype(np.int32)
        expected.append(token)
    np.testing.assert_array_equal(scanned, np.stack(expected, axis=1))


@pytest.mark.parametrize("cfg", [T5, PALM], ids=["t5", "palm-mqa-parallel-tied"])
def test_repeated_state_decodes_like_repeated_prompts(cfg):
    """Self-consistency shares one prefill per prompt: repeating the state row by row must
    decode exactly as prefilling every copy of the prompt would."""
    params = models.init_params(cfg, jax.random.key(0, impl="rbg"))
    prompts, targets = _data()
    times = 3
    shared = models.repeat_state(models.prefill(cfg, params, prompts, STEPS), times)
    separate = models.prefill(cfg, params, np.repeat(prompts, times, axis=0), STEPS)
    assert jax.tree.map(lambda x: x.shape, shared) == jax.tree.map(lambda x: x.shape, separate)
    token = np.zeros(len(LENGTHS) * times, np.int32)
    for t in range(STEPS):
        a, shared = models.decode_step(cfg, params, shared, token)
        b, separate = models.decode_step(cfg, params, separate, token)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=f"step {t}")
        token = np.repeat(targets[:, t], times)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [T5, GQA], ids=["t5", "gqa-serial-untied"])
def test_stop_sequences_truncate_real_decoding(cfg):
    """Both families, jitted prefill + decode loop: with a stop sequence taken from the greedy
    output itself, every row is the unstopped greedy output up to the stop's first
    completion, then padding. (The untied decoder: a freshly initialised tied one repeats a
    single token, which would make the check trivial.)"""
    from trainers.eval.decoding import EOS_ID, PAD_ID, generate_ids

    params = models.init_params(cfg, jax.random.key(0, impl="rbg"))
    prompts, _ = _data()
    kw = dict(max_new_tokens=12, temperature=0.0, top_k=0)
    free = generate_ids(cfg, params, prompts, jax.random.PRNGKey(0), **kw)
    stop = tuple(int(t) for t in free[0, 3:5])
    assert EOS_ID not in free[0, :5] and PAD_ID not in stop
    stopped = generate_ids(cfg, params, prompts, jax.random.PRNGKey(0), stop_ids=(stop,), **kw)
    ends = []
    for row, out in zip(free, stopped):
        end = next((i + len(stop) for i in range(len(row)) if tuple(row[i:i + len(stop)]) == stop), len(row))
        ends.append(end)
        np.testing.assert_array_equal(out, np.concatenate([row[:end], np.full(len(row) - end, PAD_ID)]))
    assert ends[0] <= 5 < len(free[0])  # row 0 really was cut short
