"""The planner: grid expansion, cell specs, resource plans, estimates and refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.catalog import ACCELERATORS, get_preset
from orchestrator.planner import USABLE_MEMORY, plan, plan_resources, ray_resources, totals
from orchestrator.spec import load_spec
from trainers import accounting
from trainers.accounting import GIB
from trainers.spec import CellSpec, UserError, cell_key

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sweeps" / "demo.yaml"
PAPER = [ROOT / "sweeps/paper/flan_t5.yaml", ROOT / "sweeps/paper/flan_palm.yaml"]

JSON_FIELDS = {"key", "model", "task_count", "formats", "params", "finetune_tokens", "finetune_flops",
               "pretrain_flops", "flops_fraction", "paper_flops", "accelerator", "devices", "hosts", "mesh",
               "memory_per_device_gib", "est_hours", "est_cost", "feasible", "reason", "priority", "spec"}


def test_demo_plan_grid_keys_and_order():
    cells = plan(load_spec(DEMO, []))
    sizes = ("tiny-1", "tiny-2")
    # The base model (task count 0) once per size; each finetuned cell once per seed.
    assert len(cells) == 2 + 2 * 2 * 2
    assert {(c.model, c.task_count, c.seed) for c in cells} == (
        {(m, 0, 0) for m in sizes} | {(m, n, s) for m in sizes for n in (9, 282) for s in (0, 1)})
    assert all(c.feasible and c.devices == 1 and c.hosts == 1 for c in cells)
    assert [c.priority for c in cells] == list(range(10))
    work = [c.steps * c.step_flops for c in cells]
    assert work == sorted(work)  # small cells first
    assert len({c.key for c in cells}) == 10
    for c in cells:
        assert c.key == cell_key(c.spec) == CellSpec.from_dict(c.spec.to_dict()).key()
        assert c.spec.sweep == "demo" and c.spec.data.task_count == c.task_count
        assert c.spec.mesh.devices == c.devices and c.spec.optim.micro_batches == c.micro_batches
        assert set(c.to_json()) >= JSON_FIELDS
        json.dumps(c.to_json())
        assert ray_resources(c) == {"num_cpus": 1}
    # Deterministic: the same spec plans the same cells.
    assert [c.to_json() for c in plan(load_spec(DEMO, []))] == [c.to_json() for c in cells]


def test_format_axis_and_base_model_cells():
    spec = load_spec(DEMO, ["models=[tiny-1,tiny-2]", "task_counts=[0,9]", "formats=[mixed,no_cot]", "seeds=[0]"])
    cells = plan(spec)
    base = [c for c in cells if c.task_count == 0]
    assert len(base) == 2  # one base cell per model whatever the format sets
    assert all(c.steps == 0 and c.finetune_flops == 0 and c.est_hours == 0 for c in base)
    tuned = [c for c in cells if c.task_count == 9]
    assert len(tuned) == 4
    no_cot = next(c for c in tuned if c.formats == "no_cot")
    assert not no_cot.spec.data.with_cot and "cot" not in no_cot.spec.data.formats
    # The ladder's first 9 tasks are the CoT datasets: without CoT data nothing is left.
    assert not no_cot.feasible and "no CoT data" in no_cot.reason and no_cot.est_hours == 0
    wider = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[89]", "formats=[no_cot]"]))[0]
    assert wider.feasible and not wider.spec.data.with_cot


def test_table22_defaults_and_overrides():
    spec = load_spec(PAPER[1], ["models=[palm-540b]", "task_counts=[1836]"])
    (cell,) = plan(spec)
    o, m, d = cell.spec.optim, cell.spec.model, cell.spec.data
    assert (o.batch_size, o.learning_rate, o.steps, m.dropout_rate) == (32, 1e-3, 21_000, 0.1)
    assert (d.input_length, d.target_length, o.optimizer, o.schedule) == (2048, 512, "adafactor", "constant")
    assert cell.finetune_tokens == 21_000 * 32 * 2560
    assert cell.flops_fraction == pytest.approx(cell.finetune_flops / cell.pretrain_flops)
    assert 0.001 < cell.flops_fraction < 0.004  # the paper: about 0.2% for Flan-PaLM 540B
    spec = load_spec(PAPER[0], ["models=[t5-xl]", "task_counts=[89]", "optim.steps=100",
                                "optim.learning_rate=1e-3", "model.dropout_rate=0.1", "data.input_length=1024"])
    (cell,) = plan(spec)
    o = cell.spec.optim
    assert (o.batch_size, o.learning_rate, o.steps, cell.spec.model.dropout_rate) == (64, 1e-3, 100, 0.1)
    assert cell.spec.data.input_length == 1024 and cell.spec.data.target_length == 512


@pytest.mark.parametrize("path", PAPER)
def test_paper_meshes_divide_and_fit(path):
    spec = load_spec(path, [])
    acc = ACCELERATORS[spec.accelerator]
    cells = plan(spec)
    assert len(cells) == 25 and all(c.feasible for c in cells)
    for c in cells:
        m, cfg, o = c.mesh, c.spec.model, c.spec.optim
        assert m["data"] * m["fsdp"] * m["tensor"] == c.devices and c.devices in acc.slice_sizes
        assert (o.batch_size // o.micro_batches) % (m["data"] * m["fsdp"]) == 0
        assert cfg.num_heads % m["tensor"] == 0 and cfg.d_ff % m["tensor"] == 0
        assert c.memory_per_device_gib <= acc.memory_gib * USABLE_MEMORY
        assert c.hosts == acc.hosts(c.devices)
        assert ray_resources(c) == {"resources": {"TPU": c.devices // c.hosts}}
        # The slice is the smallest that fits: capping below it makes the cell infeasible.
        smaller = [s for s in acc.slice_sizes if s < c.devices]
        if smaller:
            capped = dataclasses.replace(spec, max_devices=smaller[-1])
            assert not plan_resources(capped, c.spec).feasible


def test_palm_540b_on_tpu_v4_is_near_the_paper():
    spec = load_spec(PAPER[1], ["models=[palm-540b]", "task_counts=[1836]", "min_devices=512"])
    (cell,) = plan(spec)
    assert cell.devices == 512 and cell.hosts == 128
    # The paper: 512 v4 chips for about 37 hours; at 40% MFU the estimate is the same order.
    assert 15 < cell.est_hours < 60
    assert cell.est_cost == pytest.approx(cell.est_hours * 512 * ACCELERATORS["tpu-v4"].price_per_device_hour)


def test_infeasible_cells_are_kept_with_a_reason():
    spec = load_spec(DEMO, ["models=[tiny-1,palm-540b]", "task_counts=[9]", "seeds=[0]"])
    cells = plan(spec)
    bad = next(c for c in cells if c.model == "palm-540b")
    assert not bad.feasible and bad.est_hours == 0 and bad.est_cost == 0
    assert "does not fit cpu memory" in bad.reason and "GiB" in bad.reason
    assert cells[-1] is bad or bad.priority > 0
    assert totals(cells)["feasible"] == 1
    capped = plan(load_spec(PAPER[1], ["models=[palm-62b]", "task_counts=[9]", "seeds=[0]", "max_devices=8"]))[0]
    assert not capped.feasible and "max_devices=8" in capped.reason


def test_micro_batches_raised_when_activations_do_not_fit():
    big = ["models=[tiny-3]", "task_counts=[9]", "seeds=[0]", "optim.batch_size=64", "data.input_length=2048",
           "data.target_length=512", "budget.max_device_hours=null"]
    spec = load_spec(DEMO, big)
    (cell,) = plan(spec)
    assert cell.feasible and cell.micro_batches > 1
    rows = cell.spec.optim.batch_size // cell.micro_batches
    mem = accounting.memory_per_device(cell.spec.model, cell.spec.mesh, rows, 2048, 512, False)
    assert mem["total"] <= ACCELERATORS["cpu"].memory_gib * GIB * USABLE_MEMORY
    fixed = plan(load_spec(DEMO, big + ["optim.micro_batches=1"]))[0]
    assert fixed.micro_batches == 1 and fixed.devices > cell.devices


def test_fixed_mesh_is_used():
    (cell,) = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]", "mesh.data=2", "mesh.fsdp=2"]))
    assert cell.devices == 4 and cell.mesh == {"data": 2, "fsdp": 2, "tensor": 1}
    assert ray_resources(cell) == {"num_cpus": 4}


def test_budget_gate_lists_the_most_expensive_cells():
    with pytest.raises(UserError) as info:
        plan(load_spec(DEMO, ["budget.max_device_hours=0.01"]))
    msg = str(info.value)
    assert msg.startswith("budget.max_device_hours") and "tiny-2/" in msg and "\n" not in msg
    with pytest.raises(UserError, match="budget.max_cost"):
        plan(load_spec(PAPER[0], ["budget.max_cost=100"]))
    assert plan(load_spec(DEMO, ["budget.max_device_hours=100"]))


def test_gpu_resources_and_price_override():
    (cell,) = plan(load_spec(PAPER[0], ["models=[t5-xxl]", "task_counts=[9]", "seeds=[0]", "accelerator=a100-40g",
                                        "price_per_device_hour=1.5"]))
    assert ray_resources(cell) == {"num_gpus": cell.devices // cell.hosts}
    assert cell.est_cost == pytest.approx(cell.est_hours * cell.devices * 1.5)


def test_pretrain_flops_from_checkpoint_and_override(tmp_path):
    ckpt = tmp_path / "base"
    ckpt.mkdir()
    (ckpt / "pretrain.json").write_text(json.dumps({"flops": 1.0e15}))
    (cell,) = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]", f"+init_checkpoint.tiny-1={ckpt}"]))
    assert cell.pretrain_flops == 1.0e15 and cell.spec.init_checkpoint == str(ckpt)
    assert cell.flops_fraction == pytest.approx(cell.finetune_flops / 1.0e15)
    (cell,) = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]", "+pretrain_tokens.tiny-1=1e9"]))
    assert cell.pretrain_flops == accounting.pretrain_flops(get_preset("tiny-1").model, 1e9)


def test_planning_never_imports_jax_and_is_quick():
    code = (
        "import sys, time; t = time.time()\n"
        "from orchestrator.spec import load_spec; from orchestrator.planner import plan\n"
        f"n = sum(len(plan(load_spec(p, []))) for p in {[str(p) for p in PAPER]!r})\n"
        "print(n, time.time() - t, 'jax' in sys.modules, 'flax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "50" and out[2] == "False" and out[3] == "False"
    assert float(out[1]) < 20  # loose: about a second on a laptop


def test_seeds_are_a_grid_axis_in_the_cell_key():
    cells = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[0,9]", "seeds=[0,1,2]"]))
    tuned = sorted((c for c in cells if c.task_count == 9), key=lambda c: c.seed)
    assert [c.seed for c in tuned] == [0, 1, 2] and [c.spec.seed for c in tuned] == [0, 1, 2]
    assert len({c.key for c in tuned}) == 3  # the seed enters the key
    assert [c.seed for c in cells if c.task_count == 0] == [0]  # the base model is evaluated once
    assert all(c.to_json()["seed"] == c.seed for c in cells)


def test_what_changes_the_numbers_enters_the_cell_key_and_what_does_not_stays_out():
    import dataclasses

    spec = CellSpec()
    model = spec.model
    key = spec.key()
    for changed in (dataclasses.replace(model, dtype="bfloat16"), dataclasses.replace(model, param_dtype="bfloat16")):
        assert dataclasses.replace(spec, model=changed).key() != key
    assert dataclasses.replace(spec, model=dataclasses.replace(model, remat=True)).key() == key
    evaluated = dataclasses.replace(spec.eval, benchmarks=("mmlu",), max_examples=5)
    assert dataclasses.replace(spec, eval=evaluated).key() == key


def test_paper_flops_beside_the_physical_figures(tmp_path):
    (cell,) = plan(load_spec(PAPER[1], ["models=[palm-62b]", "task_counts=[1836]", "seeds=[0]"]))
    assert cell.paper_flops == {"pretrain": 6 * 62e9 * 780e9, "finetune": 6 * 62e9 * cell.finetune_tokens,
                                "fraction": pytest.approx(cell.finetune_tokens / 780e9)}
    assert cell.finetune_flops != cell.paper_flops["finetune"]  # the exact count stays for MFU and cost
    (base,) = plan(load_spec(PAPER[1], ["models=[palm-62b]", "task_counts=[0]"]))
    assert base.paper_flops["finetune"] == 0.0 and base.paper_flops["fraction"] == 0.0
    # A tiny preset counts the pretraining its base checkpoint recorded (`flanscale pretrain`'s tokens).
    ckpt = tmp_path / "base"
    ckpt.mkdir()
    (ckpt / "pretrain.json").write_text(json.dumps({"flops": 1.0e15, "tokens": 2e6}))
    (tiny,) = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]", f"+init_checkpoint.tiny-1={ckpt}"]))
    n = accounting.param_count(tiny.spec.model)
    assert tiny.paper_flops == {"pretrain": 3 * n * 2e6, "finetune": 3 * n * tiny.finetune_tokens,
                                "fraction": pytest.approx(tiny.finetune_tokens / 2e6)}
    (bare,) = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]"]))
    assert bare.paper_flops["pretrain"] is None and bare.paper_flops["fraction"] is None


def _base_checkpoint(path: Path, model) -> Path:
    """A base checkpoint's model.json (the planner reads no weights)."""
    from trainers.spec import to_dict

    path.mkdir()
    (path / "model.json").write_text(json.dumps(to_dict(model)))
    return path


