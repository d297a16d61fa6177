"""Every benchmark runs on its smallest settings and prints its JSON: a benchmark nobody runs
between releases still works when someone needs its figure. The numbers are not checked
(shared machines are noisy), only that each contender ran and said what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: int = 600) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    return json.loads(out[out.index("{"):])


def test_packing_smoke():
    out = run_bench("packing.py", "--examples", "200", "--window", "128")
    assert out and all(v is not None for v in out.values())


@pytest.mark.slow
def test_train_throughput_smoke_with_its_peer():
    out = run_bench("train_throughput.py", "--steps", "1", "--batch", "1", "--peer")
    assert out


@pytest.mark.slow
def test_compile_smoke():
    out = run_bench("compile.py", "--layers", "1", "2", "--d-model", "16", "--batch", "1",
                    "--input-length", "16", "--target-length", "8")
    assert out


@pytest.mark.slow
def test_eval_throughput_smoke():
    out = run_bench("eval_throughput.py", "--preset", "tiny-0", "--questions", "4", "--batch", "2",
                    "--new-tokens", "2", "--repeats", "1")
    assert out


@pytest.mark.slow
def test_controller_overhead_smoke(tmp_path):
    out = run_bench("controller_overhead.py", "--cells", "2", "--slots", "1", "--cell-s", "0.01",
                    "--skip", "tune", "--work", str(tmp_path / "work"))
    assert out["cells"] == 2


@pytest.mark.slow
def test_cell_concurrency_smoke():
    out = run_bench("cell_concurrency.py", "--preset", "tiny-0", "--steps", "2")
    assert out


@pytest.mark.slow
def test_gpu_bench_smoke_runs_anywhere(tmp_path):
    out = run_bench("gpu_bench.py", "--smoke", "--steps", "1", "--loss-steps", "2", "--out", str(tmp_path / "out"))
    assert out and any((tmp_path / "out").iterdir())
