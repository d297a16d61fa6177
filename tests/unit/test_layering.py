"""The package boundaries the README's Development section lists hold at run time, not only on paper."""

import subprocess
import sys
from pathlib import Path


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_control_plane_never_loads_jax():
    mods = _imported_after(
        "import orchestrator.cli, orchestrator.planner, orchestrator.controller, orchestrator.store,"
        " orchestrator.scheduling, orchestrator.placement;"
        " orchestrator.cli.build_parser()"
    )
    assert "jax" not in mods and "flax" not in mods


def test_reports_never_load_jax_ray_or_hydra():
    mods = _imported_after("import dashboards.report, dashboards.runs, dashboards.analysis, dashboards.tables")
    assert not {"jax", "flax", "ray", "hydra"} & mods


def test_cell_spec_is_stdlib_only():
    mods = _imported_after("import trainers.spec, trainers.accounting, trainers.axes, trainers.run_layout")
    heavy = {"jax", "numpy", "ray", "mlflow", "hydra"} & mods
    assert not heavy, heavy


def test_import_contracts():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    lint = subprocess.run([str(lint_imports), "--no-cache"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
