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
from orchestrator.spec import load_spec
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
    assert S.classify(error=err) == ("failed", "ValueError: loss is nan at step 3")
    assert S.classify(error=WorkerCrashedError())[0] == "preempted"
    assert S.classify(error=NodeDiedError("node gone"))[0] == "preempted"
    assert S.classify(error=ActorDiedError())[0] == "preempted"
    assert S.classify(result={"status": "preempted"}) == ("preempted", "stopped before the last step")
    assert S.classify(result={"status": "preempted"}, stop_requested=True)[0] == "cancelled"
    assert S.classify(result={"status": "finished"}) == ("finished", "")


def test_after_outcome_spends_separate_budgets():
    r = S.Retries(failure=1, preemption=2)
    v = S.CellView("k", 0, "running")
    v = S.after_outcome(v, "preempted", r)
    assert (v.state, v.preemptions) == ("pending", 1)
    v = S.after_outcome(v, "preempted", r)
    assert v.state == "pending"
    assert S.after_outcome(v, "preempted", r).state == "preempted"  # third preemption: out of budget
    v = S.after_outcome(v, "failed", r)
    assert (v.state, v.failures) == ("pending", 1)
    assert S.after_outcome(v, "failed", r).state == "failed"
    assert S.after_outcome(v, "cancelled", r).state == "cancelled"


def test_placement_strategy_spreads_only_where_it_can():
    assert P.placement_strategy(hosts=4, alive_nodes=4) == "STRICT_SPREAD"
    assert P.placement_strategy(hosts=2, alive_nodes=1) == "PACK"


def test_a_second_live_controller_is_refused():
    alive = {10: True, 11: False}.get
    now = 1000.0
    assert S.other_controller(None, now=now, host="a", pid=1, pid_alive=alive) is None
    assert S.other_controller("b:10:995", now=now, host="a", pid=1, pid_alive=alive) == "b:10"
    assert S.other_controller("b:10:900", now=now, host="a", pid=1, pid_alive=alive) is None  # stale
    assert S.other_controller("a:11:999", now=now, host="a", pid=1, pid_alive=alive) is None  # killed here
    assert S.other_controller("a:10:999", now=now, host="a", pid=1, pid_alive=alive) == "a:10"
    assert S.other_controller("a:1:999", now=now, host="a", pid=1, pid_alive=alive) is None  # itself


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
