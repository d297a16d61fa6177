"""PaLM-style decoder-only model: structure, masks, packing, rotary, tied embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers import models
from trainers.spec import ModelConfig

CFG = ModelConfig(
    name="tiny-palm", family="decoder", vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8,
    num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=2, tie_embeddings=True, parallel_block=True,
)


def expected_decoder_params(c: ModelConfig) -> int:
    kv = c.num_kv_heads or c.num_heads
    attn = c.d_model * c.d_kv * (2 * c.num_heads + 2 * kv)  # q, out: H heads; k, v: kv heads
    norms = (1 if c.parallel_block else 2) * c.d_model
    layer = attn + 3 * c.d_model * c.d_ff + norms
    embeddings = (1 if c.tie_embeddings else 2) * c.vocab_size * c.d_model
    return c.num_decoder_layers * layer + c.d_model + embeddings


@pytest.fixture(scope="module")
def params():
    return models.init_params(CFG, jax.random.key(0, impl="rbg"))


@pytest.fixture(scope="module")
def fwd():
    module = models.build(CFG)
    return jax.jit(lambda p, batch: module.apply({"params": p}, batch))


def test_structure_and_count(params):
    layer = params["layers"]  # scanned: a leading axis over the 2 layers
    assert layer["attention"]["key"].shape == (2, 32, 1, 8)  # one shared K/V head (multi-query)
    assert layer["attention"]["query"].shape == (2, 32, 4, 8)
    assert "pre_mlp_norm" not in layer  # parallel block: one norm feeds attention and MLP
    assert "lm_head" not in params  # tied input/output embedding
    assert models.param_count(params) == expected_decoder_params(CFG)
    for variant in ({"parallel_block": False}, {"tie_embeddings": False}, {"num_kv_heads": 2}, {"num_kv_heads": 0}):
        cfg = ModelConfig(**{**CFG.__dict__, **variant})
        assert models.param_count(models.param_shapes(cfg)) == expected_decoder_params(cfg), variant


def test_param_shapes_of_palm_540b_need_no_memory():
    palm = ModelConfig(name="palm-540b", family="decoder", vocab_size=256000, d_model=18432, d_ff=4 * 18432,
                       num_heads=48, d_kv=256, num_kv_heads=1, num_encoder_layers=0, num_decoder_layers=118,
                       tie_embeddings=True, parallel_block=True, param_dtype="bfloat16")
    n = models.param_count(models.param_shapes(palm))
    assert n == expected_decoder_params(palm) and 5.3e11 < n < 5.5e11


def test_causal(params, fwd):
    rng = np.random.default_rng(0)
    a = rng.integers(3, 100, (1, 10)).astype(np.int32)
    b = a.copy()
    b[0, 6:] = rng.integers(3, 100, 4)
    la, lb = fwd(params, {"decoder_input_tokens": a}), fwd(params, {"decoder_input_tokens": b})
    np.testing.assert_allclose(la[0, :6], lb[0, :6], atol=1e-6)
    assert not np.allclose(la[0, 6:], lb[0, 6:])


def test_rotary_is_relative(params, fwd):
    """Shifting every position by a constant leaves the logits unchanged (RoPE is relative)."""
    tokens = np.random.default_rng(1).integers(3, 100, (2, 9)).astype(np.int32)
    seg = np.ones_like(tokens)
    pos = np.broadcast_to(np.arange(9, dtype=np.int32), tokens.shape)
    base = fwd(params, {"decoder_input_tokens": tokens, "decoder_segment_ids": seg, "decoder_positions": pos})
    shifted = fwd(params, {"decoder_input_tokens": tokens, "decoder_segment_ids": seg, "decoder_positions": pos + 37})
    np.testing.assert_allclose(base, shifted, atol=2e-5)
    swapped = fwd(params, {"decoder_input_tokens": tokens, "decoder_segment_ids": seg, "decoder_positions": pos[:, ::-1]})
    assert not np.allclose(base, swapped, atol=1e-3)


def test_packing_matches_separate_examples(params, fwd):
    rng = np.random.default_rng(2)
    examples = [rng.integers(3, 100, n).astype(np.int32) for n in (5, 7)]
    L = 16
    batch = {k: np.zeros((1, L), np.int32) for k in ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")}
    start = 0
    for seg, ex in enumerate(examples, start=1):
        batch["decoder_input_tokens"][0, start:start + len(ex)] = ex
        batch["decoder_segment_ids"][0, start:start + len(ex)] = seg
        batch["decoder_positions"][0, start:start + len(ex)] = np.arange(len(ex))
        start += len(ex)
    packed = np.asarray(fwd(params, batch)[0])
    start = 0
    for ex in examples:
        padded = np.zeros((1, L), np.int32)
        padded[0, :len(ex)] = ex
        alone = np.asarray(fwd(params, {"decoder_input_tokens": padded})[0, :len(ex)])
        np.testing.assert_allclose(packed[start:start + len(ex)], alone, atol=1e-5)
        start += len(ex)


def test_tied_logits_are_scaled_embedding_products(params):
    """Logits = final hidden state . embedding * d_model**-0.5 (PaLM's tied output layer)."""
    from trainers.models.decoder import DecoderOnly

    tokens = jnp.array([[5, 6, 7, 8]])
    module = models.build(CFG)

    @jax.jit
    def both(p):
        hidden, _ = module.apply({"params": p}, tokens, jnp.ones_like(tokens), jnp.arange(4)[None], "eval",
                                 method=DecoderOnly._run)
        return hidden, module.apply({"params": p}, {"decoder_input_tokens": tokens})

    hidden, logits = both(params)
    expected = hidden @ params["token_embed"]["embedding"].T / np.sqrt(CFG.d_model)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_matches_accounting_when_available():
    accounting = pytest.importorskip("trainers.accounting")
    for variant in ({}, {"parallel_block": False, "tie_embeddings": False}, {"num_kv_heads": 2}):
        cfg = ModelConfig(**{**CFG.__dict__, **variant})
        assert accounting.param_count(cfg) == models.param_count(models.param_shapes(cfg)), variant
