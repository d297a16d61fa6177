"""Resume: an interrupted run (should_stop or SIGTERM, with asynchronous checkpoints) ends
bitwise identical to one that never stopped, and a damaged latest checkpoint falls back to
the previous one.

Step N's metrics are logged once step N+1 is launched, so a stop request made when step N's
loss is logged takes effect after step N+1, the step already in flight."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from trainers.checkpoint import Checkpointer, checkpoint_dir
from trainers.job import run_cell
from trainers.spec import CellSpec
from trainers.tracking import MemoryTracker

STEPS = 6
SPEC = {
    "sweep": "resume-test",
    "model": {"name": "test-tiny", "vocab_size": 384, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16,
              "num_encoder_layers": 1, "num_decoder_layers": 1, "dropout_rate": 0.1},
    "data": {"task_count": 9, "input_length": 32, "target_length": 16, "examples_per_task": 20},
    "optim": {"batch_size": 4, "steps": STEPS, "learning_rate": 1e-2},
    "checkpoint": {"every_steps": 2, "keep": 3},
}
KEY = CellSpec.from_dict(SPEC).key()


def _final_params(home: Path, step: int = STEPS) -> list[np.ndarray]:
    state = ocp.StandardCheckpointer().restore(checkpoint_dir(home, KEY) / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _assert_bitwise_equal(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), "parameters differ"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    home = tmp_path_factory.mktemp("uninterrupted")
    tracker = MemoryTracker()
    result = run_cell(SPEC, home=str(home), extra_trackers=(tracker,))
    assert result["status"] == "finished" and result["steps"] == STEPS
    return _final_params(home), tracker, result


def _losses(tracker: MemoryTracker) -> dict[int, float]:
    return dict(tracker.metrics["train/loss"])


@pytest.mark.slow
def test_should_stop_then_resume_is_bitwise_identical(tmp_path, reference):
    ref_params, ref_tracker, ref_result = reference
    first = MemoryTracker()
    stop_after = 3
    result = run_cell(
        SPEC, home=str(tmp_path), extra_trackers=(first,),
        should_stop=lambda: len(first.metrics.get("train/loss", [])) >= stop_after,
    )
    stopped = stop_after + 1
    assert result["status"] == "preempted" and result["steps"] == stopped
    assert checkpoint_dir(tmp_path, KEY).joinpath(str(stopped)).is_dir()
    second = MemoryTracker()
    resumed = run_cell(SPEC, home=str(tmp_path), extra_trackers=(second,))
    assert resumed["status"] == "finished" and resumed["steps"] == STEPS
    # No gap and no repeat in the loss history, and the same losses as the reference.
    assert sorted(_losses(first)) == [1, 2, 3, 4] and sorted(_losses(second)) == [5, 6]
    assert {**_losses(first), **_losses(second)} == _losses(ref_tracker)
    _assert_bitwise_equal(_final_params(tmp_path), ref_params)
    # Token counters travel in the checkpoint, so the resumed run reports the whole run's.
    assert resumed["tokens"] == ref_result["tokens"] and resumed["final_loss"] == ref_result["final_loss"]


_CHILD = """
import json, sys, time
from pathlib import Path
from trainers.job import run_cell

spec, home = json.loads(sys.argv[1]), Path(sys.argv[2])

class SignalWhenAtStep:
    # At step 3, tell the parent we are here and wait until it has sent SIGTERM.
    def log_params(self, p): pass
    def set_tags(self, t): pass
    def log_artifact(self, *a, **k): pass
    def log_metrics(self, m, step):
        if "train/loss" in m and step == 3:
            (home / "at_step_3").write_text("")
            deadline = time.time() + 60
            while not (home / "signal_sent").exists() and time.time() < deadline:
                time.sleep(0.02)

