"""Claims under real concurrency: several processes create one store, take one lease, run one
sweep, or run two sweeps that share a cell, all at the same moment."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.leases import Lease, LeaseFile
from orchestrator.store import SweepStore

REPO = Path(__file__).resolve().parents[2]


def _spawn(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, FLANSCALE_HOME=str(home))
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "JAX_PLATFORMS"):
        env.pop(var, None)
    return env


@pytest.mark.slow
def test_first_runs_on_a_fresh_home_never_race_the_schema(tmp_path):
    home = tmp_path / "fresh"
    code = """
        import sys, time
        start = float(sys.argv[1])
        from orchestrator.store import SweepStore
        time.sleep(max(0.0, start - time.time()))  # every process opens the new store at once
        store = SweepStore()
        run = store.sweep_run(f"s{sys.argv[2]}")
        print(run)
    """
    start = time.time() + 6
    procs = [_spawn(code, str(start), str(i), env=_env(home)) for i in range(4)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    store = SweepStore(home=home)
    assert all(store.sweep_run(f"s{i}", create=False) for i in range(4))
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(home) == 0o700 and mode(home / "mlflow.db") == 0o600
    assert all(mode(p) == 0o600 for p in home.glob("mlflow.db*") if p.is_file())
    assert mode(home / "mlartifacts") == 0o700


def test_one_of_many_processes_takes_a_lease_and_a_dead_holders_lapses(tmp_path):
    path = tmp_path / "leases" / "cell.lease"
    code = """
        import sys, time
        from pathlib import Path
        from orchestrator.leases import LeaseFile, new_holder
        start = float(sys.argv[1])
        lease = LeaseFile(Path(sys.argv[2]), new_holder())
        time.sleep(max(0.0, start - time.time()))
        print("won" if lease.acquire() is None else "lost", flush=True)
        time.sleep(2)  # hold it while the others try; then die without releasing it
    """
    start = time.time() + 3
    procs = [_spawn(code, str(start), str(path)) for _ in range(6)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["lost"] * 5 + ["won"], outs
    # Its holder died on this host: the lease is free at once, before it expires.
    held = Lease.from_text(path.read_text())
    assert held.expires > time.time()
    assert LeaseFile(path, "me:1:a").acquire() is None
    # A holder elsewhere is trusted until its lease expires, then it lapses.
    other = LeaseFile(path, "elsewhere:7:b", ttl_s=0.5)
    assert other.acquire() is not None  # "me" holds it now
    LeaseFile(path, "me:1:a").release()
    assert other.acquire() is None
    assert LeaseFile(path, "me:1:a").acquire() == Lease.from_text(path.read_text())
    time.sleep(0.6)
    assert LeaseFile(path, "me:1:a").acquire() is None
    assert not other.renew()  # lost to "me" once it lapsed


CONTROLLER = """
    import json, sys, time
    from orchestrator.controller import run_sweep
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec
    from trainers.spec import UserError

    def train(spec, run_id, tracking_uri, home, should_stop):
        import json, os, time
        t0 = time.time()
        time.sleep(3)
        with open(os.path.join(home, "trained.jsonl"), "a") as f:
            f.write(json.dumps({"key": spec["sweep"], "t0": t0, "t1": time.time()}) + "\\n")
        return {"status": "finished"}

    spec = load_spec(sys.argv[1], [])
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    try:
        summary = run_sweep(spec, plan(spec), progress=False, cell_fn=train)
    except UserError as e:
        print(json.dumps({"refused": str(e)}))
        sys.exit(2)
    print(json.dumps(summary.to_dict()))
"""


@pytest.mark.slow
def test_two_controllers_of_a_new_sweep_run_it_once(tmp_path, make_sweep):
    home = tmp_path / "home"
    path = make_sweep("race", task_counts="[9, 89]")
    start = time.time() + 8
    procs = [_spawn(CONTROLLER, str(path), str(start), env=_env(home)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-3000:] for o in outs]
    refused = json.loads(next(o[0] for p, o in zip(procs, outs) if p.returncode == 2).strip().splitlines()[-1])
    assert "is running it" in refused["refused"]
    store = SweepStore(home=home)
    exp = store.experiment_id("race", create=False)
    runs = store.client.search_runs([exp], max_results=100)
    kinds = sorted(r.data.tags.get("flanscale.kind") for r in runs)
    assert kinds == ["cell", "cell", "sweep"], kinds
    assert {r.state for r in store.list_cells("race")} == {"finished"}
    assert all(r.attempts == 1 for r in store.list_cells("race"))


@pytest.mark.slow
def test_two_sweeps_sharing_a_cell_never_train_it_at_once(tmp_path, make_sweep):
    home = tmp_path / "home"
    paths = [make_sweep(name, task_counts="[9]") for name in ("share-a", "share-b")]
    start = time.time() + 8
    procs = [_spawn(CONTROLLER, str(p), str(start), env=_env(home)) for p in paths]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    spans = sorted((d["t0"], d["t1"]) for d in map(json.loads, (home / "trained.jsonl").read_text().splitlines()))
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans  # one after the other
    store = SweepStore(home=home)
    keys = {store.list_cells(n)[0].key for n in ("share-a", "share-b")}
    assert len(keys) == 1  # the same cell: one checkpoint directory, taken in turns
    assert not list((home / "checkpoints").glob("*.lease"))  # both released their claims


def test_a_run_created_beside_another_for_the_same_cell_gives_way_to_the_older(tmp_path, make_sweep, monkeypatch):
    """Controllers sharing a tracking server but not a home: each may create the cell's run
    before it sees the other's. The younger run is deleted and both use the older."""
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    (cell,) = plan(load_spec(str(make_sweep("dup", task_counts="[9]")), []))
    store = SweepStore(home=tmp_path / "home")
    first, created = store.cell_run("dup", cell)
    assert created
    real = store._cell_runs_by_key
    looks = []  # the other's run is not visible yet when this one first looks
    monkeypatch.setattr(store, "_cell_runs_by_key", lambda *a: real(*a) if looks.append(a) or len(looks) > 1 else {})
    second, created = store.cell_run("dup", cell)
    assert (second, created) == (first, False)
    exp = store.experiment_id("dup", create=False)
    active = store.client.search_runs([exp], "tags.`flanscale.kind` = 'cell'")
    assert [r.info.run_id for r in active] == [first]
