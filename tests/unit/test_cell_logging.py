"""What a cell's MLflow run holds for a person who opens it: a readable name and tags, its
training data as a dataset input, score and prediction tables, system metrics when asked
for; and the sweep's summary on the parent run. Written into a real SQLite MLflow."""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass

import pytest

from orchestrator.cells import CellRecord, sweep_summary
from trainers.cell_logging import log_evaluation, log_training_data, training_dataset, mixture_table
from trainers.eval import loaders, prompts, runner
from trainers.axes import point
from trainers.run_layout import TAG_SYSTEM_METRICS, cell_tags, run_name, ui_runs_url
from trainers.spec import DataConfig, EvalConfig, UserError
from trainers.tracking import FanOutTracker, MemoryTracker, MLflowTracker, system_metrics_enabled


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One database for the module (creating MLflow's schema is the slow part), a run per test."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cells", artifact_location=(root / "art").as_uri())
    return uri, client, exp


def _run(store) -> tuple[str, MLflowTracker]:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    return run_id, MLflowTracker(uri, run_id)


def test_a_resumed_attempt_logs_each_step_once(store):
    """Attempt 1 logs steps 1-5 and dies; attempt 2 resumes from the checkpoint at step 3 and
    replays 4-5 before going on: the history holds 1-8 once each, the first values kept."""
    uri, client, _ = store
    run_id, first = _run(store)
    for step in range(1, 6):
        first.log_metrics({"train/loss": 10.0 - step}, step)
    first.log_metrics({"eval/loss": 3.0}, 5)
    second = MLflowTracker(uri, run_id)
    for step in range(4, 9):
        second.log_metrics({"train/loss": 100.0 + step, "train/mfu": 0.5}, step)
    second.log_metrics({"eval/loss": 2.0}, 8)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(h[0] for h in history) == list(range(1, 9))
    assert dict(history)[5] == 5.0 and dict(history)[6] == 106.0
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/mfu")) == [4, 5, 6, 7, 8]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/loss")) == [5, 8]


def _table(client, run_id: str, path: str):
    """A table artifact as MLflow's UI reads it. (MlflowClient.load_table searches the runs of
    the global tracking URI, not the client's, so it cannot read a store of a test's own.)"""
    import pandas as pd

    assert {"path": path, "type": "table"} in json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    with tempfile.TemporaryDirectory() as tmp, open(client.download_artifacts(run_id, path, tmp)) as f:
        return pd.read_json(f, orient="split")


def _mixture(cfg: DataConfig):
    from trainers.data.mixtures import MixtureStream, build_registry

    return MixtureStream(build_registry(cfg), cfg, seed=0, length_fn=len)


def test_run_names_and_tags_read_as_a_person_would():
    assert run_name(point("tiny-2", 89, "mixed", 0)) == "tiny-2 · 89 tasks · mixed · seed 0"
    assert run_name(point("tiny-2", 0, "mixed", 1)) == "tiny-2 · base model · seed 1"
    assert cell_tags(point("tiny-2", 89, "mixed", 0), "t5") == {
        "model": "tiny-2", "task_count": "89", "formats": "mixed", "seed": "0", "family": "t5"}
    assert ui_runs_url("http://127.0.0.1:5000/", "7") == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType="
                                                          "machine_learning&orderByKey=metrics.%60eval%2Floss%60&orderByAsc=true")


def _answers_direct(bench):
    """A fake model that answers direct prompts right and everything else wrong."""
    gold = {prompts.prompt(bench, ex, "direct"): ex.answers[0] for t in bench.tasks.values() for ex in t}

    def generate(texts, **kw):
        return [[f" {gold[t]}\n"] if t in gold else ["no idea"] for t in texts]

    return generate


@dataclass(frozen=True)
class _Scored:
    logprob: float
    num_tokens: int
    num_chars: int


def _first_option(texts, options):
    return [[_Scored(0.0 if i == 0 else -1.0, 1, len(o)) for i, o in enumerate(opts)] for opts in options]


