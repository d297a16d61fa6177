"""Ray fixtures: a private local Ray per test module (never someone else's cluster), and
tiny sweep files. Test modules whose functions run inside Ray workers register themselves
for pickling by value, because the workers cannot import test modules by name."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SWEEP = """\
name: {name}
models: [tiny-1]
task_counts: {task_counts}
formats: [mixed]
max_concurrent: 2
seeds: [0]
data:
  input_length: 32
  target_length: 16
  examples_per_task: 4
optim:
  batch_size: 2
  steps: {steps}
checkpoint:
  every_steps: {every}
retries:
  failure: 0
  preemption: {preemption}
"""


def tiny_sweep(name: str, task_counts: str = "[9, 89]", steps: int = 12, every: int = 2, extra: str = "",
               preemption: int = 3) -> str:
    """The text of a tiny sweep file; `extra` adds sections (an eval: block, say)."""
    return TINY_SWEEP.format(name=name, task_counts=task_counts, steps=steps, every=every,
                             preemption=preemption) + extra


def write_sweep(directory: Path, name: str, task_counts: str = "[9, 89]", steps: int = 12, every: int = 2,
                extra: str = "") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(tiny_sweep(name, task_counts, steps, every, extra))
    return path


def start_local_ray(**kwargs):
    import ray

    ray.init(address="local", object_store_memory=128 * 2**20, include_dashboard=False,
             log_to_driver=False, **kwargs)
    return ray


@pytest.fixture(scope="module")
def ray_cpu():
    """Two CPUs, like this machine: the controller's cells share them."""
    ray = start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_logical():
    """Logical accelerators: the scheduler enforces the counts, nothing needs the hardware."""
    ray = start_local_ray(num_cpus=2, num_gpus=8, resources={"TPU": 16})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    """One FLANSCALE_HOME (one MLflow database) for a whole module: creating MLflow's schema
    is slow, and tests keep apart by sweep name."""
    h = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLANSCALE_HOME", str(h))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        yield h


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("FLANSCALE_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return h


@pytest.fixture()
def make_sweep(tmp_path):
    """make_sweep(name, task_counts="[9, 89]", steps=12, every=2) -> path of a tiny sweep file."""
    specs = tmp_path / "sweeps"
    specs.mkdir(exist_ok=True)
    return lambda name, **kw: write_sweep(specs, name, **kw)
