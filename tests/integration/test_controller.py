"""The controller's decisions (pure) and how it places cells on a real local Ray.

Cells here are small functions run inside real Ray workers against a real SQLite MLflow store;
the full job (trainers.job.run_cell) is exercised in test_sweep_e2e.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import threading
import time

import pytest
from ray.exceptions import ActorDiedError, NodeDiedError, RayTaskError, WorkerCrashedError

from orchestrator import controller as C
from orchestrator import placement as P
from orchestrator import scheduling as S
from orchestrator.planner import plan, ray_resources
from orchestrator.spec import RetrySpec, load_spec
from orchestrator.store import TAG_ERROR, TAG_STATE, SweepStore
from trainers.spec import UserError


def setup_module(module):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)


# ---------------------------------------------------------------- decisions (pure)


@pytest.mark.parametrize("stored,feasible,retry,expected", [
    (None, True, False, "pending"),
    ("finished", True, True, "finished"),
    ("failed", True, False, "failed"),
    ("failed", True, True, "pending"),
    ("running", True, False, "pending"),  # its controller died: resume
    ("preempted", True, False, "pending"),
    ("cancelled", True, False, "pending"),
    ("infeasible", True, False, "pending"),  # re-planned onto hardware that fits
    ("finished", False, False, "infeasible"),
])
def test_initial_state(stored, feasible, retry, expected):
    assert S.initial_state(stored, feasible, retry) == expected


def _views(*states, priorities=None):
    return [S.CellView(f"k{i}", float(priorities[i] if priorities else i), s) for i, s in enumerate(states)]


def test_next_actions_fills_free_slots_smallest_first():
    views = _views("pending", "running", "pending", "pending", "finished", priorities=[5, 0, 1, 3, 2])
    assert S.next_actions(views, max_concurrent=3, cancel_requested=False) == [S.Start("k2"), S.Start("k3")]
    assert S.next_actions(views, max_concurrent=1, cancel_requested=False) == []


def test_next_actions_cancel_stops_running_once_and_starts_nothing():
    views = _views("running", "pending", "running")
    views[2] = dataclasses.replace(views[2], stopping=True)
    assert S.next_actions(views, max_concurrent=4, cancel_requested=True) == [S.Stop("k0")]


def test_classify_failure_vs_preemption():
    err = RayTaskError("run", "Traceback ...", ValueError("loss is nan at step 3"))
    assert S.classify(error=err) == ("failed", "ValueError: loss is nan at step 3", True)
    assert S.classify(error=WorkerCrashedError())[0] == "preempted"
    assert S.classify(error=NodeDiedError("node gone"))[0] == "preempted"
    assert S.classify(error=ActorDiedError())[0] == "preempted"
    assert S.classify(result={"status": "preempted"})[:2] == ("preempted", "stopped before the last step")
    assert S.classify(result={"status": "preempted"}, stop_requested=True)[0] == "cancelled"
    assert S.classify(result={"status": "finished"}) == ("finished", "", True)


def test_bad_input_and_nan_are_never_retried_and_out_of_memory_is_a_failure():
    class NonFiniteLoss(FloatingPointError):  # trainers.train's, by name: it needs JAX to import
        pass

    for cause in (UserError("data.paths: /x: no such file"), NonFiniteLoss("loss is nan at step 3")):
        outcome = S.classify(error=RayTaskError("run", "Traceback ...", cause))
        assert outcome.kind == "failed" and outcome.retry is False, outcome
        view = S.after_outcome(S.CellView("k", 0, "running"), outcome, RetrySpec(failure=5))
        assert view.state == "failed"
    from ray.exceptions import OutOfMemoryError

    host = S.classify(error=OutOfMemoryError("Task was killed due to the node running low on memory."))
    assert host.kind == "failed" and host.message.startswith("out of host memory") and host.retry
    device = S.classify(error=RayTaskError("run", "Traceback ...", RuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB")))
    assert device.kind == "failed" and device.message.startswith("out of device memory")


def test_after_outcome_spends_separate_budgets():
    r = RetrySpec(failure=1, preemption=2)
    v = S.CellView("k", 0, "running")
    v = S.after_outcome(v, S.Outcome("preempted", ""), r)
    assert (v.state, v.preemptions) == ("pending", 1)
    v = S.after_outcome(v, S.Outcome("preempted", ""), r)
    assert v.state == "pending"
    assert S.after_outcome(v, S.Outcome("preempted", ""), r).state == "preempted"  # third: out of budget
    v = S.after_outcome(v, S.Outcome("failed", "x"), r)
    assert (v.state, v.failures) == ("pending", 1)
    assert S.after_outcome(v, S.Outcome("failed", "x"), r).state == "failed"
    assert S.after_outcome(v, S.Outcome("cancelled", ""), r).state == "cancelled"
    # budgets spent in earlier sessions (stored counts) count too
    assert S.after_outcome(S.CellView("k", 0, "running", failures=1), S.Outcome("failed", "x"), r).state == "failed"
    assert S.initial_state("preempted", True, False, exhausted=True) == "preempted"
    assert S.initial_state("preempted", True, True, exhausted=True) == "pending"


def test_placement_strategy_spreads_only_where_it_can():
    assert P.placement_strategy(hosts=4, alive_nodes=4) == "STRICT_SPREAD"
    assert P.placement_strategy(hosts=2, alive_nodes=1) == "PACK"


def test_time_left_counts_steps_left_over_the_slots():
    from orchestrator.progress import CellRow, estimate_remaining_s, format_duration

    rows = [CellRow("a", "a", "finished", 10, 10, 1.0, 1, "r", 0.5),
            CellRow("b", "b", "running", 4, 10, 2.0, 1, "r", 1.0),  # 6 steps x 1.0 s
            CellRow("c", "c", "pending", 0, 10, None, 0, "r"),  # 10 steps x mean(0.5, 1.0)
            CellRow("d", "d", "failed", 3, 10, None, 1, "r")]
    assert estimate_remaining_s(rows, slots=2) == pytest.approx((6 * 1.0 + 10 * 0.75) / 2)
    assert estimate_remaining_s(rows[2:3], slots=1) is None
    assert estimate_remaining_s(rows[2:3], slots=1, fallback_step_s=2.0) == 20.0
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s" and format_duration(None) == "?"


def test_tpu_topologies_are_slices_ray_accepts():
    from ray._private.accelerators.tpu import TPUAcceleratorManager

    assert P.tpu_topology("tpu-v4", 16) == ("v4", "2x2x4")
    assert P.tpu_topology("tpu-v6e", 32) == ("v6e", "4x8")
    assert P.tpu_topology("tpu-v4", 12) is None and P.tpu_topology("a100-80g", 8) is None
    for acc in ("tpu-v4", "tpu-v5p", "tpu-v5e", "tpu-v6e"):
        for chips in (4, 8, 16, 32, 64, 256):
            version, topo = P.tpu_topology(acc, chips)
            assert TPUAcceleratorManager.is_valid_tpu_accelerator_topology(
                tpu_accelerator_version=version, tpu_topology=topo), (acc, chips, topo)
            assert math.prod(int(d) for d in topo.split("x")) == chips


def test_sweep_state():
    assert S.sweep_state(["finished", "infeasible"], False) == "finished"
    assert S.sweep_state(["finished", "failed"], False) == "failed"
    assert S.sweep_state(["finished", "preempted"], False) == "preempted"
    assert S.sweep_state(["finished"], True) == "cancelled"


# ---------------------------------------------------------------- on a real local Ray


def report_placement(spec, run_id, tracking_uri, home, should_stop):
    import ray

    ctx = ray.get_runtime_context()
    return {"status": "finished", "assigned": ctx.get_assigned_resources(), "run_id": run_id,
            "env": {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "FLANSCALE_HOME", "FLANSCALE_COORDINATOR",
                                                   "FLANSCALE_NUM_PROCESSES", "FLANSCALE_PROCESS_ID")}}


def _one_cell(make_sweep, name, *overrides):
    spec = load_spec(str(make_sweep(name, task_counts="[9]")), list(overrides))
    return spec, plan(spec)


@pytest.mark.ray
def test_cells_request_exactly_what_the_plan_says(ray_logical, make_sweep, module_home):
    """GPU and TPU cells on logical resources: each task (or host actor) holds its planned
    per-host share; the 8-chip TPU v4 cell spans two 4-chip hosts."""
    for accelerator, resource, devices, hosts in (("a100-80g", "GPU", 4, 1), ("tpu-v4", "TPU", 8, 2)):
        try:
            spec, cells = _one_cell(make_sweep, f"place-{resource.lower()}", f"accelerator={accelerator}",
                                    f"min_devices={devices}", f"max_devices={devices}")
        except UserError as e:
            pytest.fail(f"planner refused {accelerator}: {e}")
        assert (cells[0].devices, cells[0].hosts) == (devices, hosts)
        summary = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=report_placement)
        assert summary.states == {cells[0].key: "finished"}, summary.errors
        assigned = summary.results[cells[0].key]["assigned"]
        want = ray_resources(cells[0])
        expected = want.get("num_gpus") or want.get("resources", {}).get("TPU")
        assert assigned[resource] == pytest.approx(expected), (assigned, want)
        assert summary.results[cells[0].key]["env"]["JAX_PLATFORMS"] is None  # only cpu cells pin JAX to cpu


@pytest.mark.ray
def test_multi_host_cell_gets_one_actor_per_host(ray_logical, make_sweep, module_home):
    """Two hosts on a one-node cluster: the placement group packs (STRICT_SPREAD cannot place);
    each actor gets its rank and the shared coordinator address; only rank 0 gets the run id."""
    spec, cells = _one_cell(make_sweep, "twohost")
    cell = dataclasses.replace(cells[0], devices=2, hosts=2)
    summary = C.run_sweep(spec, [cell], home=module_home, progress=False, cell_fn=report_placement)
    assert summary.states == {cell.key: "finished"}, summary.errors
    result = summary.results[cell.key]
    assert result["env"]["FLANSCALE_PROCESS_ID"] == "0" and result["env"]["FLANSCALE_NUM_PROCESSES"] == "2"
    assert result["env"]["FLANSCALE_COORDINATOR"].count(":") == 1
    assert result["env"]["JAX_PLATFORMS"] == "cpu" and result["env"]["FLANSCALE_HOME"] == str(module_home)
    assert result["run_id"] and result["assigned"]["CPU"] == 1.0
    from ray.util import placement_group_table

    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())


def train_until_stopped(spec, run_id, tracking_uri, home, should_stop):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    step = 0
    while not should_stop():
        step += 1
        client.log_metric(run_id, "train/loss", 1.0 / step, step=step)
        time.sleep(0.2)
        if step > 600:
            raise RuntimeError("never asked to stop")
    return {"status": "preempted", "steps": step}


def fail_on_89(spec, run_id, tracking_uri, home, should_stop):
    if spec["data"]["task_count"] == 89:
        raise ValueError("bad shard in task 89")
    return {"status": "finished"}


@pytest.mark.ray
def test_cancel_stops_running_cells_through_should_stop(ray_logical, make_sweep, module_home):
    spec = load_spec(str(make_sweep("cancelme")), [])
    cells = plan(spec)
    store = SweepStore(home=module_home)
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=C.run_sweep(
        spec, cells, home=module_home, progress=False, cell_fn=train_until_stopped)))
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and sum(r.state == "running" and bool(r.metrics) for r in store.list_cells("cancelme")) < 2:
        time.sleep(0.5)
    from orchestrator.commands.sweep import cmd_cancel

    args = argparse.Namespace(name="cancelme", tracking_uri=store.tracking_uri, wait=90.0)
    assert cmd_cancel(args) == 0  # returns once the controller has stopped every cell
    thread.join(60)
    assert not thread.is_alive()
    summary = done["s"]
    assert summary.cancelled and set(summary.states.values()) == {"cancelled"}
    assert {r.state for r in store.list_cells("cancelme")} == {"cancelled"}
    assert store.sweep_tags("cancelme")[TAG_STATE] == "cancelled"


@pytest.mark.ray
def test_failure_is_recorded_and_others_go_on(ray_logical, make_sweep, module_home):
    spec = load_spec(str(make_sweep("failing")), [])
    cells = plan(spec)
    summary = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=fail_on_89)
    by_tc = {c.task_count: c.key for c in cells}
    assert summary.states == {by_tc[9]: "finished", by_tc[89]: "failed"}
    records = {r.key: r for r in SweepStore(home=module_home).list_cells("failing")}
    assert records[by_tc[89]].tags[TAG_ERROR] == "ValueError: bad shard in task 89"
    assert records[by_tc[89]].attempts == 1 and records[by_tc[9]].attempts == 1


def two_seconds(spec, run_id, tracking_uri, home, should_stop):
    time.sleep(2)
    return {"status": "finished"}


@pytest.mark.slow
@pytest.mark.ray
def test_a_cell_runs_start_is_when_its_cell_starts(ray_logical, make_sweep, module_home):
    """One cell at a time: the second cell's run starts when the first has ended, not when the
    sweep made both runs, so MLflow's durations are the cells' own."""
    spec = load_spec(str(make_sweep("started")), ["max_concurrent=1"])
    cells = plan(spec)
    C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=two_seconds)
    store = SweepStore(home=module_home)
    runs = sorted((store.client.get_run(r.run_id).info for r in store.list_cells("started")),
                  key=lambda i: i.start_time)
    assert len(runs) == 2
    first, second = runs
    assert second.start_time >= first.start_time + 2000
    assert all(2000 <= i.end_time - i.start_time < 2000 + 30_000 for i in runs)


def loss_by_tasks(spec, run_id, tracking_uri, home, should_stop):
    from mlflow.tracking import MlflowClient

    if spec["data"]["task_count"] == 89:
        raise ValueError("bad shard in task 89")
    MlflowClient(tracking_uri).log_metric(run_id, "eval/loss", 1.0 + spec["data"]["task_count"] / 1000)
    return {"status": "finished"}


@pytest.mark.ray
def test_the_sweep_summary_comes_from_kept_records_not_a_search_per_cell(ray_logical, make_sweep, module_home,
                                                                        monkeypatch):
    """The parent's summary equals one computed from the store afterwards, while the session
    listed the sweep's runs once (at its start), not once per finished cell."""
    from orchestrator.cells import sweep_summary
    from orchestrator.store import TAG_BEST

    spec = load_spec(str(make_sweep("summarised", task_counts="[9, 89, 282]")), ["retries.failure=0"])
    cells = plan(spec)
    listed = []
    real = SweepStore.list_cells
    monkeypatch.setattr(SweepStore, "list_cells", lambda self, sweep: listed.append(sweep) or real(self, sweep))
    summary = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=loss_by_tasks)
    monkeypatch.undo()
    assert sorted(summary.states.values()) == ["failed", "finished", "finished"]
    assert listed == ["summarised"]
    store = SweepStore(home=module_home)
    parent = store.client.get_run(store.sweep_run("summarised", create=False))
    expected, best = sweep_summary(store.list_cells("summarised"))
    assert {k: parent.data.metrics[k] for k in expected} == pytest.approx(expected)
    assert expected["sweep/cells_finished"] == 2 and expected["sweep/cells_failed"] == 1
    assert expected["sweep/best/eval/loss"] == pytest.approx(1.009)
    assert parent.data.tags[TAG_BEST + "eval/loss"] == best["eval/loss"] == "tiny-1 · 9 tasks · mixed · seed 0"
    steps = {m.step for m in store.client.get_metric_history(parent.info.run_id, "sweep/cells_finished")}
    assert steps == {1, 2}  # a point as each cell finished


