"""`flanscale plan`: JSON and table output, and one line with a non-zero exit for bad specs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "sweeps" / "demo.yaml")


@pytest.fixture
def flanscale(cli_runner):
    return cli_runner("plan")


def test_plan_json(flanscale):
    code, out, err = flanscale("plan", DEMO, "task_counts=[9,89]", "models=[tiny-1]", "seeds=[0]", "optim.learning_rate=1e-3",
                               "--format", "json")
    assert code == 0, err
    cells = json.loads(out)
    assert [c["task_count"] for c in cells] == [9, 89]
    for c in cells:
        assert c["model"] == "tiny-1" and c["accelerator"] == "cpu" and c["feasible"] is True
        assert c["params"] == 591232 and c["finetune_flops"] > 0 and c["flops_fraction"] is None
        assert c["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and c["devices"] == c["hosts"] == 1
        assert c["spec"]["optim"]["learning_rate"] == 1e-3


def test_plan_table_shows_cells_totals_and_refusals(flanscale):
    code, out, err = flanscale("plan", DEMO, "models=[tiny-1,palm-540b]", "task_counts=[9]", "seeds=[0]")
    assert code == 0, err
    assert "sweep demo: 2 cells on cpu" in out and "tiny-1" in out and "palm-540b" in out
    assert "total" in out and "1/2" in out
    assert "infeasible [1] palm-540b" in out and "does not fit cpu memory" in out


def test_plan_counts_an_imported_architecture_and_says_so_once(flanscale, tmp_path):
    import dataclasses

    from orchestrator.catalog import get_preset
    from trainers import accounting
    from trainers.spec import to_dict

    small = dataclasses.replace(get_preset("tiny-1").model, d_model=64, d_ff=128, num_heads=2, d_kv=16)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.json").write_text(json.dumps(to_dict(small)))
    argv = ("plan", DEMO, "models=[tiny-1]", "task_counts=[0,9,89]", "seeds=[0,1]", f"+init_checkpoint.tiny-1={tmp_path / 'base'}")
    code, out, err = flanscale(*argv, "--format", "json")
    assert code == 0, err
    cells = json.loads(out)
    assert len(cells) == 5 and {c["params"] for c in cells} == {accounting.param_count(small)}
    assert len({c["architecture_note"] for c in cells}) == 1 and "another architecture" in cells[0]["architecture_note"]
    code, out, err = flanscale(*argv, "--wide")
    assert code == 0, err
    assert out.count("another architecture than preset tiny-1") == 1 and "d_model 64 not 96" in out


@pytest.mark.parametrize("argv,needles", [
    (["nope.yaml"], ["nope.yaml: no such sweep file"]),
    ([DEMO, "models=[tiny-7]"], ["'tiny-7'", "did you mean"]),
    ([DEMO, "optim.stepz=3"], ["unknown field 'optim.stepz'"]),
    ([DEMO, "optim.steps=x"], ["'optim.steps'", "integer"]),
    ([DEMO, "accelerator=tpu"], ["accelerator", "'tpu'", "allowed"]),
    ([DEMO, "optim.steps=-1"], ["optim.steps", ">= 0"]),
    ([DEMO, "optim.batch_size=6", "mesh.data=4"], ["data axis"]),
    ([DEMO, "budget.max_device_hours=0.001"], ["budget.max_device_hours", "most expensive cells"]),
    ([DEMO, "seed=0,1"], ["override 'seed=0,1'", "seeds=[0,1]"]),
    ([DEMO, "seeds=[0,0]"], ["seeds", "listed twice"]),
    ([DEMO, "seeds=[]"], ["seeds: empty"]),
    ([DEMO, "seeds=[-1]"], ["seeds", ">= 0"]),
    ([DEMO, "eval.modes=[rc]", "eval.benchmarks=[unseen_arith]"], ["eval.modes", "'rc'", "applies to none"]),
    ([DEMO, "eval.modes=[rank]"], ["eval.modes", "'rank'", "allowed"]),
    ([DEMO, "eval.mmlu_split=train"], ["eval.mmlu_split", "'train'", "dev, val, test"]),
    ([DEMO, "eval.benchmarks=[unseen_mcq]"], ["eval.benchmarks", "did you mean 'unseen_mc'"]),
    ([DEMO, "eval.loss_examples=0"], ["eval.loss_examples", "> 0"]),
])
def test_bad_specs_exit_nonzero_with_one_line(flanscale, argv, needles):
    code, out, err = flanscale("plan", *argv)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flanscale: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _all_commands_present() -> bool:
    return all(importlib.util.find_spec(f"orchestrator.commands.{m}") for m in cli.COMMAND_MODULES)


@pytest.mark.skipif(not _all_commands_present(), reason="the full command set is not installed yet")
def test_installed_console_script():
    exe = Path(sys.executable).with_name("flanscale")
    ok = subprocess.run([str(exe), "plan", DEMO, "models=[tiny-1]", "--format", "json"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == 1 + 2 * 2  # the base model, 2 task counts x 2 seeds
    bad = subprocess.run([str(exe), "plan", DEMO, "models=[tiny-7]"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "tiny-7" in bad.stderr
