"""Sharded training on 8 simulated CPU devices equals training on one device.

The device count of a JAX process is fixed at start-up, so the meshes are tried in a
subprocess started with --xla_force_host_platform_device_count=8.
"""

import json
import os
import subprocess
import sys

import pytest

_CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import jax, numpy as np
from trainers.data.pipeline import make_batches
from trainers.job import make_setup
from trainers.models import init_params
from trainers.spec import DataConfig, MeshConfig, ModelConfig, OptimConfig
from trainers.loop import train_loop
from trainers.train import init_state

assert jax.device_count() == 8, jax.devices()
LI, LT = 32, 16
model = ModelConfig(name="test-tiny", vocab_size=384, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                    num_encoder_layers=1, num_decoder_layers=1)
data = DataConfig(task_count=9, input_length=LI, target_length=LT, examples_per_task=20)
optim = OptimConfig(batch_size=8, learning_rate=1e-2, steps=2)
home = Path(tempfile.mkdtemp())
host_params = jax.device_get(init_params(model, jax.random.PRNGKey(0), input_length=LI, target_length=LT))
out = {}
for shape in [(1, 1, 1), (2, 2, 2), (4, 2, 1), (2, 1, 4)]:
    d, f, t = shape
    setup = make_setup(model, optim, MeshConfig(devices=d * f * t, data=d, fsdp=f, tensor=t), LI, LT)
    state = init_state(setup, host_params, seed=0)
    sharded = sum(not s.is_fully_replicated for s in jax.tree.leaves(setup.param_shardings))
    losses = []
    result = train_loop(setup, state, iter(make_batches(data, "t5", 8, 0, home)), total_steps=2,
                        log_metrics=lambda m, s: losses.append(m["train/loss"]) if "train/loss" in m else None)
    params = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(result.state["params"]))]
    out[str(shape)] = {"losses": losses, "params": params, "sharded_leaves": sharded,
                       "devices": len(setup.mesh.devices.flat)}

ref = out["(1, 1, 1)"]
report = {}
for name, r in out.items():
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(r["params"], ref["params"]))
    report[name] = {"losses": r["losses"], "max_param_diff": diff, "sharded_leaves": r["sharded_leaves"],
                    "devices": r["devices"]}
print("REPORT " + json.dumps(report))
"""


@pytest.mark.slow
def test_meshes_give_the_same_loss_and_params_as_one_device():
    # Backend optimisation level 0 compiles the four meshes' steps several times faster;
    # all runs being compared share it.
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    ref = report["(1, 1, 1)"]
    assert ref["devices"] == 1 and ref["sharded_leaves"] == 0
    for name in ("(2, 2, 2)", "(4, 2, 1)", "(2, 1, 4)"):
        r = report[name]
        assert r["devices"] == 8, name
        assert r["sharded_leaves"] > 0, f"{name}: no parameter is actually sharded"
        assert r["losses"] == pytest.approx(ref["losses"], rel=1e-5), name
        # Reductions run in another order on another mesh: float32 rounding, far below
        # the size of one update (learning rate 1e-2 times the parameter RMS).
        assert r["max_param_diff"] < 1e-4, (name, r["max_param_diff"])