@pytest.mark.ray
def test_infeasible_cells_are_recorded_never_scheduled(ray_logical, make_sweep, module_home):
    spec = load_spec(str(make_sweep("toobig", task_counts="[9]")), ["models=[tiny-1,t5-xxl]", "max_devices=1"])
    cells = plan(spec)
    big = next(c for c in cells if c.model == "t5-xxl")
    assert not big.feasible
    summary = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=report_placement)
    assert summary.states[big.key] == "infeasible" and big.key not in summary.started
    rec = {r.key: r for r in SweepStore(home=module_home).list_cells("toobig")}[big.key]
    assert rec.state == "infeasible" and rec.attempts == 0 and rec.tags[TAG_ERROR] == big.reason
    assert SweepStore(home=module_home).sweep_tags("toobig")[TAG_STATE] == "finished"


def preempted_always(spec, run_id, tracking_uri, home, should_stop):
    return {"status": "preempted"}


def bad_input(spec, run_id, tracking_uri, home, should_stop):
    from trainers.spec import UserError

    raise UserError("data.paths: /nowhere/flan.jsonl: no such file")


@pytest.mark.ray
def test_budgets_persist_across_sessions_and_bad_input_is_not_retried(ray_logical, make_sweep, module_home):
    spec, cells = _one_cell(make_sweep, "budgets", "retries.preemption=1", "retries.failure=2")
    key = cells[0].key
    store = SweepStore(home=module_home)
    first = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=preempted_always)
    assert first.states == {key: "preempted"}
    rec = store.list_cells("budgets")[0]
    assert (rec.attempts, rec.preemptions) == (2, 2)  # one retry, then out of budget
    # the next session reads the spent budget back: nothing to start
    assert C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=preempted_always).started == []
    # --retry-failed grants a fresh budget; the stored counts go on
    again = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=preempted_always, retry_failed=True)
    assert again.started == [key, key]
    rec = store.list_cells("budgets")[0]
    assert (rec.attempts, rec.preemptions) == (4, 4)

    spec, cells = _one_cell(make_sweep, "badinput", "retries.failure=2")
    summary = C.run_sweep(spec, cells, home=module_home, progress=False, cell_fn=bad_input)
    rec = store.list_cells("badinput")[0]
    assert summary.states == {cells[0].key: "failed"} and rec.attempts == 1 and rec.failures == 1
    assert rec.error == "UserError: data.paths: /nowhere/flan.jsonl: no such file"


