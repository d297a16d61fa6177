"""The built-in synthetic suite: size, distinctness, determinism, formats, CoT targets."""

import random
import re

from trainers.data.suite import build_suite, corpus_document, text_corpus
from trainers.data.templates import COT_FORMATS, COT_TRIGGER, OPTION_STYLES, Example, Template


def test_suite_has_the_papers_task_counts():
    reg = build_suite(200)
    assert len(reg) == 1836
    assert reg.counts() == {"cot": 9, "muffin": 80, "t0sf": 193, "niv2": 1554}
    assert len(set(reg.names())) == 1836


def test_tasks_are_genuinely_distinct():
    """No two tasks produce the same (input question -> answer) behaviour."""
    reg = build_suite(200)
    signatures = set()
    for task in reg:
        src = task.source
        sig = tuple((src.example(i).question, src.example(i).answer) for i in range(6))
        signatures.add(sig)
    assert len(signatures) == 1836
    families = {re.sub(r"_.*", "", t.name.split("/")[1]) for t in reg}
    assert len(families) >= 15


def test_examples_are_deterministic_and_have_options():
    a, b = build_suite(200), build_suite(50)
    for name in ("cot/gsm8k", a.by_submixture("niv2")[7].name, a.by_submixture("muffin")[3].name):
        ea, eb = a.get(name).source.example(11), b.get(name).source.example(11)
        assert ea == eb and ea.answer in ea.options and len(ea.options) >= 2


def test_every_format_renders():
    reg = build_suite(200)
    rng = random.Random(0)
    for task in list(reg)[:40]:
        for fmt in task.formats:
            inputs, targets = task.render(3, (fmt,), rng, lambda s: len(s) < 2000)
            assert inputs and targets
            listed, lettered = "OPTIONS:" in inputs, "\n(A) " in inputs or "\nA. " in inputs
            if fmt.endswith("_opt"):
                assert listed or lettered
            if fmt.endswith("_noopt"):
                assert not listed and not lettered
        assert len(task.templates) >= 6  # several phrasings x layouts
        if task.submixture != "cot":  # option styles take turns over a task's templates
            assert {t.options for t in task.templates} == set(OPTION_STYLES)


def test_lettered_options_are_answered_by_letter():
    ex = Example("cactus", "cactus", ("bzbstr", "cactus", "sutcac"))
    assert Template("Pick one.", options="letters").target(ex, True) == "B"
    assert Template("Pick one.", options="paren").target(ex, True) == "(B)"
    assert Template("Pick one.", options="list").target(ex, True) == "cactus"
    assert Template("Pick one.", options="paren").target(ex, False) == "cactus"  # no options shown, no letter
    assert Template("Pick one.", options="letters").zero_shot(ex, True).endswith("\nA. bzbstr\nB. cactus\nC. sutcac")


def test_every_rung_draws_on_every_family():
    from trainers.data.suite_families import FAMILIES

    reg = build_suite(50)
    muffin = [t.name for t in reg.by_submixture("muffin")]
    families = {f.__name__: {tid for tid, _, _ in f()} for f in FAMILIES}
    dealt = {name for name, ids in families.items() if any(m.split("/", 1)[1] in ids for m in muffin)}
    assert dealt == set(families)  # the 89-task rung already spans every skill family


def test_cot_tasks_carry_rationales():
    reg = build_suite(200)
    rng = random.Random(1)
    for task in reg.by_submixture("cot"):
        assert task.formats == COT_FORMATS
        for i in range(5):
            ex = task.source.example(i)
            inputs, targets = task.render(i, ("cot_zs",), rng, lambda s: True)
            assert inputs.endswith(COT_TRIGGER)
            assert targets == f"{ex.rationale} So the answer is {ex.answer}." and len(ex.rationale) > 10  # CoT: "list" style
    gsm = reg.get("cot/gsm8k").source.example(0)
    numbers = [int(x) for x in re.findall(r"= (\d+)", gsm.rationale)]
    assert numbers[-1] == int(gsm.answer)


def test_few_shot_exemplars_dropped_to_fit():
    task = build_suite(200).by_submixture("niv2")[0]
    rng = random.Random(0)
    lengths = []
    for i in range(30):
        inputs, _ = task.render(i, ("fs_noopt",), rng, lambda s: len(s) <= 150)
        lengths.append(len(inputs))
    # Inputs that fit are kept under the limit; only a bare query may exceed it.
    zero_shot = [len(task.render(i, ("zs_noopt",), random.Random(0), lambda s: True)[0]) for i in range(30)]
    assert all(n <= 150 or n <= max(zero_shot) for n in lengths)
    long = [task.render(i, ("fs_noopt",), random.Random(i), lambda s: True)[0] for i in range(10)]
    assert max(len(x) for x in long) > 150  # without the limit exemplars are kept


def test_sizes_vary():
    build_suite.cache_clear()
    reg = build_suite(123)
    sizes = [t.source.num_examples for t in reg.by_submixture("niv2")]
    assert min(sizes) < 123 < max(sizes)


def test_corpus_is_deterministic_text():
    docs = [d for d, _ in zip(text_corpus(), range(3))]
    assert docs[0] == corpus_document(0) and docs[1] != docs[0] and len(docs[2]) > 50
