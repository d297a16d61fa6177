"""T5 v1.1 encoder-decoder: structure, packing, dropout, remat, dtypes, checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers import models
from trainers.models.t5 import relative_position_bucket
from trainers.spec import ModelConfig, UserError

CFG = ModelConfig(vocab_size=100, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_encoder_layers=1, num_decoder_layers=1)


def expected_t5_params(c: ModelConfig) -> int:
    """T5 v1.1 parameter count written out from the architecture."""
    attn = 4 * c.d_model * c.num_heads * c.d_kv
    mlp = 3 * c.d_model * c.d_ff
    relpos = c.relative_attention_num_buckets * c.num_heads
    encoder = c.num_encoder_layers * (attn + mlp + 2 * c.d_model) + relpos + c.d_model
    decoder = c.num_decoder_layers * (2 * attn + mlp + 3 * c.d_model) + relpos + c.d_model
    return encoder + decoder + 2 * c.vocab_size * c.d_model  # shared input + untied lm_head


@pytest.fixture(scope="module")
def params():
    return models.init_params(CFG, jax.random.key(0, impl="rbg"))


def apply_fn(cfg: ModelConfig, deterministic: bool = True):
    """Jitted forward pass (one compile, instead of op-by-op dispatch)."""
    module = models.build(cfg)
    return jax.jit(lambda p, batch, rng=None: module.apply(
        {"params": p}, batch, deterministic, rngs=None if rng is None else {"dropout": rng}))


def _examples(rng, n, lo, hi):
    return [rng.integers(3, 100, int(rng.integers(lo, hi))).astype(np.int32) for _ in range(n)]


def test_structure_and_count(params):
    assert set(params) == {"shared", "encoder", "decoder", "lm_head"}
    assert params["lm_head"]["kernel"].shape == (32, 100)
    assert params["encoder"]["relpos_bias"]["rel_embedding"].shape == (32, 4)
    # d_kv is independent of d_model / num_heads; scanned layers add a leading layers axis.
    assert params["decoder"]["layers"]["cross_attention"]["query"].shape == (1, 32, 4, 8)
    assert models.param_count(params) == expected_t5_params(CFG)
    shapes = models.param_shapes(CFG)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda p: p.shape, params)


def test_param_shapes_of_xxl_need_no_memory():
    xxl = ModelConfig(name="t5-xxl", vocab_size=32128, d_model=4096, d_ff=10240, num_heads=64, d_kv=64,
                      num_encoder_layers=24, num_decoder_layers=24)
    shapes = models.param_shapes(xxl)
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert n == expected_t5_params(xxl) and 11.0e9 < n < 11.5e9  # T5 v1.1 XXL is ~11B


def test_matches_accounting_when_available():
    accounting = pytest.importorskip("trainers.accounting")
    for cfg in (CFG, ModelConfig()):
        assert accounting.param_count(cfg) == models.param_count(models.param_shapes(cfg))


def test_relative_position_buckets():
    rel = jnp.array([-200, -128, -20, -8, -1, 0, 1, 7, 8, 20, 127, 200])
    bi = relative_position_bucket(rel, True, 32, 128)
    # Values from HF's T5Attention._relative_position_bucket. Key before query fills
    # buckets 0..15, after it 16..31; exact up to distance 7, log-spaced up to 128.
    assert bi.tolist() == [15, 15, 10, 8, 1, 0, 17, 23, 24, 26, 31, 31]
    uni = relative_position_bucket(rel, False, 32, 128)
    assert uni.tolist() == [31, 31, 17, 8, 1, 0, 0, 0, 0, 0, 0, 0]  # only the past is told apart


def test_packing_matches_separate_examples(params):
    """Two examples packed in one row give the logits each gets alone."""
    rng = np.random.default_rng(1)
    inputs, targets = _examples(rng, 2, 3, 7), _examples(rng, 2, 2, 5)
    fwd = apply_fn(CFG)

    def alone(inp, tgt):
        dec_in = np.concatenate([[0], tgt[:-1]]).astype(np.int32)
        out = fwd(params, {"encoder_input_tokens": inp[None], "decoder_input_tokens": dec_in[None]})
        return np.asarray(out[0])

    Li, Lt = 16, 12
    packed = {k: np.zeros((1, L), np.int32) for k, L in (
        ("encoder_input_tokens", Li), ("encoder_segment_ids", Li), ("encoder_positions", Li),
        ("decoder_input_tokens", Lt), ("decoder_segment_ids", Lt), ("decoder_positions", Lt))}
    ei = di = 0
    for seg, (inp, tgt) in enumerate(zip(inputs, targets), start=1):
        packed["encoder_input_tokens"][0, ei:ei + len(inp)] = inp
        packed["encoder_segment_ids"][0, ei:ei + len(inp)] = seg
        packed["encoder_positions"][0, ei:ei + len(inp)] = np.arange(len(inp))
        packed["decoder_input_tokens"][0, di:di + len(tgt)] = np.concatenate([[0], tgt[:-1]])
        packed["decoder_segment_ids"][0, di:di + len(tgt)] = seg
        packed["decoder_positions"][0, di:di + len(tgt)] = np.arange(len(tgt))
        ei, di = ei + len(inp), di + len(tgt)
    out = np.asarray(fwd(params, packed)[0])
    start = 0
    for inp, tgt in zip(inputs, targets):
        np.testing.assert_allclose(out[start:start + len(tgt)], alone(inp, tgt), atol=1e-5)
        start += len(tgt)


def test_dropout_only_when_not_deterministic(params):
    cfg = ModelConfig(**{**CFG.__dict__, "dropout_rate": 0.3})  # same parameter tree as CFG
    batch = models.dummy_batch(cfg, 2, 6, 5)
    eval_fwd, train_fwd = apply_fn(cfg, True), apply_fn(cfg, False)
    a, b = eval_fwd(params, batch), eval_fwd(params, batch)
    c, d = train_fwd(params, batch, jax.random.key(1, impl="rbg")), train_fwd(params, batch, jax.random.key(2, impl="rbg"))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(c, d)


def test_remat_gives_same_values_and_gradients(params):
    batch = {"encoder_input_tokens": jnp.array([[5, 6, 7, 1, 0]]), "decoder_input_tokens": jnp.array([[0, 8, 9, 1]])}
    remat = ModelConfig(**{**CFG.__dict__, "remat": True})

    def loss(p, cfg):
        return jnp.mean(models.build(cfg).apply({"params": p}, batch) ** 2)

    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, CFG)
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(params, remat)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, atol=1e-6)), g1, g2))


def test_bfloat16_params_and_compute(params):
    cfg = ModelConfig(**{**CFG.__dict__, "param_dtype": "bfloat16", "dtype": "bfloat16"})
    assert {x.dtype for x in jax.tree.leaves(models.param_shapes(cfg))} == {jnp.dtype("bfloat16")}
    p = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    logits = apply_fn(cfg)(p, models.dummy_batch(cfg, 2, 5, 4))
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
    ref = apply_fn(CFG)(params, models.dummy_batch(cfg, 2, 5, 4))
    assert float(jnp.abs(logits - ref).max()) < 0.1 * float(jnp.abs(ref).max())  # bf16 close to f32


def test_bad_configs_are_user_errors():
    with pytest.raises(UserError, match="model.family"):
        models.build(ModelConfig(family="gpt"))
    with pytest.raises(UserError, match="tie_embeddings"):
        models.build(ModelConfig(tie_embeddings=True))
    with pytest.raises(UserError, match="num_kv_heads"):
        models.build(ModelConfig(num_heads=4, num_kv_heads=3))
    with pytest.raises(UserError, match="'fp8'"):
        models.build(ModelConfig(param_dtype="fp8"))
    with pytest.raises(UserError, match="dropout_rate"):
        models.build(ModelConfig(dropout_rate=1.5))
    with pytest.raises(UserError, match="remat_policy.*did you mean 'dots'"):
        models.build(ModelConfig(remat=True, remat_policy="dot"))


def test_save_and_load_pretrained(tmp_path, params):
    models.save_pretrained(tmp_path / "ckpt", CFG, params)
    cfg, loaded = models.load_pretrained(tmp_path / "ckpt")
    assert cfg == CFG
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, loaded))
    with pytest.raises(UserError, match="missing model.json"):
        models.load_pretrained(tmp_path)
    meta = tmp_path / "ckpt" / "model.json"
    meta.write_text(meta.read_text().replace('"d_ff": 64', '"d_ff": 128'))
    with pytest.raises(UserError, match="does not match model.json"):
        models.load_pretrained(tmp_path / "ckpt")
