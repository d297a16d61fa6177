"""The unseen-task benchmark and the held-out loss set: held out from every rung of the ladder,
reproducible from the generator, balanced, and readable by the benchmark loaders."""

import functools
import json
import random
import re
from collections import Counter

import pytest

from trainers.data import heldout
from trainers.data.mixtures import MixtureStream, select_tasks
from trainers.data.suite import build_suite
from trainers.eval import loaders, make_unseen
from trainers.spec import DataConfig

RUNGS = (9, 89, 282, 1836)
SHIPPED = make_unseen.DEFAULT_OUT
SEP = "\n\x00\n"  # between texts, so no pattern matches across two of them
# Phrasings may share common three-word runs with training text ("Which of the", "from the
# passage"), never four words in a row.
NGRAM = 4


@functools.lru_cache(maxsize=None)
def training_text(rung: int) -> str:
    """What a cell at this rung trains on: every selected task's instructions and layouts, a few
    of its examples rendered in every format it has, and a stretch of the mixture stream."""
    reg = build_suite(200)
    parts = []
    for task in select_tasks(reg, rung):
        parts += [t.instruction for t in task.templates] + [t.layout for t in task.templates]
        rng = random.Random(f"disjoint/{rung}/{task.name}")
        for i in range(3):
            for fmt in task.formats:
                parts += task.render(i, (fmt,), rng, lambda s: True)
    stream = MixtureStream(reg, DataConfig(task_count=rung, formats=("all",)), seed=rung, length_fn=len)
    for _ in range(400):
        parts += stream.next()[1:]
    return SEP.join(parts)


def _pattern(phrase: str) -> re.Pattern:
    """A held-out phrasing as a regex: its {fields} match any text within one line. Blank pieces
    at either end go (a field there matches anything anyway), which keeps the search fast."""
    parts = re.split(r"\{[^}]*\}", phrase.lower())
    while len(parts) > 1 and not parts[0].strip():
        parts.pop(0)
    while len(parts) > 1 and not parts[-1].strip():
        parts.pop()
    return re.compile(r"[^\n\x00]*?".join(re.escape(p) for p in parts))


def _ngrams(phrase: str, n: int = NGRAM) -> list[str]:
    """Every run of n words inside the literal pieces of a phrasing, in lower case."""
    out = []
    for piece in re.split(r"\{[^}]*\}", phrase.lower()):
        words = piece.split()
        out += [" ".join(words[i: i + n]) for i in range(len(words) - n + 1)]
    return out


def heldout_phrases() -> list[str]:
    out = []
    for task in heldout.TASKS.values():
        out += [*task.phrasings, *task.instructions] + ([task.description] if task.description else [])
    return out


def leaks(phrases: list[str], text: str) -> list[str]:
    """The phrasings found in `text` (case-insensitive): whole, with fields matching anything,
    or by any run of NGRAM words of their own wording."""
    text = text.lower()
    return sorted({p for p in phrases if _pattern(p).search(text) or any(g in text for g in _ngrams(p))})


def test_heldout_task_names_are_not_training_task_names():
    names = build_suite(200).names()
    training = set(names) | {n.split("/", 1)[1] for n in names}
    held = set(heldout.TASKS) | set(heldout.SHAPES)
    assert not held & training
    assert len(heldout.TASKS) == sum(len(heldout.tasks(s)) for s in heldout.SHAPES)
    assert all(4 <= len(heldout.tasks(s)) <= 6 for s in heldout.SHAPES)


@pytest.mark.parametrize("rung", RUNGS)
def test_no_heldout_phrasing_appears_in_training_at_any_rung(rung):
    text = training_text(rung)
    assert leaks(heldout_phrases(), text) == []
    # The check can fail: phrasings built from this rung's own wording are caught.
    own = select_tasks(build_suite(200), rung)[-1].templates[0].instruction
    words = own.upper().split()
    assert leaks([own], text) == [own]
    assert leaks(["{x} " + " ".join(words[1:-1]) + " {y}"], text)
    assert leaks(["Nothing like it " + " ".join(words[:NGRAM]) + " at all."], text)


def test_no_training_instruction_appears_in_heldout_text():
    instructions = {t.instruction for task in build_suite(200) for t in task.templates}
    texts = [p.read_text(encoding="utf-8") for p in sorted(SHIPPED.rglob("*")) if p.is_file()]
    texts += [x for _, inputs, targets in heldout.loss_set() for x in (inputs, targets)]
    held = SEP.join(texts)
    assert sorted(i for i in instructions if i in held) == []


