"""Two JAX processes on this machine, joined over loopback (gloo collectives on CPU), each
with one device and its slice of the global batch, train like one process does."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from trainers.checkpoint import checkpoint_dir
from trainers.job import run_cell
from trainers.process import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from trainers.spec import CellSpec

STEPS = 2
SPEC = {
    "sweep": "multihost-test",
    "model": {"name": "test-tiny", "vocab_size": 384, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16,
              "num_encoder_layers": 1, "num_decoder_layers": 1, "dropout_rate": 0.1},
    "data": {"task_count": 9, "input_length": 32, "target_length": 16, "examples_per_task": 20},
    "optim": {"batch_size": 4, "steps": STEPS, "learning_rate": 1e-2},
}
KEY = CellSpec.from_dict(SPEC).key()

_CHILD = """
import json, sys
from trainers.job import run_cell
print("RESULT " + json.dumps(run_cell(json.loads(sys.argv[1]), home=sys.argv[2])), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(home: Path) -> list[np.ndarray]:
    # Saved across two processes' devices: restore onto this process's one device.
    path = checkpoint_dir(home, KEY) / str(STEPS) / "state"
    ckptr = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), ckptr.metadata(path).item_metadata
    )
    state = ckptr.restore(path, target)
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    multi = {**SPEC, "mesh": {"devices": 2, "hosts": 2, "data": 2}}
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            # Faster compiles; the comparison with the single process is within tolerance.
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
            ENV_COORDINATOR: f"127.0.0.1:{port}",
            ENV_NUM_PROCESSES: "2",
            ENV_PROCESS_ID: str(pid),
        }
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(multi), str(tmp_path / "multi")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    outs = []
    try:
        # The single-process reference runs while the two processes compile and train.
        single = run_cell(SPEC, home=str(tmp_path / "single"))
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-4000:]
            outs.append(json.loads(out.split("RESULT ", 1)[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["status"] for o in outs] == ["finished", "finished"]
    assert outs[0]["final_loss"] == outs[1]["final_loss"]

    assert single["final_loss"] == pytest.approx(outs[0]["final_loss"], rel=1e-5)
    # The held-out loss is evaluated on the two processes' mesh, parameters left sharded.
    assert outs[0]["eval"] == outs[1]["eval"]
    assert single["eval"]["eval/loss"] == pytest.approx(outs[0]["eval"]["eval/loss"], rel=1e-5)
    assert single["tokens"] == outs[0]["tokens"]
    for a, b in zip(_params(tmp_path / "multi"), _params(tmp_path / "single")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
