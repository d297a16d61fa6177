"""`flanscale plan --compile`: XLA's memory per device beside the planner's, from a compile of
each cell's train step on simulated host devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.commands import plan as plan_cmd

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "sweeps" / "demo.yaml")
TINY = (DEMO, "models=[tiny-1]", "task_counts=[9,89]", "seeds=[0]")


@pytest.fixture
def flanscale(cli_runner):
    return cli_runner("plan")


def test_parse_compile_output_keeps_results_and_names_failures():
    lines = "\n".join([
        "jax: some warning that is not JSON",
        json.dumps({"key": "a", "compile_s": 1.5, "xla_memory_per_device_gib": 2.0,
                    "xla_memory": {"argument": 1, "output": 1, "temp": 3, "alias": 1, "per_device": 4}}),
        json.dumps({"key": "b", "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}),
        json.dumps({"key": "stranger", "compile_s": 1.0, "xla_memory_per_device_gib": 1.0}),
    ])
    out = plan_cmd.parse_compile_output(lines, ["a", "b", "c"], "timed out")
    assert out["a"] == {"xla_memory_per_device_gib": 2.0, "compile_s": 1.5,
                        "xla_memory": {"argument": 1, "output": 1, "temp": 3, "alias": 1, "per_device": 4}}
    assert out["b"]["xla_memory_per_device_gib"] is None and "RESOURCE_EXHAUSTED" in out["b"]["compile_error"]
    assert out["c"]["compile_error"] == "timed out" and "stranger" not in out


def test_unknown_cell_key_is_refused_with_the_closest(flanscale, monkeypatch):
    monkeypatch.setattr(plan_cmd, "compile_cells", lambda cells, timeout: pytest.fail("must not compile"))
    code, out, err = flanscale("plan", *TINY, "--compile", "--cells", "0000000")
    assert code != 0 and "--cells: no cell '0000000'" in err and "keys:" in err
    code, out, err = flanscale("plan", *TINY, "--cells", "abc")
    assert code != 0 and "add --compile" in err


def test_compiled_figures_join_the_table_and_the_json(flanscale, monkeypatch):
    seen = {}

    def fake_compile(cells, timeout):
        seen["keys"] = [c.key for c in cells]
        first, second = seen["keys"]
        return {first: {"xla_memory_per_device_gib": 0.125, "compile_s": 3.25, "xla_memory": {}},
                second: {"xla_memory_per_device_gib": None, "compile_s": None, "compile_error": "boom"}}

    monkeypatch.setattr(plan_cmd, "compile_cells", fake_compile)
    code, out, err = flanscale("plan", *TINY, "--compile", "--format", "json")
    assert code == 0, err
    cells = json.loads(out)
    assert [c["key"] for c in cells] == seen["keys"]
    assert cells[0]["xla_memory_per_device_gib"] == 0.125 and cells[0]["compile_s"] == 3.25
    assert cells[1]["xla_memory_per_device_gib"] is None and cells[1]["compile_error"] == "boom"
    assert "memory_per_device_gib" in cells[0]

    code, out, err = flanscale("plan", *TINY, "--compile", "--wide")
    assert code == 0, err
    assert "XLA GiB" in out and "compile s" in out and "GiB/dev" in out
    assert "0.125" in out and "3.25" in out
    assert f"not compiled [1] tiny-1 {seen['keys'][1]}: boom" in out


def test_only_the_named_cells_are_compiled(flanscale, monkeypatch):
    code, out, _ = flanscale("plan", *TINY, "--format", "json")
    keys = [c["key"] for c in json.loads(out)]
    asked = []
    monkeypatch.setattr(plan_cmd, "compile_cells", lambda cells, timeout: asked.extend(c.key for c in cells) or {})
    code, out, err = flanscale("plan", *TINY, "--compile", "--cells", keys[1], "--format", "json")
    assert code == 0, err
    assert asked == [keys[1]]
    assert all(c["xla_memory_per_device_gib"] is None for c in json.loads(out))


@pytest.mark.slow
def test_compiled_memory_is_within_20_percent_of_the_plan(flanscale):
    """A real compile (fresh process, 2 simulated devices, data-parallel mesh): XLA's bytes
    per device agree with the planner's model of memory."""
    code, out, err = flanscale("plan", DEMO, "models=[tiny-1]", "task_counts=[9]", "seeds=[0]", "mesh.data=2",
                               "--compile", "--format", "json")
    assert code == 0, err
    (cell,) = json.loads(out)
    assert cell["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}, cell["mesh"]
    assert cell.get("compile_error") is None, cell["compile_error"]
    assert cell["compile_s"] > 0
    assert cell["xla_memory_per_device_gib"] == pytest.approx(cell["memory_per_device_gib"], rel=0.2)


def test_simulated_devices_must_be_set_before_jax_starts():
    """The device count is read once, when jax starts: trainers.aot refuses to set it late."""
    import importlib

    from trainers import aot

    importlib.import_module("jax")

    with pytest.raises(RuntimeError, match="before jax is imported"):
        aot.simulate_host_devices(4)
