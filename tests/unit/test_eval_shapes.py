"""A benchmark shape is one object: a toy shape defined in this one module and registered with
one benchmark entry is loaded, prompted, generated, ranked and scored (with its normalized
average) by the same runner and CLI as the paper's benchmarks."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from orchestrator.commands import eval as eval_cmd
from trainers.eval import benchmarks, loaders, prompts, rc, runner
from trainers.eval.extract import COT_TRIGGER, after_answer_is, first_line
from trainers.eval.shapes.base import Benchmark, Choices, Example, Shape, Shot, is_cot
from trainers.spec import EvalConfig, UserError

ANSWERS = ("no", "yes")


class YesNoShape(Shape):
    """Yes/no questions, one `{task}.tsv` file per task (question, TAB, yes|no)."""

    name = "yesno"
    id_form = "{task}/{index}"
    average_modes = ("direct", "cot")
    rankable = True

    def load(self, root: Path, info, mmlu_split: str) -> Benchmark:
        tasks = {}
        for path in sorted(root.glob("*.tsv")):
            rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
            tasks[path.stem] = tuple(Example(f"{path.stem}/{i}", path.stem, q, (a,)) for i, (q, a) in enumerate(rows))
        shots = {t: tuple(Shot(e.question, f"So the answer is {e.answers[0]}.", e.answers[0]) for e in ex)
                 for t, ex in tasks.items()}
        return Benchmark(info.name, self, tasks, shots, shots)

    def direct_prompt(self, bench: Benchmark, ex: Example) -> str:
        shots = prompts.others(bench.shots[ex.task], ex, bench.k)
        return "".join(f"Q: {s.question}\nA: {s.answer}\n\n" for s in shots) + f"Q: {ex.question}\nA:"

    def cot_prompt(self, bench: Benchmark, ex: Example) -> str:
        shots = prompts.others(bench.cot_shots[ex.task], ex, bench.k)
        return "".join(f"Q: {s.question}\nA: {s.rationale}\n\n" for s in shots) + f"Q: {ex.question}\nA: {COT_TRIGGER}"

    def extract(self, mode: str, text: str, ex: Example) -> str | None:
        span = (after_answer_is(text) if is_cot(mode) else first_line(text).rstrip(".")) or ""
        return span.lower() if span.lower() in ANSWERS else None

    def flex(self, mode: str, text: str, ex: Example) -> str | None:
        found = re.findall(r"\b(yes|no)\b", text.lower())
        return found[0] if found else None

    def rc_options(self, bench: Benchmark, task: str) -> dict[str, Choices] | None:
        return {ex.id: Choices(ANSWERS, ANSWERS, ANSWERS.index(ex.answers[0])) for ex in bench.tasks[task]}


SHAPE = YesNoShape()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy benchmark registered for one test (the registry as it was afterwards)."""
    monkeypatch.setattr(benchmarks, "_REGISTRY", dict(benchmarks._REGISTRY))
    monkeypatch.setattr(benchmarks, "SUITES", {k: dict(v) for k, v in benchmarks.SUITES.items()})
    monkeypatch.setattr(benchmarks, "_SHAPES", dict(benchmarks._SHAPES))
    root = tmp_path / "toy"
    root.mkdir()
    (root / "colors.tsv").write_text("Is the sky blue?\tyes\nIs grass green?\tyes\nIs snow black?\tno\n"
                                     "Is coal black?\tyes\n", encoding="utf-8")
    (root / "animals.tsv").write_text("Can fish fly?\tno\nCan dogs run?\tyes\n", encoding="utf-8")
    benchmarks.register(benchmarks.BenchmarkInfo("toy_yesno", SHAPE, "toy", ("direct", "cot", "sc", "rc"), "direct",
                                                 1, 50.0, root, "yes/no questions", title="Toy"))
    return "toy_yesno"


def _generate(texts, *, num_samples=1, temperature=0.0, top_k=0, seed=0, max_new_tokens=None):
    # Always "yes": strictly read only after CoT's "the answer is", leniently in both modes.
    return [["Hmm.\nSo the answer is yes."] * num_samples if t.endswith(COT_TRIGGER) else ["Yes, surely"] * num_samples
            for t in texts]


class _Scored:
    def __init__(self, option):
        self.logprob, self.num_tokens, self.num_chars = (-1.0 if option == "yes" else -2.0), 1, len(option)


def _prefers_yes(texts, options):
    return [[_Scored(o) for o in opts] for opts in options]


