"""Benchmarks refuse bad flags in one line, before they start Ray or write anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_controller_overhead_refuses_an_existing_work_folder(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("not the benchmark's")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "controller_overhead.py"), "--work", str(tmp_path / "kept")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"controller_overhead.py: error: --work {tmp_path / 'kept'}: already exists; give a new folder "
        "(the stores of one run go there)")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]


def test_eval_throughput_refuses_a_mesh_that_is_not_three_sizes():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "eval_throughput.py"), "--mesh", "2,2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "eval_throughput.py: error: --mesh: '2,2' is not a mesh; give three sizes >= 1 as DATA,FSDP,TENSOR, e.g. 4,1,2")
