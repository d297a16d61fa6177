"""run_cell's contract (result dict, metrics into a real MLflow run) and `flanscale train`."""

import json
import math

import pytest
import yaml

from orchestrator.cli import main
from trainers.job import FanOutTracker, run_cell
from trainers.process import ENV_COORDINATOR, init_distributed
from trainers.spec import CellSpec, UserError
from trainers.tracking import MemoryTracker

STEPS = 3
SPEC = {
    "sweep": "job-test",
    "model": {"name": "test-tiny", "vocab_size": 384, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16,
              "num_encoder_layers": 1, "num_decoder_layers": 1, "dropout_rate": 0.1},
    "data": {"task_count": 9, "input_length": 32, "target_length": 16, "examples_per_task": 20},
    "optim": {"batch_size": 4, "steps": STEPS, "learning_rate": 1e-2},
    "pretrain_flops": 1e12,
}


def test_fan_out_reaches_every_tracker():
    a, b = MemoryTracker(), MemoryTracker()
    fan = FanOutTracker([a, b])
    fan.log_metrics({"x": 1.0}, 3)
    fan.log_params({"p": 1})
    fan.set_tags({"t": "v"})
    assert a.metrics == b.metrics == {"x": [(3, 1.0)]} and a.params == b.params and a.tags == b.tags


def test_distributed_is_off_without_a_coordinator(monkeypatch):
    monkeypatch.delenv(ENV_COORDINATOR, raising=False)
    assert init_distributed() is False


def test_coordinator_without_process_counts_is_a_user_error(monkeypatch):
    monkeypatch.setenv(ENV_COORDINATOR, "127.0.0.1:1234")
    monkeypatch.delenv("FLANSCALE_NUM_PROCESSES", raising=False)
    with pytest.raises(UserError, match="FLANSCALE_NUM_PROCESSES"):
        init_distributed()


@pytest.mark.slow
def test_run_cell_logs_the_contract_metrics_into_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("job-test", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(exp).info.run_id
    memory = MemoryTracker()
    spec = {**SPEC, "eval": {"benchmarks": ["mmlu"], "modes": ["direct"], "max_examples": 1, "max_new_tokens": 4,
                                "every_steps": 2}}
    result = run_cell(spec, run_id=run_id, tracking_uri=uri, home=str(tmp_path), extra_trackers=(memory,))

    assert set(result) == {"key", "steps", "final_loss", "finetune_flops", "pretrain_flops", "flops_fraction",
                           "tokens", "eval", "status"}
    assert result["key"] == CellSpec.from_dict(SPEC).key() and result["status"] == "finished"
    assert result["steps"] == STEPS and math.isfinite(result["final_loss"]) and result["tokens"] > 0
    assert result["flops_fraction"] == pytest.approx(result["finetune_flops"] / 1e12)

    run = client.get_run(run_id)
    history = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(history) == list(range(1, STEPS + 1))
    for name in ("train/step_s", "train/tokens_per_s", "train/useful_tokens_per_s", "train/packing_efficiency",
                 "train/mfu", "flops/finetune", "flops/pretrain", "flops/fraction",
                 "train/analytic_step_flops"):
        assert name in run.data.metrics, name
    assert 0 < run.data.metrics["train/packing_efficiency"] <= 1
    assert run.data.params["model"] == "test-tiny" and run.data.params["task_count"] == "9"
    assert run.data.tags["flanscale.cell_key"] == result["key"]
    # Evaluation ran every 2 steps and at the end; the final scores are in the result too.
    assert 0 <= result["eval"]["eval/mmlu/direct"] <= 100
    assert run.data.metrics["eval/mmlu/direct"] == result["eval"]["eval/mmlu/direct"]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/mmlu/direct")) == [2, STEPS]
    assert memory.metrics["train/loss"] == [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]


def test_train_command_rejects_unknown_keys(tmp_path, capsys):
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({**SPEC, "optim": {"batch_size": 4, "stepz": 3}}))
    assert main(["train", str(cell), "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(cell) in err and "'stepz'" in err and "steps" in err


@pytest.mark.slow
def test_train_command_prints_loss_lines_and_result(tmp_path, capsys):
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump(SPEC))
    assert main(["train", str(cell), "--home", str(tmp_path), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.split()[:1] == ["step"] and line.split()[2] == "loss"] == ["1", "2"]
    assert "eval/loss = " in out  # the held-out loss is on by default
    result = json.loads(out[out.index("{\n"):])
    assert result["steps"] == 2 and result["status"] == "finished"
    assert (tmp_path / "checkpoints" / result["key"] / "2").is_dir()


@pytest.mark.slow
def test_pretrain_then_finetune_reports_measured_flops_fraction(tmp_path):
    from trainers.base_model import pretrain
    from trainers.models import load_config

    model = CellSpec.from_dict(SPEC).model
    summary = pretrain(model, tmp_path / "base", steps=2, batch_size=4, input_length=32, target_length=16,
                       home=tmp_path)
    meta = json.loads((tmp_path / "base" / "pretrain.json").read_text())
    assert load_config(tmp_path / "base") == model
    assert meta["steps"] == 2 and meta["tokens"] > 0 and meta["flops"] == summary["flops"] > 0
    assert meta["flops_6nd"] == pytest.approx(6 * meta["params"] * meta["tokens"])

    spec = {**SPEC, "pretrain_flops": 0.0, "init_checkpoint": str(tmp_path / "base")}
    result = run_cell(spec, home=str(tmp_path))
    assert result["pretrain_flops"] == meta["flops"]
    assert result["flops_fraction"] == pytest.approx(result["finetune_flops"] / meta["flops"])
    assert result["key"] != CellSpec.from_dict(SPEC).key()  # a different base model is a different cell


def test_pretrain_command_rejects_unknown_preset(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "b"), "--model", "tiny-9", "--steps", "1"]) == 2
    assert "tiny-9" in capsys.readouterr().err


@pytest.mark.slow
def test_base_model_cell_is_evaluated_without_finetuning(tmp_path):
    memory = MemoryTracker()
    base = {**SPEC, "data": {**SPEC["data"], "task_count": 0}, "optim": {**SPEC["optim"], "steps": 0},
            "eval": {"benchmarks": ["mmlu"], "modes": ["direct"], "max_examples": 1, "max_new_tokens": 4}}
    result = run_cell(base, home=str(tmp_path), extra_trackers=(memory,))

    assert result["status"] == "finished" and result["steps"] == 0 and result["tokens"] == 0
    assert result["finetune_flops"] == 0 and result["flops_fraction"] == 0
    assert 0 <= result["eval"]["eval/mmlu/direct"] <= 100
    assert "train/loss" not in memory.metrics
    assert memory.metrics["flops/finetune"] == [(0, 0.0)] and memory.params["task_count"] == 0
    # Nothing was trained, so nothing was checkpointed.
    assert not (tmp_path / "checkpoints").exists()
