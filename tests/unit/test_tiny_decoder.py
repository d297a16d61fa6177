"""tiny-dec-1..3: decoder-only presets of about tiny-1..3's sizes, so that a CPU sweep compares
the two families; `flanscale pretrain` makes their base models, the planner plans them and a
cell trains them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from orchestrator.catalog import get_preset
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from trainers import accounting

DEMO = Path(__file__).resolve().parents[2] / "sweeps" / "demo.yaml"
PAIRS = [("tiny-1", "tiny-dec-1"), ("tiny-2", "tiny-dec-2"), ("tiny-3", "tiny-dec-3")]


@pytest.mark.parametrize("t5,dec", PAIRS)
def test_tiny_dec_presets_match_their_t5_sizes(t5, dec):
    a, b = get_preset(t5), get_preset(dec)
    assert b.model.family == "decoder" and b.model.num_encoder_layers == 0
    assert b.model.vocab_size == a.model.vocab_size == 384  # the byte tokenizer's 259 ids
    assert b.params == pytest.approx(a.params, rel=0.1)
    assert b.finetune == a.finetune and b.pretrain_tokens == 0.0


def test_a_sweep_plans_both_families_side_by_side():
    spec = load_spec(DEMO, ["models=[tiny-1,tiny-dec-1]", "task_counts=[0,9]", "seeds=[0]"])
    cells = {(c.model, c.task_count): c for c in plan(spec)}
    assert set(cells) == {(m, n) for m in ("tiny-1", "tiny-dec-1") for n in (0, 9)}
    assert all(c.feasible and c.devices == 1 for c in cells.values())
    t5, dec = cells["tiny-1", 9], cells["tiny-dec-1", 9]
    assert dec.spec.model == get_preset("tiny-dec-1").model and dec.params == get_preset("tiny-dec-1").params
    # The same examples: a decoder-only row holds an example's input and target (256 + 64).
    assert (dec.spec.data.input_length, dec.spec.data.target_length) == (256, 64)
    assert dec.step_flops == accounting.step_flops(dec.spec.model, dec.spec.optim.batch_size, 256, 64)
    # Every token passes through all of a decoder's parameters, half of an encoder-decoder's.
    assert dec.finetune_flops > t5.finetune_flops


def test_the_readme_sweep_comparing_the_families_plans(tmp_path):
    readme = (DEMO.parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "tiny-dec-1" in b]
    (tmp_path / "families.yaml").write_text(snippet)
    cells = plan(load_spec(tmp_path / "families.yaml", []))
    assert {c.model for c in cells} == {"tiny-1", "tiny-dec-1"} and all(c.feasible for c in cells)
    assert {c.spec.model.family for c in cells} == {"t5", "decoder"}


@pytest.mark.slow
def test_pretrain_plan_and_finetune_a_tiny_dec_cell(tmp_path):
    """`flanscale pretrain --model tiny-dec-1` writes a base model; the planner plans a cell
    from it with its measured pretraining compute; the cell trains two steps from it."""
    from orchestrator.cli import main
    from trainers.job import run_cell

    base = tmp_path / "base"
    assert main(["pretrain", "--out", str(base), "--model", "tiny-dec-1", "--steps", "2", "--batch-size", "2",
                 "--input-length", "32", "--target-length", "16", "--home", str(tmp_path), "--quiet"]) == 0
    record = json.loads((base / "pretrain.json").read_text())
    assert record["objective"] == "span_corruption" and record["flops"] > 0

    overrides = ["models=[tiny-dec-1]", "task_counts=[9]", "seeds=[0]", f"+init_checkpoint.tiny-dec-1={base}",
                 "optim.steps=2", "optim.batch_size=2", "data.input_length=32", "data.target_length=16",
                 "data.examples_per_task=10", "eval=none"]
    (cell,) = plan(load_spec(DEMO, overrides))
    assert cell.feasible and cell.pretrain_flops == record["flops"]
    result = run_cell(cell.spec.to_dict(), home=str(tmp_path))
    assert result["status"] == "finished" and result["steps"] == 2 and math.isfinite(result["final_loss"])
    assert result["pretrain_flops"] == record["flops"]
