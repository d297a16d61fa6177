"""Scanned layers (`model.scan_layers`) compute what unrolled layers compute from the same
weights: loss, gradients, an Adafactor step, decoding and option scoring, for both families;
and base checkpoints convert between the layouts."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers import models
from trainers.optim import build_optimizer
from trainers.spec import ModelConfig, OptimConfig

T5 = ModelConfig(vocab_size=64, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_encoder_layers=2, num_decoder_layers=1)
PALM = ModelConfig(family="decoder", vocab_size=64, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_kv_heads=1,
                   num_encoder_layers=0, num_decoder_layers=2, tie_embeddings=True, parallel_block=True)
PROMPTS = jnp.array([[5, 6, 7, 9], [8, 9, 0, 0]])


def _unrolled(cfg):
    return dataclasses.replace(cfg, scan_layers=False)


def _batch(cfg):
    rng = np.random.default_rng(0)
    return {k: jnp.asarray(rng.integers(1, cfg.vocab_size, v.shape), jnp.int32)
            for k, v in models.dummy_batch(cfg, 2, 6, 5).items()}


def _close(a, b, atol=1e-5):
    return jax.tree.all(jax.tree.map(lambda x, y: bool(np.allclose(x, y, atol=atol)), a, b))


@pytest.fixture(scope="module", params=[T5, PALM], ids=["t5", "decoder"])
def model(request):
    cfg = request.param
    params = models.init_params(cfg, jax.random.key(0))
    return cfg, params, models.convert_layout(cfg, params, scan_layers=False)


def test_layouts_differ_only_by_the_layers_axis(model):
    cfg, scanned, unrolled = model
    axes = jax.tree.leaves(models.logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    assert any(a[0] == "layers" for a in axes)
    assert models.param_count(scanned) == models.param_count(unrolled)
    assert _close(models.convert_layout(_unrolled(cfg), unrolled, scan_layers=True), scanned, atol=0)


@pytest.mark.slow
def test_same_loss_and_gradients(model):
    cfg, scanned, unrolled = model
    batch = _batch(cfg)

    def loss(p, c):
        return jnp.mean(jax.nn.log_softmax(models.build(c).apply({"params": p}, batch)) ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    # Rematerialising (here keeping matmul outputs) changes memory, never values.
    (l1, g1) = grad(scanned, dataclasses.replace(cfg, remat=True, remat_policy="dots"))
    (l2, g2) = grad(unrolled, _unrolled(cfg))
    # The same float32 sums in another order: equal to a few ulps of the loss, whatever the CPU's vector width.
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    assert _close(g1, models.convert_layout(_unrolled(cfg), g2, scan_layers=True))


@pytest.mark.slow
def test_adafactor_steps_each_layer_as_its_own_tensor(model):
    cfg, scanned, unrolled = model
    opt = build_optimizer(OptimConfig(learning_rate=0.1, factored_min_dim=8))
    grads = jax.tree.map(lambda p: jnp.sin(p * 3.0), unrolled)
    step = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])
    u_unrolled = step(grads, unrolled)
    u_scanned = step(models.convert_layout(_unrolled(cfg), grads, scan_layers=True), scanned)
    assert _close(u_scanned, models.convert_layout(_unrolled(cfg), u_unrolled, scan_layers=True))


@pytest.mark.slow
def test_decoding_and_option_scoring_match(model):
    cfg, scanned, unrolled = model
    results = []
    for c, p in ((cfg, scanned), (_unrolled(cfg), unrolled)):
        state = models.prefill(c, p, PROMPTS, 3)
        steps = []
        tokens = jnp.zeros(2, jnp.int32)
        for _ in range(3):
            logits, state = models.decode_step(c, p, state, tokens)
            tokens = jnp.argmax(logits, -1).astype(jnp.int32)
            steps.append(logits)
        options = models.option_logits(c, p, PROMPTS, jnp.array([0, 1, 1]), jnp.array([[0, 3, 4], [0, 5, 0], [0, 6, 7]]))
        results.append((steps, options, state))
    assert _close(results[0][:2], results[1][:2])
    shapes = [[x.shape for x in jax.tree.leaves(r[2])] for r in results]
    assert shapes[0] == shapes[1]  # one cache layout: [layers, batch, length, kv heads, d_kv]
    state_axes = models.decode_state_axes(cfg)
    assert jax.tree.map(len, state_axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.map(jnp.ndim, results[0][2])
    assert state_axes["cache"]["k"][:3] == ("layers", "batch", "length")


@pytest.mark.slow
def test_repeat_state_repeats_rows_of_layer_major_caches(model):
    cfg, scanned, _ = model
    state = models.prefill(cfg, scanned, PROMPTS, 2)
    repeated = models.repeat_state(state, 3)
    assert repeated["cache"]["k"].shape[1] == 6 and repeated["pos"].shape == (6,)
    np.testing.assert_array_equal(repeated["cache"]["k"][:, 3], state["cache"]["k"][:, 1])


@pytest.mark.slow
def test_base_checkpoint_saved_unrolled_loads_scanned(tmp_path):
    cfg = T5
    scanned = models.init_params(cfg, jax.random.key(1))
    unrolled = models.convert_layout(cfg, scanned, scan_layers=False)
    models.save_pretrained(tmp_path / "old", _unrolled(cfg), unrolled)
    meta = tmp_path / "old" / "model.json"
    fields = json.loads(meta.read_text())
    del fields["scan_layers"]  # written before the field existed: reads as the default, scanned
    meta.write_text(json.dumps(fields))
    loaded_cfg, loaded = models.load_pretrained(tmp_path / "old")
    assert loaded_cfg.scan_layers and _close(loaded, scanned, atol=0)
    models.save_pretrained(tmp_path / "new", cfg, scanned)
    _, back = models.load_pretrained(tmp_path / "new", scan_layers=False)
    assert _close(back, unrolled, atol=0)