@pytest.mark.ray
def test_a_placement_group_never_placed_fails_its_cell_naming_what_it_asked(ray_logical, make_sweep, module_home):
    spec, cells = _one_cell(make_sweep, "noplace", "accelerator=a100-80g", "min_devices=8", "max_devices=8")
    cell = dataclasses.replace(cells[0], devices=16, hosts=2)  # 2 hosts x 8 GPUs: the cluster has 8 in all
    t0 = time.monotonic()
    summary = C.run_sweep(spec, [cell], home=module_home, progress=False, cell_fn=report_placement,
                          placement_timeout_s=3)
    assert time.monotonic() - t0 < 60
    assert summary.states == {cell.key: "failed"}
    error = summary.errors[cell.key]
    assert "not placed within 3 s" in error and "'GPU': 8.0" in error and "2 bundles" in error, error
    from ray.util import placement_group_table

    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())


def test_status_and_cancel_say_when_a_dead_controllers_claim_lapsed(make_sweep, module_home, capsys):
    """A controller killed twice over (no chance to clean up) leaves "running" in the store;
    its lease names a process that is gone, so status says lapsed and cancel does not wait."""
    import json
    import subprocess
    import sys

    from orchestrator.cli import main
    from orchestrator.leases import Lease
    from orchestrator.store import TAG_LEASE

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = Lease(f"{os.uname().nodename}:{dead.pid}:x", time.time() + 3600).to_text()
    spec, cells = _one_cell(make_sweep, "orphan")
    store = SweepStore(home=module_home)
    parent = store.sweep_run("orphan")
    run_id, _ = store.cell_run("orphan", cells[0])
    store.set_state(parent, "running", **{TAG_LEASE: lease})
    store.set_state(run_id, "running", **{TAG_LEASE: lease})
    capsys.readouterr()
    assert main(["sweep", "status", "orphan", "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "lapsed" and [c["state"] for c in status["cells"]] == ["lapsed"]
    t0 = time.monotonic()
    assert main(["sweep", "cancel", "orphan", "--wait", "60"]) == 0
    assert time.monotonic() - t0 < 10
    assert "lease lapsed" in capsys.readouterr().out
    assert store.list_cells("orphan")[0].state == "cancelled"