def test_an_evaluation_returns_its_metrics_unchanged_and_a_sample_of_predictions():
    cfg = EvalConfig(benchmarks=("unseen_mc",), modes=("direct", "cot", "rc"), max_examples=2, loss=False)
    bench = loaders.load("unseen_mc").limited(2)
    generate = _answers_direct(bench)
    full = runner.run_eval(cfg, generate, _first_option, predictions=5)
    assert full.metrics == runner.run_all(cfg, generate, _first_option)
    assert {s.mode for s in full.scores} == {"direct", "cot", "rc", "rc_norm"}
    by_mode = {m: [p for p in full.predictions if p.mode == m] for m in ("direct", "cot", "rc")}
    assert all(len(ps) == 5 for ps in by_mode.values())
    # Taken from the tasks in turn: five predictions show five tasks (the benchmark has more).
    assert len(bench.tasks) > 5 and len({p.task for p in by_mode["direct"]}) == 5
    examples = bench.by_id()
    for p in full.predictions:
        ex = examples[p.id]
        assert p.benchmark == "unseen_mc" and p.task == ex.task and p.gold == " | ".join(ex.answers)
        assert p.prompt == prompts.prompt(bench, ex, p.mode)
    assert all(p.correct and p.answer == examples[p.id].answers[0] for p in by_mode["direct"])
    assert not any(p.correct for p in by_mode["cot"]) and all(p.output == "no idea" for p in by_mode["cot"])
    assert all(p.output == p.answer == "A" and p.correct == (examples[p.id].answers[0] == "A") for p in by_mode["rc"])
    assert runner.run_eval(cfg, generate, _first_option).predictions == ()


def test_training_data_is_a_dataset_input_with_a_digest_and_a_mixture_table(store):
    _, client, _ = store
    run_id, tracker = _run(store)
    cfg = DataConfig(task_count=12, examples_per_task=5, input_length=64, target_length=16)
    mixture = _mixture(cfg)
    for _ in range(2):  # a resumed job logs it again: nothing doubles
        log_training_data(tracker, cfg, mixture)

    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "synthetic · 12 tasks · mixture A" and ds.source_type == "code"
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
    profile = json.loads(ds.profile)
    assert profile["task_count"] == 12 and profile["tasks_drawn"] == 12 and profile["mixture"] == "A"
    assert profile["formats"] == list(cfg.formats) and set(profile["caps"]) == {"cot", "muffin", "t0sf", "niv2"}
    assert math.isclose(sum(profile["proportions"].values()), 1.0)
    assert [c["name"] for c in json.loads(ds.schema)["mlflow_colspec"]] == ["task", "inputs", "targets"]
    import mlflow.data

    assert mlflow.data.get_source(inputs[0]).to_dict()["tags"]["mlflow.source.name"].startswith("trainers.data")

    table = _table(client, run_id, "data/mixture.json")
    assert len(table) == 12 and list(table.columns) == ["task", "submixture", "examples", "rate"]
    assert math.isclose(table["rate"].sum(), 1.0) and (table["examples"] > 0).all()
    assert profile["examples"] == table["examples"].sum()

    # The digest names the data: same config, same digest; another rung of the ladder, another one.
    again = training_dataset(cfg, mixture, mixture_table(cfg, mixture))
    assert again.digest == ds.digest
    more = DataConfig(task_count=13, examples_per_task=5, input_length=64, target_length=16)
    assert training_dataset(more, _mixture(more), mixture_table(more, _mixture(more))).digest != ds.digest


