"""Benchmarks refuse bad flags in one line, before they start Ray or write anything."""

from __future__ import annotations

import json
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


def test_fit_coverage_smoke_on_its_smallest_settings():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fit_coverage.py"), "--series", "2", "--sizes", "3",
                           "--seeds", "2", "--bootstrap", "10"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for kind in ("loss", "accuracy"):
        assert out[kind]["series"] == 2 and 0.0 <= out[kind]["coverage"] <= 1.0
        assert out[kind]["median_width_of_settings"][0] > 0
    assert [(s["kind"], s["sizes"], s["seeds"]) for s in out["settings"]] == [("loss", 3, 2), ("accuracy", 3, 2)]


def test_fit_coverage_refuses_too_few_sizes():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fit_coverage.py"), "--sizes", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "fit_coverage.py: error: --sizes must be >= 3 (a law's fewest points) and --seeds >= 1")


def _demo_budget(*args, home):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "demo_budget.py"), *args], capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "FLANSCALE_HOME": str(home)})


def test_demo_budget_records_phases_and_refuses_a_bad_one(tmp_path):
    assert _demo_budget("record", "install", "42.5", home=tmp_path).returncode == 0
    assert _demo_budget("record", "report", "3", home=tmp_path).returncode == 0
    assert json.loads((tmp_path / "phases.json").read_text()) == {"install": 42.5, "report": 3.0}
    bad = _demo_budget("record", "install", "-1", home=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "demo_budget: install: -1.0 is not a duration in seconds"
    assert json.loads((tmp_path / "phases.json").read_text())["install"] == 42.5  # untouched


def test_demo_budget_names_an_unknown_sweep_in_one_line(tmp_path):
    proc = _demo_budget("show", "nope", home=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("demo_budget: ") and not (tmp_path / "mlflow.db").exists()


def test_cell_concurrency_refuses_fewer_than_two_cells():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cell_concurrency.py"), "--cells", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("--cells and --steps must be >= 2")


def test_preflight_throughput_smoke_on_a_tiny_export(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "preflight_throughput.py"), "--size", "64K",
                           "--work", str(work)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    first, cached = out["runs"]
    assert out["bytes"] >= 64 * 1024 and out["files"] == 4 and first["records"] == cached["records"] > 0
    assert first["records_per_s"] > 0 and cached["seconds"] >= 0
    assert not work.exists()  # the generated exports are gone
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "preflight_throughput.py"), "--size", "1X"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--size: '1X' is not a size" in proc.stderr.strip().splitlines()[-1]
