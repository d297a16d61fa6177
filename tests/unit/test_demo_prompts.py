"""The demo evaluates with prompts its cells can read: every prompt of every benchmark and mode
it runs, encoded as evaluation encodes it (the byte tokenizer, then EOS), fits the input length
the cells train with, so nothing is cut from the left (the question's options included)."""

from pathlib import Path

import pytest

from orchestrator.planner import plan
from orchestrator.spec import load_spec
from trainers.data.tokenizer import ByteTokenizer
from trainers.eval import prompts, rc, runner

DEMO = Path(__file__).resolve().parents[2] / "sweeps" / "demo.yaml"


def _cell():
    cells = [c for c in plan(load_spec(DEMO, [])) if c.task_count > 0]
    assert cells
    return cells[0].spec


def test_every_demo_prompt_fits_the_trained_input_length():
    spec = _cell()
    tok, limit = ByteTokenizer(), spec.data.input_length
    data = runner.load_all(spec.eval)
    checked = 0
    for name, bench in data.items():
        for mode in runner.modes_for(spec.eval, name):
            rankable = {t for t in bench.tasks if rc.task_options(bench, t) is not None} if mode == "rc" else bench.tasks
            for task in rankable:
                for ex in bench.tasks[task]:
                    text = prompts.prompt(bench, ex, mode)
                    n = len(tok.encode(text)) + 1  # + EOS
                    assert n <= limit, f"{name}/{mode} {ex.id}: {n} tokens > input_length {limit}:\n{text}"
                    checked += 1
    assert checked > 1000  # every benchmark in every mode, all items


def test_the_demo_scores_enough_items_for_a_4_point_standard_error():
    spec = _cell()
    for name, bench in runner.load_all(spec.eval).items():
        n = sum(len(ex) for ex in bench.tasks.values())
        assert 100 * (0.25 / n) ** 0.5 <= 4.0, f"{name}: {n} items"


@pytest.mark.parametrize("shots", [0, 1])
def test_shots_set_the_number_of_exemplars(shots):
    from trainers.eval import loaders

    bench = loaders.load("unseen_mc").with_shots(shots)
    ex = bench.tasks["addition"][0]
    text = prompts.prompt(bench, ex, "direct")
    assert text.count("\nAnswer:") == shots + 1
    assert text.startswith("The following are multiple choice questions (with answers) about addition.")
    assert text.endswith("D. " + ex.choices[3] + "\nAnswer:")
