"""The train step and loop on a tiny T5 fed by the real packing pipeline."""

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers.job import make_setup
from trainers.spec import CellSpec, DataConfig, MeshConfig, ModelConfig, OptimConfig
from trainers.loop import train_loop
from trainers.models.loss import token_loss
from trainers.train import NonFiniteLoss, init_state

LI, LT = 32, 16
TINY = ModelConfig(
    name="test-tiny", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
    num_encoder_layers=1, num_decoder_layers=1,
)
DATA = DataConfig(task_count=9, input_length=LI, target_length=LT, examples_per_task=20, tokenizer="byte")


def _batches(home: Path, batch_size: int = 8, seed: int = 0):
    from trainers.data.pipeline import make_batches

    return make_batches(DATA, "t5", batch_size, seed, home)


def _params(cfg: ModelConfig, seed: int = 0):
    from trainers.models import init_params

    return init_params(cfg, jax.random.PRNGKey(seed), input_length=LI, target_length=LT)


def _run(home, optim: OptimConfig, steps: int, model: ModelConfig = TINY, logs=None):
    setup = make_setup(model, optim, MeshConfig(), LI, LT)
    state = init_state(setup, _params(model), seed=0)
    logs = logs if logs is not None else []
    result = train_loop(
        setup, state, iter(_batches(home, optim.batch_size)), total_steps=steps,
        log_metrics=lambda m, s: logs.append((s, m)),
    )
    return result, logs


def test_token_loss_is_weighted_sum_with_z_loss():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # Z = 1 per position
    targets = jnp.array([[0, 2]])
    weights = jnp.array([[1.0, 0.0]])  # second position is padding
    ce, z, n = token_loss(logits, targets, weights, z_loss=1e-4)
    assert float(ce) == pytest.approx(-math.log(0.5), rel=1e-6)
    assert float(z) == pytest.approx(0.0, abs=1e-9) and float(n) == 1.0
    # Shifting all logits by c changes log Z by c: z-loss becomes z * c^2 per weighted token.
    ce2, z2, _ = token_loss(logits + 3.0, targets, weights, z_loss=1e-4)
    assert float(ce2) == pytest.approx(float(ce), rel=1e-5) and float(z2) == pytest.approx(9e-4, rel=1e-4)


@pytest.mark.slow
def test_micro_batches_match_full_batch(tmp_path):
    one, _ = _run(tmp_path, OptimConfig(batch_size=8, micro_batches=1, learning_rate=1e-2), steps=2)
    two, _ = _run(tmp_path, OptimConfig(batch_size=8, micro_batches=2, learning_rate=1e-2), steps=2)
    assert one.final_loss == pytest.approx(two.final_loss, rel=1e-5)
    for a, b in zip(jax.tree.leaves(one.state["params"]), jax.tree.leaves(two.state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_loss_decreases_and_metrics_are_logged_every_step(tmp_path):
    # Unrolled layers: XLA's cost analysis counts a scanned loop body once.
    result, logs = _run(tmp_path, OptimConfig(batch_size=8, learning_rate=1e-2), steps=30,
                        model=dataclasses.replace(TINY, scan_layers=False))
    losses = [m["train/loss"] for _, m in logs if "train/loss" in m]
    assert [s for s, m in logs if "train/loss" in m] == list(range(1, 31))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert result.status == "finished" and result.steps == 30
    step_metrics = logs[-1][1]
    for k in ("train/step_s", "train/tokens_per_s", "train/useful_tokens_per_s", "train/mfu"):
        assert step_metrics[k] > 0, k
    assert step_metrics["train/useful_tokens_per_s"] <= step_metrics["train/tokens_per_s"]
    once = next(m for s, m in logs if "train/xla_step_flops" in m)
    assert once["train/xla_step_flops"] > 0 and once["train/analytic_step_flops"] > 0
    # XLA's count of a train step and the 6ND-style analytic count agree in magnitude.
    assert 0.2 < once["train/xla_step_flops"] / once["train/analytic_step_flops"] < 5
    assert result.counters["target_tokens"] > 0 and result.counters["input_tokens"] > 0


@pytest.mark.slow
def test_bfloat16_compute_runs(tmp_path):
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    result, logs = _run(tmp_path, OptimConfig(batch_size=8, learning_rate=1e-2), steps=2, model=cfg)
    assert math.isfinite(result.final_loss)
    # Scanned layers (the default): XLA would count one layer, so only the analytic count is logged.
    assert any("train/analytic_step_flops" in m for _, m in logs)
    assert not any("train/xla_step_flops" in m for _, m in logs)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(result.state["params"]))


@pytest.mark.slow
def test_non_finite_loss_names_the_step(tmp_path):
    optim = OptimConfig(batch_size=8, learning_rate=1e-2)  # same step as above: compiled once
    setup = make_setup(TINY, optim, MeshConfig(), LI, LT)
    state = init_state(setup, _params(TINY), seed=0)

    drawn = []

    def poisoned():
        for i, batch in enumerate(_batches(tmp_path)):
            if i == 2:  # the third step's batch carries a NaN loss weight
                batch["decoder_loss_weights"][0, 0] = np.nan
            drawn.append(i)
            yield batch

    logs = []
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss nan at step 3"):
        train_loop(setup, state, poisoned(), total_steps=5,
                   log_metrics=lambda m, s: logs.append((s, len(drawn))) if "train/loss" in m else None)
    # Step N's metrics are read once step N+1 is launched: the host never waits for the
    # step it just launched, and the NaN of step 3 is seen after step 4 started.
    assert logs == [(1, 2), (2, 3)] and len(drawn) == 4


def test_cell_spec_round_trips_for_the_test_configs():
    spec = CellSpec(model=TINY, data=DATA)
    assert CellSpec.from_dict(spec.to_dict()) == spec
