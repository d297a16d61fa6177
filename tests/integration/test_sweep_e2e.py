"""Tiny sweeps end to end: real local Ray, real SQLite MLflow, real trainers.job.run_cell.

Cells are tiny-1 with 32/16 tokens and batch 2. Where a test must hit a cell mid-training,
its steps are slowed down through should_stop (called once per step), so the timing does not
depend on how fast this machine trains. The tests share one FLANSCALE_HOME (one MLflow
database, one checkpoint tree); each uses its own step count, so no two share a cell key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import controller as C
from orchestrator import placement as P
from orchestrator.planner import plan
from orchestrator.spec import load_spec
from orchestrator.store import TAG_ERROR, TAG_PARENT, TAG_STATE, TAG_SWEEP, TAG_WORKER, SweepStore

# The first test (a real sweep end to end) is in the default run; the rest are slow ones.
pytestmark = [pytest.mark.ray]


def setup_module(module):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def slow_steps(spec, run_id, tracking_uri, home, should_stop):
    """The real job, each step held back 0.3 s so that a test can act while it trains."""
    def stop():
        time.sleep(0.3)
        return should_stop()

    return P.default_cell_fn(spec, run_id, tracking_uri, home, stop)


def fail_89_until_fixed(spec, run_id, tracking_uri, home, should_stop):
    if spec["data"]["task_count"] == 89 and not (Path(home) / "fixed").exists():
        raise RuntimeError("shard 89 unreadable")
    return P.default_cell_fn(spec, run_id, tracking_uri, home, should_stop)


def raw_steps(store, run_id, metric="train/loss"):
    return sorted(m.step for m in store.client.get_metric_history(run_id, metric))


def assert_no_gaps(store, rec):
    steps = [s for s, _ in store.cell_history(rec.run_id)]
    assert steps == list(range(1, rec.total_steps + 1)), (rec.key, steps)


def test_tiny_sweep_runs_to_the_end_and_extending_runs_only_new_cells(ray_cpu, make_sweep, module_home):
    path = make_sweep("e2e", steps=8)
    spec = load_spec(str(path), [])
    cells = plan(spec)
    summary = C.run_sweep(spec, cells, home=module_home, progress=False)
    assert summary.counts() == {"finished": 2}, summary.errors
    store = SweepStore(home=module_home)
    parent = store.sweep_run("e2e", create=False)
    assert store.sweep_tags("e2e")[TAG_STATE] == "finished"
    records = {r.key: r for r in store.list_cells("e2e")}
    assert set(records) == {c.key for c in cells}
    for cell in cells:
        rec = records[cell.key]
        assert rec.tags[TAG_PARENT] == parent and rec.tags[TAG_SWEEP] == "e2e" and rec.state == "finished"
        assert rec.attempts == 1 and rec.preemptions == 0 and TAG_ERROR not in rec.tags
        assert rec.params["model"] == "tiny-1" and rec.params["task_count"] == str(cell.task_count)
        assert rec.params["steps"] == "8" and rec.params["batch_size"] == "2"
        assert TAG_WORKER in rec.tags
        history = store.cell_history(rec.run_id)
        assert_no_gaps(store, rec)
        assert history[-1][1] < history[0][1], history  # it learns
        assert summary.results[cell.key]["steps"] == 8
    # One more task count: only the new cell runs; the finished ones are not touched.
    bigger = load_spec(str(path), ["task_counts=[9,89,282]"])
    more = plan(bigger)
    again = C.run_sweep(bigger, more, home=module_home, progress=False)
    new = {c.key for c in more} - {c.key for c in cells}
    assert again.started == sorted(new) and again.counts() == {"finished": 3}
    after = {r.key: r for r in store.list_cells("e2e")}
    assert all(after[c.key].attempts == 1 for c in cells)
    assert all(raw_steps(store, after[c.key].run_id) == list(range(1, 9)) for c in cells)


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint(ray_cpu, make_sweep, module_home):
    spec = load_spec(str(make_sweep("kill-worker", task_counts="[9]", steps=12, every=2)), [])
    cells = plan(spec)
    store = SweepStore(home=module_home)
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(s=C.run_sweep(
        spec, cells, home=module_home, progress=False, cell_fn=slow_steps)))
    thread.start()
    ckpt = module_home / "checkpoints" / cells[0].key
    deadline = time.time() + 120
    rec = None
    while time.time() < deadline:
        recs = store.list_cells("kill-worker")
        rec = recs[0] if recs else None
        saved = [p for p in ckpt.glob("*") if p.name.isdigit() and int(p.name) >= 4] if ckpt.exists() else []
        if rec and TAG_WORKER in rec.tags and saved and rec.metric_steps.get("train/loss", 0) >= 5:
            break
        time.sleep(0.2)
    assert rec is not None and rec.state == "running", rec
    os.kill(int(rec.tags[TAG_WORKER].rsplit(":", 1)[1]), signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive()
    summary = done["s"]
    assert summary.states == {cells[0].key: "finished"}, summary.errors
    rec = store.list_cells("kill-worker")[0]
    assert (rec.state, rec.attempts, rec.preemptions) == ("finished", 2, 1)
    assert_no_gaps(store, rec)
    # The second attempt started from a checkpoint, not from step 1.
    steps = raw_steps(store, rec.run_id)
    assert steps.count(1) == 1 and len(steps) < 2 * 12


@pytest.mark.slow
def test_failed_cell_is_recorded_others_go_on_and_retry_failed_reruns_it(ray_cpu, make_sweep, module_home):
    spec = load_spec(str(make_sweep("flaky", steps=6)), [])
    cells = plan(spec)
    key = {c.task_count: c.key for c in cells}
    summary = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=fail_89_until_fixed)
    assert summary.states == {key[9]: "finished", key[89]: "failed"}
    store = SweepStore(home=module_home)
    recs = {r.key: r for r in store.list_cells("flaky")}
    assert recs[key[89]].error == "RuntimeError: shard 89 unreadable"
    assert store.sweep_tags("flaky")[TAG_STATE] == "failed"
    # Without --retry-failed nothing runs; with it, only the failed cell does.
    assert C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=fail_89_until_fixed).started == []
    (module_home / "fixed").touch()
    again = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=fail_89_until_fixed, retry_failed=True)
    assert again.started == [key[89]] and again.counts() == {"finished": 2}
    recs = {r.key: r for r in store.list_cells("flaky")}
    assert recs[key[89]].attempts == 2 and TAG_ERROR not in recs[key[89]].tags
    assert recs[key[9]].attempts == 1


def _cli(*args, env, **kw):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.slow
def test_killed_controller_rerun_completes_without_repeating_work(make_sweep, module_home):
    path = make_sweep("kill-ctl", steps=24, every=4)
    env = dict(os.environ, FLANSCALE_HOME=str(module_home))
    env.pop("RAY_ADDRESS", None)
    store = SweepStore(home=module_home)
    first = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "run", str(path), "--no-progress"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            steps = [r.metric_steps.get("train/loss", 0) for r in store.list_cells("kill-ctl")]
            if any(s >= 5 for s in steps):
                break
            time.sleep(0.2)
        at_kill = {r.key: r for r in store.list_cells("kill-ctl")}
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        # The controller's local Ray dies with it; anything left in its session is ours to end.
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert any(r.state == "running" for r in at_kill.values()), at_kill
    second = _cli("sweep", "run", str(path), "--no-progress", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 finished" in second.stdout and "mlflow.db" in second.stdout
    recs = {r.key: r for r in store.list_cells("kill-ctl")}
    assert {r.state for r in recs.values()} == {"finished"}
    for key, rec in recs.items():
        assert_no_gaps(store, rec)
        if at_kill[key].state == "finished":  # finished before the kill: not run again
            assert rec.attempts == at_kill[key].attempts
            assert raw_steps(store, rec.run_id) == list(range(1, 25))
    status = _cli("sweep", "status", "kill-ctl", "--format", "json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["done"] == report["total"] == 2 and report["eta_s"] == 0
    assert all(c["step"] == c["total_steps"] == 24 for c in report["cells"])


@pytest.mark.slow
def test_two_host_cpu_cell_trains_as_two_jax_processes(ray_cpu, make_sweep, module_home):
    """One actor per host in a placement group (PACKed on this one node), joined by
    jax.distributed over the coordinator address the controller hands out."""
    import dataclasses

    spec = load_spec(str(make_sweep("twohost-real", task_counts="[9]", steps=4)), [])
    (cell,) = plan(spec)
    mesh = dataclasses.replace(cell.spec.mesh, devices=2, hosts=2, data=2, fsdp=1, tensor=1)
    cell = dataclasses.replace(cell, devices=2, hosts=2, mesh={"data": 2, "fsdp": 1, "tensor": 1},
                               spec=dataclasses.replace(cell.spec, mesh=mesh))
    summary = C.run_sweep(spec, [cell], home=module_home, progress=False)
    assert summary.states == {cell.key: "finished"}, summary.errors
    assert summary.results[cell.key]["steps"] == 4
    rec = SweepStore(home=module_home).list_cells("twohost-real")[0]
    assert [s for s, _ in SweepStore(home=module_home).cell_history(rec.run_id)] == [1, 2, 3, 4]  # rank 0 alone logs


@pytest.mark.slow
def test_changed_eval_settings_evaluate_finished_cells_again_without_training(ray_cpu, make_sweep, module_home):
    path = make_sweep("reeval", task_counts="[9]", steps=10, every=5)
    spec = load_spec(str(path), ["eval.loss_examples=4"])
    (cell,) = plan(spec)
    assert C.run_sweep(spec, [cell], home=module_home, progress=False).counts() == {"finished": 1}
    store = SweepStore(home=module_home)
    (before,) = store.list_cells("reeval")
    assert before.eval_hash and "eval/loss" in before.metrics
    # the same settings: nothing to do
    assert C.run_sweep(spec, [cell], home=module_home, progress=False).started == []
    changed = load_spec(str(path), ["eval.loss_examples=8"])
    (again,) = plan(changed)
    assert again.key == cell.key  # the same trained model
    summary = C.run_sweep(changed, [again], home=module_home, progress=False)
    assert summary.started == [cell.key] and summary.counts() == {"finished": 1}, summary.errors
    (after,) = store.list_cells("reeval")
    assert after.eval_hash != before.eval_hash and after.attempts == before.attempts + 1
    assert raw_steps(store, after.run_id) == list(range(1, 11))  # not trained again
    assert raw_steps(store, after.run_id, "eval/loss") == [10, 10]  # evaluated again, at its final step


@pytest.mark.slow
def test_a_learning_rate_axis_runs_end_to_end_and_reports_two_series(ray_cpu, make_sweep, module_home, tmp_path,
                                                                      capsys):
    path = make_sweep("lr-axis", task_counts="[9]", steps=3, every=0)
    spec = load_spec(str(path), ["+axes={optim.learning_rate:[1e-3,3e-3]}"])
    cells = plan(spec)
    assert sorted(c.axes["optim.learning_rate"] for c in cells) == [1e-3, 3e-3]
    summary = C.run_sweep(spec, cells, home=module_home, progress=False)
    assert summary.counts() == {"finished": 2}, summary.errors
    store = SweepStore(home=module_home)
    recs = {r.key: r for r in store.list_cells("lr-axis")}
    for cell in cells:
        lr = f"{cell.axes['optim.learning_rate']:g}"
        rec = recs[cell.key]
        # The controller's params and the job's agree (MLflow params never change); the tag and name say the value.
        assert rec.params["axis.optim.learning_rate"] == rec.tags["axis.optim.learning_rate"] == lr
        assert rec.params["learning_rate"] == str(cell.spec.optim.learning_rate) and "optimizer" in rec.params
        assert rec.name == f"tiny-1 · 9 tasks · mixed · lr {lr} · seed 0"
    from orchestrator import cli  # in this process (FLANSCALE_HOME is the module's): no second start-up

    out = tmp_path / "report"
    assert cli.main(["report", "lr-axis", "--out", str(out), "--metric", "train/loss", "--x", "optim.learning_rate",
                     "--bootstrap", "0", "--no-log"]) == 0, capsys.readouterr().err
    series = (out / "tables" / "series.csv").read_text()
    assert "9 tasks, lr 0.001" in series and "9 tasks, lr 0.003" in series  # by size: one series per lr
    assert "tiny-1, 9 tasks" in series  # against the learning rate: one curve with both
    assert (out / "figures" / "train_loss_vs_optim_learning_rate.png").is_file()
    capsys.readouterr()
    assert cli.main(["sweep", "status", "lr-axis", "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert sorted(c["axes"]["optim.learning_rate"] for c in status["cells"]) == ["0.001", "0.003"]
    assert cli.main(["report", "lr-axis", "--out", str(tmp_path / "r2"), "--x", "optim.steps", "--no-log"]) == 2
    assert "--x: 'optim.steps' is not an axis of sweep 'lr-axis'" in capsys.readouterr().err
