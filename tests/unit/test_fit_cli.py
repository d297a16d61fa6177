"""`flanscale fit`: table and JSON output on the paper's points, and one-line errors."""

from __future__ import annotations

import json

import pytest


FLAN_T5_MMLU = "params,mmlu_direct\n80M,28.7\n250M,35.9\n780M,45.1\n3B,52.4\n11B,55.1\n"


@pytest.fixture
def flanscale(cli_runner):
    return cli_runner("fit")


@pytest.fixture
def mmlu_csv(tmp_path):
    path = tmp_path / "flan_t5_mmlu.csv"
    path.write_text(FLAN_T5_MMLU)
    return str(path)


def test_json_has_the_documented_shape_and_stays_in_domain(flanscale, mmlu_csv):
    code, out, err = flanscale("fit", mmlu_csv, "--x", "params", "--y", "mmlu_direct", "--kind", "accuracy",
                               "--chance", "25", "--at", "62e9", "540e9", "--format", "json", "--bootstrap", "100")
    assert code == 0, err
    r = json.loads(out)
    assert {"law", "formula", "params", "points", "forecasts", "backtest"} <= set(r)
    assert r["law"].startswith("sigmoid") and r["interval"]["method"].startswith("parametric bootstrap")
    assert [p["x"] for p in r["points"]] == [80e6, 250e6, 780e6, 3e9, 11e9]
    assert [f["at"] for f in r["forecasts"]] == [62e9, 540e9]
    for f in r["forecasts"]:
        assert 25 <= f["low"] <= f["value"] <= f["high"] <= 100
    # Both lie beyond the largest x (11B): extrapolations, however near.
    assert [f["extrapolation"] for f in r["forecasts"]] == [True, True]
    assert [round(f["decades_beyond"], 2) for f in r["forecasts"]] == [0.75, 1.69]
    assert r["backtest"]["held_out_x"] == 11e9 and r["backtest"]["fitted_points"] == 4
    assert isinstance(r["backtest"]["within"], bool)


def test_table_output_and_the_shipped_paper_table(flanscale):
    # Table 5's columns carry their kind and chance: MMLU is an accuracy with chance 25.
    code, out, err = flanscale("fit", "paper:table5", "--where", "family=t5", "--where", "finetuned=yes", "--x", "params",
                               "--y", "mmlu_direct", "--at", "62B", "--bootstrap", "50")
    assert code == 0, err
    assert out.startswith("trend:    rising, +") and "\nlaw:" in out and "chance 25" in out and "back-test: largest x (1.1e+10) held out" in out
    assert "6.2e+10" in out
    code, out, err = flanscale("fit", "paper:table5", "--where", "finetuned=yes", "--where", "family=palm", "--x",
                               "params", "--y", "norm_avg", "--format", "json", "--bootstrap", "50")
    assert code == 0, err
    r = json.loads(out)
    assert r["kind"] == "score" and "all-wrong floor of the paper average" in r["domain"]
    assert "skipped" in r["backtest"]  # 3 sizes: 2 left after holding one out


def test_loss_kind_from_the_column_name_and_seeds_as_rows(flanscale, tmp_path):
    path = tmp_path / "loss.csv"
    rows = [(p, 1.5 + 30 * p ** -0.25 + d) for p in (1e6, 4e6, 1.6e7, 6.4e7) for d in (-0.01, 0.01)]
    path.write_text("params,eval/loss\n" + "".join(f"{p},{v}\n" for p, v in rows))
    code, out, err = flanscale("fit", str(path), "--x", "params", "--y", "eval/loss", "--at", "1e12",
                               "--format", "json", "--bootstrap", "50")
    assert code == 0, err
    r = json.loads(out)
    assert r["kind"] == "loss" and [p["n"] for p in r["points"]] == [2, 2, 2, 2]
    assert r["forecasts"][0]["low"] >= 0


def test_trend_field_and_its_words(flanscale, mmlu_csv, tmp_path):
    code, out, err = flanscale("fit", mmlu_csv, "--x", "params", "--y", "mmlu_direct", "--kind", "accuracy",
                               "--format", "json", "--bootstrap", "20")
    assert code == 0, err
    t = json.loads(out)["trend"]
    assert t["direction"] == "rising" and t["low"] < t["slope"] < t["high"] and t["df"] == 3
    assert t["test"].startswith("OLS") and t["p"] < 0.05 and {"direction", "slope", "low", "high", "df", "test"} <= set(t)
    # Rows that go up and down around one level: the test cannot tell, and the words say so.
    noisy = tmp_path / "noisy.csv"
    noisy.write_text("params,acc\n" + "".join(f"{p},{40 + d}\n" for p in ("1e6", "1e7", "1e8") for d in (-3, 2.5)))
    code, out, err = flanscale("fit", str(noisy), "--x", "params", "--y", "acc", "--kind", "accuracy", "--bootstrap",
                               "20")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("trend:    no detectable trend (") and "flat" not in out
    code, out, _ = flanscale("fit", str(noisy), "--x", "params", "--y", "acc", "--kind", "accuracy", "--bootstrap",
                             "20", "--format", "json")
    assert json.loads(out)["trend"]["direction"] == "none"


@pytest.mark.parametrize("argv, csv_text, needles", [
    (["--x", "size", "--y", "mmlu_direct", "--kind", "accuracy"], FLAN_T5_MMLU, ["--x", "'size'", "columns: params"]),
    (["--x", "params", "--y", "mmlu", "--kind", "accuracy"], FLAN_T5_MMLU, ["--y", "did you mean 'mmlu_direct'"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "accuracy"], FLAN_T5_MMLU.replace("45.1", "n/a"),
     [":4:", "'n/a'", "not a number"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "accuracy"], "params,mmlu_direct\n1e6,30\n1e7,40\n",
     ["2 distinct x", "at least 3"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "accuracy", "--chance", "60"], FLAN_T5_MMLU,
     ["--chance", "60", "not below the data"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "accuracy", "--chance", "120"], FLAN_T5_MMLU,
     ["--chance", "outside 0..100"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "score", "--chance", "40"], FLAN_T5_MMLU,
     ["floor", "40", "above the smallest value 28.7"]),
    (["--x", "params", "--y", "mmlu_direct"], FLAN_T5_MMLU, ["--kind", "cannot tell the kind of 'mmlu_direct'"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "loss", "--chance", "25"], FLAN_T5_MMLU, ["--chance", "loss"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "accuracy", "--where", "family=t5"], FLAN_T5_MMLU,
     ["--where", "no column 'family'"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "loss"], FLAN_T5_MMLU.replace("28.7", "-1"),
     ["a loss is >= 0"]),
    (["--x", "params", "--y", "mmlu_direct", "--kind", "accuracy"], FLAN_T5_MMLU.replace("80M", "0"),
     ["params", "must be > 0"]),
])
def test_bad_input_is_one_line(flanscale, tmp_path, argv, csv_text, needles):
    path = tmp_path / "points.csv"
    path.write_text(csv_text)
    code, out, err = flanscale("fit", str(path), *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("flanscale: error: "), err
    for n in needles:
        assert n in err, (n, err)


def test_missing_file_and_where_without_match_are_one_line(flanscale):
    code, _, err = flanscale("fit", "/nonexistent.csv", "--x", "a", "--y", "b")
    assert code == 2 and "no such file" in err and err.count("\n") == 1
    code, _, err = flanscale("fit", "paper:table5", "--where", "family=t6", "--x", "params", "--y", "mmlu_direct",
                             "--kind", "accuracy")
    assert code == 2 and "values: cont-palm, palm, t5, u-palm" in err
