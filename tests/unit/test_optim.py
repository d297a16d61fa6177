"""The optimizer is T5X's Adafactor at a constant learning rate; others build and step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainers.optim import build_optimizer, build_schedule
from trainers.spec import OptimConfig, UserError


def _params():
    return {"big": jnp.ones((256, 192)), "small": jnp.ones((64, 256)), "vec": jnp.ones((300,))}


def _leaves_named(state, name):
    found = []

    def visit(x):
        if hasattr(x, "_fields"):
            if name in x._fields:
                found.append(getattr(x, name))
            for f in x._fields:
                visit(getattr(x, f))
        elif isinstance(x, (tuple, list)):
            for y in x:
                visit(y)

    visit(state)
    return found


def test_adafactor_factors_only_large_matrices_and_keeps_no_momentum():
    opt = build_optimizer(OptimConfig(factored_min_dim=128))
    state = opt.init(_params())
    (v_row,) = _leaves_named(state, "v_row")
    (v_col,) = _leaves_named(state, "v_col")
    (v,) = _leaves_named(state, "v")
    # Factored: a row and a column statistic instead of the full matrix.
    assert {v_row["big"].shape, v_col["big"].shape} == {(256,), (192,)}
    assert v["big"].shape in {(), (1,)}
    # 64 < 128: the full second moment is kept for this matrix and for vectors.
    assert v["small"].shape == (64, 256) and v["vec"].shape == (300,)
    # No first moment anywhere (T5X default): nothing else of parameter size.
    sizes = sum(x.size for x in jax.tree.leaves(state))
    assert sizes < 256 + 192 + 64 * 256 + 300 + 64


def test_adafactor_update_is_clipped_and_parameter_scaled():
    cfg = OptimConfig(learning_rate=1.0)
    opt = build_optimizer(cfg)
    params = {"w": jnp.full((4, 4), 2.0)}
    grads = {"w": jnp.full((4, 4), 1e3)}
    updates, _ = opt.update(grads, opt.init(params), params)
    # Update RMS clipped to 1, scaled by parameter RMS (2) and lr (1): |u| = 2.
    np.testing.assert_allclose(np.abs(np.asarray(updates["w"])), 2.0, rtol=1e-3)


def test_constant_schedule_is_constant():
    sched = build_schedule(OptimConfig(learning_rate=5e-4))
    assert float(sched(0)) == pytest.approx(5e-4) and float(sched(10_000)) == pytest.approx(5e-4)


def test_warmup_and_cosine_schedules():
    warm = build_schedule(OptimConfig(learning_rate=1.0, schedule="linear_warmup_constant", warmup_steps=10))
    assert float(warm(0)) == pytest.approx(0.1)
    assert float(warm(5)) < 1.0 and float(warm(10)) == pytest.approx(1.0) and float(warm(500)) == pytest.approx(1.0)
    cos = build_schedule(OptimConfig(learning_rate=1.0, schedule="cosine", warmup_steps=0, steps=100))
    assert float(cos(0)) == pytest.approx(1.0)
    assert float(cos(50)) == pytest.approx(0.5, abs=1e-3)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_comparison_optimizers_step(name):
    opt = build_optimizer(OptimConfig(optimizer=name, learning_rate=0.1, grad_clip=1.0))
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.full((3,), 10.0)}
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["w"]) < 1.0)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("optimizer", "adam", "allowed: adafactor, adamw, sgd"),
        ("schedule", "linear", "allowed: constant, linear_warmup_constant, cosine"),
        ("micro_batches", 3, "divide batch_size 64"),
        ("learning_rate", 0.0, "must be > 0"),
    ],
)
def test_bad_values_are_user_errors(field, value, needle):
    with pytest.raises(UserError) as e:
        build_optimizer(OptimConfig(**{field: value}))
    assert f"optim.{field}" in str(e.value) and needle in str(e.value)
