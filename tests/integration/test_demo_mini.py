"""The demo's measurement path, shrunk: two sizes x the base model and two task counts on a real
local Ray and a real SQLite MLflow, every cell measured on held-out data (eval/loss on the
same tokens for every cell, the unseen-task benchmark with rank classification), then the
report built from the tracked runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import controller as C
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import SweepStore

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
# The demo's own evaluation settings (zero-shot prompts, a direct-answer budget, batched
# decoding) on a few items; the inputs stay long enough to hold the zero-shot prompts.
MINI = ["name=demo-mini", "models=[tiny-0,tiny-1]", "task_counts=[0,9,89]", "seeds=[0]", "optim.steps=6",
        "checkpoint.every_steps=0", "data.target_length=32", "data.examples_per_task=8",
        "eval.max_examples=2", "eval.max_new_tokens=8", "eval.loss_examples=6"]


def test_mini_demo_measures_every_cell_on_held_out_data(ray_cpu, home):
    spec = load_spec(ROOT / "sweeps" / "demo.yaml", MINI)
    cells = plan(spec)
    assert sorted((c.model, c.task_count) for c in cells) == [
        (m, n) for m in ("tiny-0", "tiny-1") for n in (0, 9, 89)]
    assert cells[0].spec.eval.shots == 0 and cells[0].spec.eval.direct_max_new_tokens > 0
    summary = C.run_sweep(spec, cells, home=home, progress=False)
    assert summary.counts() == {"finished": 6}, summary.errors
    store = SweepStore(home=home)
    loss: dict[tuple[str, int], float] = {}
    for rec in store.list_cells("demo-mini"):
        metrics = store.client.get_run(rec.run_id).data.metrics
        for name in ("eval/loss", "eval/loss/mc", "eval/loss/reasoning", "eval/loss/qa", "eval/loss/arith",
                     "eval/unseen_mc/rc", "eval/unseen_mc/rc_norm", "eval/unseen_mc/rc_logprob",
                     "eval/unseen_mc/rc_choice_logprob", "eval/unseen_reasoning/rc", "eval/unseen_qa/direct",
                     "eval/unseen_qa/rc", "eval/unseen_arith/cot", "eval/unseen/normalized_average",
                     "time/setup_s", "time/eval_s"):
            assert name in metrics, (rec.params["model"], rec.params["task_count"], name)
        assert metrics["eval/loss"] > 0 and metrics["eval/unseen_mc/rc_logprob"] < 0
        assert 0 <= metrics["eval/unseen_mc/rc"] <= 100
        assert metrics["eval/unseen_mc/rc_choice_logprob"] <= 0
        loss[(rec.params["model"], int(rec.params["task_count"]))] = metrics["eval/loss"]
    # Finetuning moved the held-out loss away from the base model's.
    assert all(loss[(m, 9)] != loss[(m, 0)] for m in ("tiny-0", "tiny-1"))
    out = home / "report"
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", "demo-mini", "--out", str(out), "--no-log"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (out / "report.html").is_file()
    md = (out / "report.md").read_text()
    assert "eval/loss" in md and "Where the time went" in md
    assert (home / "xla_cache").is_dir()  # the cells shared their compiled programs