def test_an_init_checkpoint_of_another_architecture_is_planned_logged_and_trained_as_itself(tmp_path):
    from orchestrator.store import cell_params
    from trainers.architecture import trained_model

    preset = get_preset("tiny-1").model
    small = dataclasses.replace(preset, name="imported", d_model=64, d_ff=128, num_heads=2, d_kv=16)
    ckpt = _base_checkpoint(tmp_path / "base", small)
    cells = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[0,9]", "seeds=[0]",
                                  f"+init_checkpoint.tiny-1={ckpt}"]))
    n = accounting.param_count(small)
    assert n < accounting.param_count(preset)
    for c in cells:
        # The job builds the model by the same rule, so plan, MLflow and training agree.
        assert c.spec.model == trained_model(c.spec.model, small) and c.spec.model.name == "tiny-1"
        assert c.params == n == cell_params(c)["params"]
        o, d = c.spec.optim, c.spec.data
        assert c.finetune_flops == accounting.train_flops(small, o.steps * o.batch_size * d.input_length,
                                                          o.steps * o.batch_size * d.target_length)
        # Another architecture was not pretrained the preset's way: no paper basis, pretraining unknown.
        assert c.pretrain_flops == 0.0 and c.paper_flops["pretrain"] is None
    # The mismatch is one note shared by the preset's cells, naming what differs and the counts.
    (note,) = {c.architecture_note for c in cells}
    assert note.startswith(f"init_checkpoint.tiny-1: {ckpt} holds another architecture than preset tiny-1")
    assert "d_model 64 not 96" in note and f"{n:,} parameters" in note
    assert "name" not in note and "\n" not in note

    # A checkpoint of the preset's own architecture changes nothing (same keys, no note).
    same = _base_checkpoint(tmp_path / "same", dataclasses.replace(preset, dtype="bfloat16", name="x"))
    spec = ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]", f"+init_checkpoint.tiny-1={same}"]
    (cell,) = plan(load_spec(DEMO, spec))
    assert cell.architecture_note == "" and cell.spec.model == get_preset("tiny-1").model
    assert cell.params == accounting.param_count(preset)
    with pytest.raises(UserError, match=r"init_checkpoint\.tiny-1: .*model\.json: invalid JSON"):
        (same / "model.json").write_text("{")
        plan(load_spec(DEMO, spec))


