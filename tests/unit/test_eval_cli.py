"""`flanscale eval` / `flanscale eval score` end to end on fixture data."""

import argparse
import json
from pathlib import Path

import pytest

from orchestrator.commands import eval as eval_cmd
from trainers.spec import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="flanscale")
    eval_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run(argv):
    args = _parse(argv)
    return args.func(args)


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_both_forms_parse():
    run = _parse(["eval", "--checkpoint", "ck", "--benchmark", "bbh", "--mode", "cot", "--max-examples", "3"])
    assert run.func is eval_cmd.run_model and run.eval_action is None
    assert (run.checkpoint, run.benchmark, run.mode, run.max_examples) == ("ck", "bbh", "cot", 3)
    score = _parse(["eval", "score", "--benchmark", "mgsm", "--data-dir", "d", "--predictions", "p.jsonl", "--format", "table"])
    assert score.func is eval_cmd.score_predictions and score.eval_action == "score"
    assert (score.benchmark, score.data_dir, score.predictions, score.format) == ("mgsm", "d", "p.jsonl", "table")


def test_score_mmlu_json_with_missing(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", [
        {"id": "astronomy/test/0", "prediction": " A"},
        {"id": "astronomy/test/1", "prediction": "B"},
        {"id": "virology/test/0", "prediction": "(A) 100"},
    ])
    assert _run(["eval", "score", "--benchmark", "mmlu", "--data-dir", str(FIXTURES), "--predictions", str(preds)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["benchmark"] == "mmlu" and out["mode"] == "direct" and out["standin"] is False
    assert out["tasks"] == {"astronomy": pytest.approx(100 / 3), "virology": 100.0}
    assert out["score"] == pytest.approx(200 / 3)
    assert out["normalized"] == pytest.approx(100 * (200 / 3 - 25) / 75)
    assert "1 of 4 examples have no prediction" in captured.err


def test_score_samples_vote_and_table(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", [
        {"id": "de/1", "samples": ["The answer is 2,125.", "The answer is 2125", "The answer is 17."]},
        {"id": "de/2", "samples": ["The answer is 5.", "so -5", "The answer is -5."]},
        {"id": "zh/0", "samples": ["答案是 8", "The answer is 9."]},  # tie: the first one seen wins
        {"id": "de/0", "samples": []},
    ])
    argv = ["eval", "score", "--benchmark", "mgsm", "--data-dir", str(FIXTURES / "mgsm"), "--predictions", str(preds)]
    assert _run(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "sc" and out["tasks"] == {"de": pytest.approx(200 / 3), "zh": 100.0}
    assert _run(argv + ["--format", "table"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "mgsm (sc)" and "normalized" in table and "83.33" in table


def test_score_bbh_cot_mode(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", [
        {"id": "date_understanding/0", "prediction": "Let's think step by step. Tomorrow is 12/25/1937. So the answer is (B)."},
        {"id": "date_understanding/1", "prediction": "So the answer is B."},
        {"id": "multistep_arithmetic_two/3", "prediction": "So the answer is -35."},
    ])
    argv = ["eval", "score", "--benchmark", "bbh", "--data-dir", str(FIXTURES), "--predictions", str(preds), "--mode", "cot"]
    assert _run(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"]["date_understanding"] == 100.0 and out["tasks"]["multistep_arithmetic_two"] == 25.0
    assert out["tasks"]["boolean_expressions"] == 0.0
    # Per-subtask normalization: date 100 -> 100, arithmetic 25 -> 25, others at 0 -> -100, -100, 0.
    assert out["normalized"] == pytest.approx((100 + 25 - 100 - 100 + 0) / 5)


def test_score_errors(tmp_path):
    unknown = _write(tmp_path / "u.jsonl", [{"id": "astronomy/test/99", "prediction": "A"}])
    with pytest.raises(UserError, match=r"not in the mmlu data, e\.g\. 'astronomy/test/99'; ids look like \{subject\}/\{split\}/\{row\}"):
        _run(["eval", "score", "--benchmark", "mmlu", "--data-dir", str(FIXTURES), "--predictions", str(unknown)])
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "de/0", "prediction": "1"}\n{"id": "de/1"}\n')
    with pytest.raises(UserError, match=r"b\.jsonl:2: needs 'prediction'"):
        _run(["eval", "score", "--benchmark", "mgsm", "--data-dir", str(FIXTURES), "--predictions", str(bad)])
    with pytest.raises(UserError, match="mode: 'cot' is not evaluated for tydiqa"):
        _run(["eval", "score", "--benchmark", "tydiqa", "--predictions", str(bad), "--mode", "cot"])
    with pytest.raises(UserError, match="--checkpoint is required"):
        _run(["eval", "--benchmark", "mmlu"])
    with pytest.raises(UserError, match="unknown 'mmlx'"):
        _run(["eval", "--checkpoint", str(tmp_path), "--benchmark", "mmlx"])
    with pytest.raises(UserError, match="mode: 'cot' is not evaluated for tydiqa"):
        _run(["eval", "--checkpoint", str(tmp_path), "--benchmark", "all", "--mode", "cot"])
    with pytest.raises(UserError, match="must contain '\\{benchmark\\}'"):
        _run(["eval", "--checkpoint", str(tmp_path), "--benchmark", "mmlu,bbh", "--predictions-out", "p.jsonl"])
    with pytest.raises(UserError, match="--checkpoint: .* does not exist"):
        _run(["eval", "--checkpoint", str(tmp_path / "nope"), "--benchmark", "bbh"])
    with pytest.raises(UserError, match="eval data_dir: .* is not a directory"):
        _run(["eval", "--checkpoint", str(tmp_path), "--benchmark", "bbh", "--data-dir", str(tmp_path / "nope")])


def test_score_standins_with_max_examples(tmp_path, capsys):
    from trainers.eval import loaders
    bench = loaders.load("tydiqa")
    rows = [{"id": ex[0].id, "prediction": ex[0].answers[0]} for ex in bench.tasks.values()]
    preds = _write(tmp_path / "p.jsonl", rows)
    assert _run(["eval", "score", "--benchmark", "tydiqa", "--predictions", str(preds), "--max-examples", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == 100.0 and set(out["tasks"]) == {"ar", "fi", "sw"}
    # Scored on the shipped stand-ins, not on TyDiQA: the JSON and the table say so.
    assert out["standin"] is True
    assert _run(["eval", "score", "--benchmark", "tydiqa", "--predictions", str(preds), "--format", "table"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("tydiqa (direct) stand-in: ")
    # So does the shipped data given as --data-dir; the built-in unseen-task benchmark is real data.
    from trainers.eval import benchmarks
    assert benchmarks.standin("tydiqa", benchmarks.STANDINS) and benchmarks.standin("mmlu", benchmarks.STANDINS / "mmlu")
    assert not benchmarks.standin("unseen_qa") and not benchmarks.standin("tydiqa", FIXTURES)


def test_flanscale_main_runs_eval_score_and_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    """Through orchestrator.cli.main (limited to this command group, so the test does not
    depend on the others): exit 0 with JSON, and exit 2 with one line for bad input."""
    from orchestrator import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("eval",))
    preds = _write(tmp_path / "p.jsonl", [{"id": "virology/test/0", "prediction": "A"}])
    argv = ["eval", "score", "--benchmark", "mmlu", "--data-dir", str(FIXTURES / "mmlu"), "--predictions"]
    assert cli.main(argv + [str(preds)]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == {"astronomy": 0.0, "virology": 100.0}
    assert cli.main(argv + [str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flanscale: error: --predictions:") and err.count("\n") == 1


def test_new_eval_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit):  # argparse refuses the choice with usage and exit code 2
        _parse(["eval", "--checkpoint", "ck", "--mmlu-split", "train"])
    with pytest.raises(UserError, match="'rc' is not evaluated for tydiqa; allowed: direct"):
        _run(["eval", "--checkpoint", "ck", "--benchmark", "tydiqa", "--mode", "rc"])
    with pytest.raises(UserError, match="--benchmark: unknown 'unseen_mcq' \\(did you mean 'unseen_mc'\\?\\)"):
        _run(["eval", "--checkpoint", "ck", "--benchmark", "unseen_mcq"])
    # A malformed file of a built-in benchmark given in --data-dir is named with its line.
    bad = tmp_path / "unseen_arith"
    bad.mkdir()
    (bad / "mgsm_shopping.tsv").write_text("How many?\tmany\n", encoding="utf-8")
    with pytest.raises(UserError, match="mgsm_shopping.tsv:1: answer 'many' is not a number"):
        _run(["eval", "--checkpoint", str(tmp_path), "--benchmark", "unseen_arith", "--data-dir", str(tmp_path)])
    reasoning = tmp_path / "unseen_reasoning"
    (reasoning / "bbh").mkdir(parents=True)
    (reasoning / "cot-prompts").mkdir()
    (reasoning / "bbh" / "odd_one_ot.json").write_text('{"examples": []}')
    with pytest.raises(UserError, match="unknown unseen_reasoning task 'odd_one_ot' \\(did you mean 'odd_one_out'\\?\\)"):
        _run(["eval", "--checkpoint", str(tmp_path), "--benchmark", "unseen_reasoning", "--data-dir", str(tmp_path)])


@pytest.mark.parametrize("bad", ["4,1", "0,1,1", "a,1,1", "4,1,2,1", "-1,2,2", ""])
def test_a_mesh_is_three_sizes(bad):
    from trainers.spec import MeshConfig, mesh_from_sizes

    assert mesh_from_sizes(" 4, 1,2", "--mesh") == MeshConfig(devices=8, data=4, fsdp=1, tensor=2)
    with pytest.raises(UserError, match=r"^--mesh: .* is not a mesh; give three sizes >= 1 as DATA,FSDP,TENSOR"):
        mesh_from_sizes(bad, "--mesh")
