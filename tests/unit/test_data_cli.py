"""`python -m trainers.data`: inspect a cell's mixture, examples and packing."""

import json

from trainers.data.__main__ import main


def test_mixture_summary(capsys, tmp_path):
    assert main(["mixture", "--task-count", "89", "--mixture", "B", "--home", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == 89 and out["tasks_per_submixture"] == {"cot": 9, "muffin": 80}
    assert abs(out["submixture_rates"]["cot"] - 1.8 / 47.8) < 1e-9


def test_sample_and_pack(capsys, tmp_path):
    assert main(["sample", "--task-count", "9", "-n", "2", "--formats", "cot_zs", "--home", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("Let's think step by step.") == 2
    args = ["pack", "--task-count", "9", "--input-length", "256", "--target-length", "128", "--batches", "2",
            "--family", "decoder", "--home", str(tmp_path)]
    assert main(args) == 0
    assert 0 < json.loads(capsys.readouterr().out)["mean_efficiency"] <= 1


def test_bad_input_is_one_line(capsys, tmp_path):
    assert main(["mixture", "--task-count", "9", "--formats", "zs_op", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.formats") and err.count("\n") == 1