print("RESULT " + json.dumps(run_cell(spec, home=str(home), extra_trackers=(SignalWhenAtStep(),))), flush=True)
"""


@pytest.mark.slow
def test_sigterm_in_a_subprocess_checkpoints_and_resumes(tmp_path, reference):
    ref_params, _, ref_result = reference
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(SPEC), str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.time() + 120
    while not (tmp_path / "at_step_3").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "child never reached step 3"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "signal_sent").write_text("")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["status"] == "preempted" and result["steps"] == 4
    assert "SIGTERM" in err
    resumed = run_cell(SPEC, home=str(tmp_path))
    assert resumed["status"] == "finished" and resumed["steps"] == STEPS
    assert resumed["tokens"] == ref_result["tokens"]
    _assert_bitwise_equal(_final_params(tmp_path), ref_params)


class _SigtermAtStep(MemoryTracker):
    """A tracker that sends this process SIGTERM when the loss of `step` is logged."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if "train/loss" in metrics and step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_with_an_asynchronous_save_in_flight_resumes_bitwise(tmp_path, reference):
    ref_params, ref_tracker, ref_result = reference
    # The save of step 2 starts in the background; SIGTERM comes while step 4 runs.
    first = _SigtermAtStep(3)
    result = run_cell(SPEC, home=str(tmp_path), extra_trackers=(first,))
    assert result["status"] == "preempted" and result["steps"] == 4
    ckdir = checkpoint_dir(tmp_path, KEY)
    # The save in flight completed, and the stop's save is on disk with its manifest.
    assert Checkpointer(ckdir).steps() == [2, 4]
    assert sorted(p.name for p in (ckdir / "manifests").iterdir()) == ["2.json", "4.json"]
    second = MemoryTracker()
    resumed = run_cell(SPEC, home=str(tmp_path), extra_trackers=(second,))
    assert resumed["status"] == "finished" and resumed["steps"] == STEPS
    assert {**_losses(first), **_losses(second)} == _losses(ref_tracker)
    assert sorted(_losses(second)) == [5, 6] and resumed["tokens"] == ref_result["tokens"]
    _assert_bitwise_equal(_final_params(tmp_path), ref_params)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, reference, caplog):
    ref_params, _, ref_result = reference
    run_cell(SPEC, home=str(tmp_path), steps=4)  # checkpoints at steps 2 and 4
    ckdir = checkpoint_dir(tmp_path, KEY)
    assert Checkpointer(ckdir).steps() == [2, 4]
    victim = max((p for p in (ckdir / "4" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        resumed = run_cell(SPEC, home=str(tmp_path))
    assert any("step 4 is damaged" in r.getMessage() for r in caplog.records), caplog.text
    assert resumed["status"] == "finished" and resumed["steps"] == STEPS
    _assert_bitwise_equal(_final_params(tmp_path), ref_params)


@pytest.mark.slow
def test_every_checkpoint_damaged_starts_over_and_says_so(tmp_path, reference, caplog):
    ref_params, _, _ = reference
    run_cell(SPEC, home=str(tmp_path), steps=4)  # checkpoints at steps 2 and 4
    for manifest in (checkpoint_dir(tmp_path, KEY) / "manifests").iterdir():
        manifest.write_text("{garbled")
    tracker = MemoryTracker()
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        resumed = run_cell(SPEC, home=str(tmp_path), extra_trackers=(tracker,))
    assert "the cell starts over from step 0" in caplog.text
    assert "steps 2, 4" in tracker.tags["flanscale.restarted"]
    assert resumed["status"] == "finished" and sorted(_losses(tracker)) == list(range(1, STEPS + 1))
    _assert_bitwise_equal(_final_params(tmp_path), ref_params)


def _toy_state(value: float):
    params = {"w": jnp.full((4, 3), value), "b": jnp.zeros((3,))}
    return {"params": params, "step": jnp.int32(value), "rng": jax.random.PRNGKey(0)}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_checkpointer_keeps_newest_and_restores_meta(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        ck.save(step, _toy_state(step), {"data": {"position": step}}, final=step == 3)
    assert ck.steps() == [2, 3]
    assert sorted(p.name for p in (tmp_path / "ck" / "manifests").iterdir()) == ["2.json", "3.json"]
    step, state, meta = ck.restore(_abstract(_toy_state(0)))
    assert step == 3 and meta == {"data": {"position": 3}}
    assert float(state["params"]["w"][0, 0]) == 3.0


def test_deleted_file_in_latest_checkpoint_falls_back_and_is_discarded(tmp_path, caplog):
    ck = Checkpointer(tmp_path / "ck", keep=3)
    for step in (1, 2):
        ck.save(step, _toy_state(step), {"data": {"position": step}})
    ck.close()
    victim = next(p for p in (tmp_path / "ck" / "2" / "state").rglob("*") if p.is_file() and "ocdbt" in str(p))
    victim.unlink()
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoint"):
        step, state, meta = Checkpointer(tmp_path / "ck", keep=3).restore(_abstract(_toy_state(0)))
    assert step == 1 and meta["data"]["position"] == 1
    assert "step 2 is damaged" in caplog.text and "missing file" in caplog.text
    assert Checkpointer(tmp_path / "ck").steps() == [1]


def test_no_checkpoint_restores_nothing(tmp_path):
    assert Checkpointer(tmp_path / "empty").restore(_abstract(_toy_state(0))) is None