def test_cells_name_the_benchmarks_they_score_on_stand_ins(tmp_path):
    import shutil

    from orchestrator.store import cell_params
    from trainers.eval.benchmarks import STANDINS, STANDINS_PARAM
    from trainers.run_layout import cell_params as job_params

    def standins(*overrides):
        (cell,) = plan(load_spec(DEMO, ["models=[tiny-1]", "task_counts=[9]", "seeds=[0]", *overrides]))
        logged = cell_params(cell)[STANDINS_PARAM]
        assert job_params(cell.spec, cell.params)[STANDINS_PARAM] == logged  # the job logs the same value
        return logged

    # Without data of their own, the paper's benchmarks are stand-ins (in the sweep's order);
    # the built-in unseen-task benchmarks are real data.
    assert standins("eval.benchmarks=[bbh,unseen_mc,mmlu,mgsm,tydiqa,unseen_qa]") == "bbh,mmlu,mgsm,tydiqa"
    assert standins("eval.benchmarks=[unseen_mc,unseen_arith]") == ""
    # A data folder holding MMLU in its release format: MMLU is the real benchmark.
    data = tmp_path / "data"
    shutil.copytree(ROOT / "tests" / "fixtures" / "eval" / "mmlu", data / "mmlu")
    assert standins("eval.benchmarks=[mmlu,unseen_mc]", f"eval.data_dir={data}") == ""
    # The shipped stand-ins given as the data folder are still stand-ins.
    assert standins("eval.benchmarks=[mmlu,bbh]", f"eval.data_dir={STANDINS}") == "mmlu,bbh"