def test_a_toy_shape_is_loaded_prompted_and_scored_by_the_runner(toy):
    bench = loaders.load(toy)
    assert bench.shape is SHAPE and benchmarks.shape("yesno") is SHAPE
    ex = bench.tasks["colors"][1]
    assert prompts.prompt(bench, ex, "direct") == "Q: Is the sky blue?\nA: yes\n\nQ: Is grass green?\nA:"
    assert prompts.prompt(bench, ex, "sc").endswith(f"Q: Is grass green?\nA: {COT_TRIGGER}")
    assert rc.task_options(bench, "animals")["animals/0"] == Choices(("no", "yes"), ("no", "yes"), 0)

    result = runner.run_eval(EvalConfig(benchmarks=(toy,), modes=("direct", "cot", "rc")), _generate, _prefers_yes,
                             predictions=2)
    m = result.metrics
    # colors: 3 of 4 gold answers are "yes", animals 1 of 2: a mean of 62.5 for "yes" throughout.
    assert m["eval/toy_yesno/direct"] == 0.0 and m["eval/toy_yesno/direct_flex"] == 62.5
    assert m["eval/toy_yesno/cot"] == 62.5 and m["eval/toy_yesno/cot/normalized"] == 25.0
    assert m["eval/toy_yesno/rc"] == 62.5 and m["eval/toy_yesno/rc_choice_logprob"] < 0
    # The shape's average_modes make the toy suite's normalized average: (-100 + 25) / 2.
    assert benchmarks.average_members("toy") == (("toy_yesno", "direct"), ("toy_yesno", "cot"))
    assert m[benchmarks.average_metric("toy")] == -37.5
    assert benchmarks.average_titles("toy") == (("Toy Direct", "eval/toy_yesno/direct"), ("Toy CoT", "eval/toy_yesno/cot"))
    first = [p for p in result.predictions if p.mode == "cot"][0]
    assert (first.id, first.answer, first.gold, first.correct) == ("animals/0", "yes", "no", False)


def test_the_cli_scores_a_toy_shapes_predictions(toy, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "colors/0", "prediction": "So the answer is yes."}, {"id": "colors/2", "prediction": "The answer is no."},
        {"id": "animals/0", "samples": ["the answer is no", "the answer is yes", "The answer is no."]},
        {"id": "animals/1", "samples": ["maybe", "the answer is yes", "x"]},
    ]), encoding="utf-8")
    parser = argparse.ArgumentParser(prog="flanscale")
    eval_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "score", "--benchmark", toy, "--predictions", str(preds)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    # Samples: self-consistency's votes, read after "the answer is"; colors 2 of 4 right (two
    # missing), animals both.
    assert (out["mode"], out["tasks"], out["standin"]) == ("sc", {"animals": 100.0, "colors": 50.0}, False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "colors-0", "prediction": "yes"}) + "\n", encoding="utf-8")
    args = parser.parse_args(["eval", "score", "--benchmark", toy, "--predictions", str(bad)])
    with pytest.raises(UserError, match=r"ids look like \{task\}/\{index\} \('animals/0'\)"):
        args.func(args)


def test_an_entry_must_point_at_a_shape_that_fits_it(toy, tmp_path):
    info = benchmarks.get(toy)

    class Unrankable(YesNoShape):
        name, average_modes, rankable = "yesno_unranked", (), False

    with pytest.raises(ValueError, match="rc needs a shape whose answers it can rank"):
        benchmarks.register(benchmarks.BenchmarkInfo("toy2", Unrankable(), "toy2", ("direct", "rc"), "direct", 1, 50.0,
                                                     tmp_path))
    with pytest.raises(ValueError, match="another shape is already named 'yesno'"):
        benchmarks.register(benchmarks.BenchmarkInfo("toy3", YesNoShape(), "toy3", ("direct", "cot"), "direct", 1, 50.0,
                                                     tmp_path))
    with pytest.raises(ValueError, match=r"lack its shape's averaged \('direct', 'cot'\)"):
        benchmarks.register(benchmarks.BenchmarkInfo("toy4", SHAPE, "toy4", ("direct",), "direct", 1, 50.0, tmp_path))
    with pytest.raises(ValueError, match="is not a named Shape"):
        benchmarks.register(benchmarks.BenchmarkInfo("toy5", "yesno", "toy5", ("direct",), "direct", 1, 50.0, tmp_path))  # type: ignore[arg-type]
    assert benchmarks.names()[-1] == info.name  # nothing half-registered
    with pytest.raises(ValueError, match="unknown benchmark shape 'toy_yesno'"):
        benchmarks.shape("toy_yesno")
