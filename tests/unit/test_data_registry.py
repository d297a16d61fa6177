"""Task registry rules and the Flan formats."""

import random

import pytest

from trainers.data.registry import GeneratedSource, Task, TaskRegistry
from trainers.data.templates import COT_TRIGGER, FEWSHOT_DELIMITERS, Example, Template, normalize_formats, render
from trainers.spec import UserError


def _task(name, sub="muffin"):
    src = GeneratedSource(lambda r: Example(str(r.randint(0, 9)), "x", ("x", "y")), 10, name)
    return Task(name, sub, src, (Template("Do it."),), ("zs_opt",))


def test_duplicates_raise_and_unknown_suggests():
    reg = TaskRegistry([_task("glue/sst2"), _task("anli/r1")])
    with pytest.raises(ValueError, match="already registered"):
        reg.add(_task("glue/sst2"))
    with pytest.raises(UserError, match="did you mean 'glue/sst2'"):
        reg.get("glue/sst")
    with pytest.raises(ValueError, match="sub-mixture"):
        reg.add(_task("x", sub="flan"))
    assert reg.get("anli/r1").name == "anli/r1" and len(reg) == 2 and "anli/r1" in reg


def test_format_aliases():
    assert normalize_formats(["cot"]) == ("cot_zs", "cot_fs")
    assert normalize_formats(["fs_noopt", "zs_opt"]) == ("zs_opt", "fs_noopt")
    with pytest.raises(UserError, match="did you mean 'fs_opt'"):
        normalize_formats(["fs_op"])


def test_render_formats():
    t = Template("Add the numbers.", "{instruction}\n{question}")
    ex = Example("2 + 3", "5", ("4", "5"), "2 plus 3 is 5.")
    shots = [Example("1 + 1", "2", ("2", "3"), "1 plus 1 is 2.")] * 3
    rng = random.Random(0)
    assert render("zs_noopt", t, ex, [], rng, lambda s: True) == ("Add the numbers.\n2 + 3", "5")
    inputs, _ = render("zs_opt", t, ex, [], rng, lambda s: True)
    assert inputs.endswith("OPTIONS:\n- 4\n- 5")
    inputs, target = render("cot_zs", t, ex, [], rng, lambda s: True)
    assert inputs.endswith(COT_TRIGGER) and target == "2 plus 3 is 5. So the answer is 5."
    inputs, _ = render("fs_noopt", t, ex, shots, rng, lambda s: True)
    assert inputs.count("Add the numbers.") == 4 and any(d in inputs for d in FEWSHOT_DELIMITERS)
    inputs, _ = render("cot_fs", t, ex, shots, rng, lambda s: True)
    assert inputs.count(COT_TRIGGER) == 4 and inputs.count("So the answer is") == 3
    # Exemplars are dropped one by one: the limit admits exactly one exemplar here.
    one = render("fs_noopt", t, ex, shots[:1], random.Random(1), lambda s: True)[0]
    inputs, _ = render("fs_noopt", t, ex, shots, random.Random(1), lambda s: len(s) <= len(one))
    assert inputs == one
    inputs, _ = render("fs_noopt", t, ex, shots, random.Random(1), lambda s: False)
    assert inputs == "Add the numbers.\n2 + 3"