def test_generated_questions_use_the_declared_phrasings():
    """The phrasings the disjointness test checks are the ones the generators write."""
    for task in heldout.TASKS.values():
        patterns = [re.compile(".*?".join(map(re.escape, re.split(r"\{[^}]*\}", p))) + "$") for p in task.phrasings]
        for split in heldout.SPLITS[task.shape]:
            for it in heldout.items(task.name, split):
                question = it.question.split("\nOptions:\n")[0]
                assert any(p.match(question) for p in patterns), (task.name, question)
                if task.shape == "qa":  # every sentence of the passage is the task's fact
                    assert all(patterns[0].match(s) for s in re.split(r"(?<=\.) ", it.context))
                    assert it.context[it.answer_start: it.answer_start + len(it.answer)] == it.answer


def test_shipped_files_equal_what_the_generator_writes(tmp_path):
    make_unseen.main(tmp_path)
    shipped = {p.relative_to(SHIPPED): p.read_bytes() for p in SHIPPED.rglob("*") if p.is_file()}
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert sorted(map(str, shipped)) == sorted(map(str, fresh))
    stale = [str(p) for p in fresh if fresh[p] != shipped[p]]
    assert stale == [], "regenerate with `python -m trainers.eval.make_unseen`"
    assert sum(map(len, shipped.values())) < 400_000


def test_loss_set_is_deterministic_heldout_and_covers_every_group():
    first = heldout.loss_set()
    heldout._draw.cache_clear()
    assert heldout.loss_set() == first
    assert Counter(g for g, _, _ in first) == {s: 48 for s in heldout.SHAPES}
    small = heldout.loss_set(8)
    for shape in heldout.SHAPES:
        assert [x for x in small if x[0] == shape] == [x for x in first if x[0] == shape][:8]
    instructions = [i for t in heldout.TASKS.values() for i in t.instructions]
    for group, inputs, targets in first:
        assert targets.strip() and any(i in inputs for i in instructions)
        if group in ("reasoning", "arith"):
            assert re.search(r". So the answer is \S+\.$", targets)
    # No loss-set item repeats a benchmark item (question, options and passage).
    key = lambda it: (it.question, tuple(sorted(it.options)), it.context)  # noqa: E731
    for task in heldout.TASKS.values():
        drawn = heldout._draw(task.name, 8)
        bench = {key(it) for s in heldout.SPLITS[task.shape] for it in drawn[s]}
        assert len(drawn["loss"]) == 8 and not bench & {key(it) for it in drawn["loss"]}


def test_reasoning_targets_lie_in_finite_option_sets_with_baselines():
    names = {t.name for t in heldout.tasks("reasoning")}
    assert set(heldout.REASONING_BASELINES) == names == set(heldout.REASONING_OPTIONS)
    assert {p.stem for p in (SHIPPED / "reasoning" / "bbh").glob("*.json")} == names
    for task in heldout.tasks("reasoning"):
        options = heldout.REASONING_OPTIONS[task.name]
        assert heldout.REASONING_BASELINES[task.name] == pytest.approx(100 / len(options))
        examples = json.loads((SHIPPED / "reasoning" / "bbh" / f"{task.name}.json").read_text())["examples"]
        targets = Counter(ex["target"] for ex in examples)
        assert set(targets) == set(options)  # every option is some item's answer, and nothing else is
        assert max(targets.values()) - min(targets.values()) <= 2
        for ex in examples:
            if ex["target"].startswith("("):  # letter targets are listed in the Options block
                assert f"\n{ex['target']} " in "\n" + ex["input"].split("\nOptions:\n", 1)[1]


def test_mc_answer_letters_are_balanced():
    bench = loaders.load_mmlu(SHIPPED / "mc")
    total = Counter()
    for subject, examples in bench.tasks.items():
        letters = Counter(e.answers[0] for e in examples)
        assert set(letters) == set("ABCD") and max(letters.values()) - min(letters.values()) <= 2, subject
        total += letters
        assert len(bench.shots[subject]) == 5 and len(bench.cot_shots[subject]) == 5
    assert max(total.values()) - min(total.values()) <= 4


def test_shipped_files_load_with_the_release_loaders():
    assert set(loaders.load_mmlu(SHIPPED / "mc").tasks) == {t.name for t in heldout.tasks("mc")}
    qa = loaders.load_tydiqa(SHIPPED / "qa")
    assert set(qa.tasks) == {t.name for t in heldout.tasks("qa")} and all(len(v) == 32 for v in qa.tasks.values())
    arith = loaders.load_mgsm(SHIPPED / "arith")
    assert set(arith.tasks) == set(arith.cot_shots) == {t.name for t in heldout.tasks("arith")}
    for name, shots in arith.cot_shots.items():
        assert len(shots) == 8 and all(s.rationale.endswith(f"The answer is {s.answer}.") for s in shots)
    for task in heldout.tasks("reasoning"):
        description, shots = loaders.parse_cot_prompt(SHIPPED / "reasoning" / "cot-prompts" / f"{task.name}.txt")
        assert description == task.description and len(shots) == 3
        assert all(s.answer in heldout.REASONING_OPTIONS[task.name] for s in shots)