def test_flan_data_names_its_files_as_the_source(tmp_path):
    cfg = DataConfig(source="flan", paths=(str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")))
    from trainers.cell_logging import _source

    assert _source(cfg) == ("local", {"uri": str(tmp_path)})


def test_evaluation_tables_hold_scores_per_benchmark_and_task_and_the_predictions(store):
    _, client, _ = store
    run_id, tracker = _run(store)
    cfg = EvalConfig(benchmarks=("unseen_mc", "unseen_arith"), modes=("direct", "cot", "rc"), max_examples=2,
                     loss=False)
    bench = loaders.load("unseen_mc").limited(2)
    result = runner.run_eval(cfg, _answers_direct(bench), _first_option, predictions=3)
    log_evaluation(tracker, result, 40)
    log_evaluation(tracker, result, 40)  # logged again (a retried evaluation): no row twice

    scores = _table(client, run_id, "eval/scores.json")
    assert sorted(zip(scores["benchmark"], scores["mode"])) == sorted(
        [("unseen_mc", m) for m in ("direct", "cot", "rc", "rc_norm")] + [("unseen_arith", m) for m in ("direct", "cot")])
    direct = scores[(scores["benchmark"] == "unseen_mc") & (scores["mode"] == "direct")].iloc[0]
    assert direct["score"] == result.metrics["eval/unseen_mc/direct"] == 100.0
    assert direct["normalized"] == result.metrics["eval/unseen_mc/direct/normalized"] and direct["step"] == 40
    tasks = _table(client, run_id, "eval/task_scores.json")
    assert set(tasks.columns) >= {"benchmark", "mode", "task", "score", "flex_score"}
    assert len(tasks) == sum(len(s.tasks) for s in result.scores)
    preds = _table(client, run_id, "eval/predictions.json")
    assert list(preds.columns) == ["step", "benchmark", "mode", "task", "id", "prompt", "output", "answer", "gold",
                                   "correct", "correct_flex"]
    assert len(preds) == len(result.predictions) == 3 * 5
    assert preds[preds["mode"] == "direct"]["correct"].astype(bool).any()
    logged = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {t["path"] for t in logged} == {"eval/scores.json", "eval/task_scores.json", "eval/predictions.json"}

    # The next evaluation's rows are added, told apart by their step.
    log_evaluation(tracker, result, 80)
    assert sorted(set(_table(client, run_id, "eval/scores.json")["step"])) == [40, 80]


def test_an_evaluation_without_benchmarks_logs_no_tables():
    memory = MemoryTracker()
    log_evaluation(memory, None, 3)
    log_evaluation(memory, runner.EvalRun({"eval/loss": 1.0}, (), ()), 3)
    assert memory.tables == {}


def test_evaluation_tables_mark_the_benchmarks_scored_on_stand_ins():
    cfg = EvalConfig(benchmarks=("mmlu", "unseen_mc", "mgsm"), modes=("direct",), max_examples=1, loss=False)
    result = runner.run_eval(cfg, lambda texts, **kw: [["A"] for _ in texts])
    assert result.standins == ("mmlu", "mgsm")  # the paper's benchmarks without data of their own
    memory = MemoryTracker()
    log_evaluation(memory, result, 5)
    for name in ("eval/scores.json", "eval/task_scores.json"):
        table = memory.tables[name]
        assert table["standin"] == [b != "unseen_mc" for b in table["benchmark"]]


def _system_metrics(client, run_id):
    return {k for k in client.get_run(run_id).data.metrics if k.startswith("system/")}


def test_system_metrics_are_logged_when_on_and_not_when_off(store, monkeypatch):
    _, client, _ = store
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    monkeypatch.delenv("FLANSCALE_SYSTEM_METRICS", raising=False)
    on, tracker = _run(store)
    with tracker.system_metrics():
        time.sleep(0.8)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= _system_metrics(client, on)

    tagged_off, tracker = _run(store)  # the controller tags the runs of a --no-system-metrics session
    client.set_tag(tagged_off, TAG_SYSTEM_METRICS, "off")
    with tracker.system_metrics():
        time.sleep(0.5)
    assert _system_metrics(client, tagged_off) == set()

    monkeypatch.setenv("FLANSCALE_SYSTEM_METRICS", "0")
    env_off, tracker = _run(store)
    with tracker.system_metrics():
        time.sleep(0.5)
    assert _system_metrics(client, env_off) == set()


def test_the_system_metrics_setting_reads_plain_words():
    assert system_metrics_enabled({}) and system_metrics_enabled({"FLANSCALE_SYSTEM_METRICS": "on"})
    assert not system_metrics_enabled({"FLANSCALE_SYSTEM_METRICS": "False"})
    with pytest.raises(UserError, match="FLANSCALE_SYSTEM_METRICS: 'maybe' is not allowed"):
        system_metrics_enabled({"FLANSCALE_SYSTEM_METRICS": "maybe"})


def test_fan_out_skips_what_a_metrics_exporter_does_not_implement():
    class Exporter:  # only numbers, like orchestrator.metrics.RayMetricsTracker
        def __init__(self):
            self.seen = []

        def log_metrics(self, metrics, step):
            self.seen.append((step, metrics))

    exporter, memory = Exporter(), MemoryTracker()
    fan = FanOutTracker([exporter, memory])
    fan.log_metrics({"x": 1.0}, 2)
    fan.log_table({"a": [1]}, "t.json")
    fan.log_params({"p": 1})
    with fan.system_metrics():
        pass
    assert exporter.seen == [(2, {"x": 1.0})] and memory.tables == {"t.json": {"a": [1]}}
    assert memory.system_metrics_spans == 1


def _record(key, state, metrics, name=""):
    return CellRecord(run_id=key, key=key, name=name or key, state=state, attempts=1, failures=0, preemptions=0,
                      error="",
                      metrics=metrics)


def test_sweep_summary_counts_cells_compute_and_the_best_held_out_scores():
    records = [
        _record("a", "finished", {"eval/loss": 2.0, "eval/unseen/normalized_average": 10.0,
                                  "flops/finetune": 5.0, "flops/finetune_measured": 4.0}, "tiny-1 · 9 tasks"),
        _record("b", "finished", {"eval/loss": 1.5, "eval/unseen/normalized_average": 8.0, "flops/finetune": 7.0},
                "tiny-2 · 9 tasks"),
        _record("c", "failed", {"eval/loss": 0.1, "flops/finetune": 100.0}),  # not finished: counts for neither
        _record("d", "pending", {}),
    ]
    metrics, best = sweep_summary(records)
    assert metrics == {"sweep/cells": 4.0, "sweep/cells_finished": 2.0, "sweep/cells_failed": 1.0,
                       "sweep/flops_spent": 4.0 + 7.0, "sweep/best/eval/loss": 1.5,
                       "sweep/best/eval/unseen/normalized_average": 10.0}
    assert best == {"eval/loss": "tiny-2 · 9 tasks", "eval/unseen/normalized_average": "tiny-1 · 9 tasks"}
    assert sweep_summary([]) == ({"sweep/cells": 0.0, "sweep/cells_finished": 0.0, "sweep/cells_failed": 0.0,
                                  "sweep/flops_spent": 0.0}, {})


@pytest.mark.slow
def test_a_cell_run_holds_its_data_tables_and_system_metrics(tmp_path, monkeypatch):
    """run_cell end to end on a tiny model: what the pieces above log, the job logs."""
    from mlflow.tracking import MlflowClient

    from trainers.job import run_cell

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.delenv("FLANSCALE_SYSTEM_METRICS", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cell", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    spec = {
        "sweep": "cell",
        "model": {"name": "test-tiny", "vocab_size": 384, "d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16,
                  "num_encoder_layers": 1, "num_decoder_layers": 1},
        "data": {"task_count": 9, "input_length": 32, "target_length": 16, "examples_per_task": 20},
        "optim": {"batch_size": 4, "steps": 3, "learning_rate": 1e-2},
        "eval": {"benchmarks": ["unseen_mc"], "modes": ["direct", "rc"], "max_examples": 1, "max_new_tokens": 4,
                 "loss_examples": 2},
    }
    result = run_cell(spec, run_id=run_id, tracking_uri=uri, home=str(tmp_path))
    assert result["status"] == "finished"

    run = client.get_run(run_id)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["synthetic · 9 tasks · mixture A"]
    scores = _table(client, run_id, "eval/scores.json")
    assert set(scores["mode"]) == {"direct", "rc", "rc_norm"} and set(scores["step"]) == {3}
    preds = _table(client, run_id, "eval/predictions.json")
    assert set(preds["mode"]) == {"direct", "rc"} and (preds["prompt"].str.len() > 0).all()
    assert len(_table(client, run_id, "data/mixture.json")) == 9
    assert "system/cpu_utilization_percentage" in run.data.metrics
