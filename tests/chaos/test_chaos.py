"""The chaos run (tests/chaos/chaos.py) on a small seed set: faults injected into a real
sweep (3 faults of the kinds the seed draws), then the invariants (one run per cell, each finished, every step once, attempts and
preemptions as injected, no Ray process left, the store intact). `python -m
tests.chaos.chaos --faults 20` is the long run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [3])
def test_a_sweep_survives_injected_faults(seed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-m", "tests.chaos.chaos", "--faults", "3", "--seed", str(seed),
                           "--steps", "60", "--home", str(tmp_path / "home")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["faults_injected"] >= 3, summary
    assert summary["violations"] == [], json.dumps(summary, indent=2)
    assert summary["survived"] and proc.returncode == 0
