"""A small sweep under injected faults, then the invariants a user relies on.

    python -m tests.chaos.chaos --faults 20 --seed 0 [--home DIR] [--steps N]

runs a sweep of tiny cells with `flanscale sweep run` (a real local Ray, a real SQLite
MLflow store) and, at points drawn from the seed, injects faults:

- kill_controller: SIGKILL the controller (the rerun must pick up where it was);
- kill_worker: SIGKILL the Ray worker of a running cell (a preemption, retried);
- sigterm: SIGTERM the controller (must end like Ctrl-C: exit 143, one line);
- second_controller: start a second controller of the same sweep while the first runs (it
  must not create runs or train cells that the first holds);
- damage_checkpoint: SIGKILL the controller, then damage the newest checkpoint of a cell it
  was running (garble the manifest or truncate an array file) before the rerun.

Then it reruns to completion and checks: every cell has exactly one run and is finished,
its `train/loss` has every step exactly once, its attempts and preemptions match what was
injected, no process of the sweep's Ray is left, and the store opens and passes SQLite's
integrity check. It prints a JSON summary: faults injected, survived, invariants violated.

The store is read through SQLite directly, read-only: the harness must not create MLflow's
schema itself (that would be a second writer racing the controller's first run), and the raw
metric table shows a step logged twice, which MLflow's history API would show too but only
one run at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tests.integration.conftest import tiny_sweep
from trainers.run_layout import TAG_ATTEMPTS, TAG_CELL_KEY, TAG_LEASE, TAG_PREEMPTIONS, TAG_STATE, TAG_WORKER

FAULTS = ("kill_controller", "kill_worker", "sigterm", "second_controller", "damage_checkpoint")
WAIT_S = 240  # for a controller to exit, a cell to get going, the rerun to finish a cell


@dataclass
class Fault:
    kind: str
    cells: list[str] = field(default_factory=list)  # keys of the cells it interrupted
    at_step: int = 0  # the furthest running cell's last logged step when the fault came
    detail: str = ""
    exit_code: int | None = None
    answer_s: float | None = None  # how long the controller took to exit


@dataclass
class Summary:
    seed: int
    faults_requested: int
    injected: list[Fault] = field(default_factory=list)
    survived: bool = False
    violations: list[str] = field(default_factory=list)
    cells: dict[str, dict] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict:
        out = asdict(self)
        out["faults_injected"] = len(self.injected)
        out["by_kind"] = {k: sum(f.kind == k for f in self.injected) for k in FAULTS}
        return out


class Store:
    """Read-only SQL over MLflow's tables; nothing here creates or migrates anything."""

    def __init__(self, home: Path) -> None:
        self.path = home / "mlflow.db"

    def _query(self, sql: str, *args) -> list[tuple]:
        if not self.path.exists():
            return []
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            return []
        finally:
            con.close()

    def cell_runs(self) -> dict[str, list[str]]:
        """cell key -> ids of the active runs carrying it."""
        rows = self._query(
            "SELECT t.value, r.run_uuid FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            "WHERE t.key = ? AND r.lifecycle_stage = 'active' AND e.name = 'chaos'", TAG_CELL_KEY)
        out: dict[str, list[str]] = {}
        for key, run in rows:
            out.setdefault(key, []).append(run)
        return out

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))

    def steps(self, run_id: str, metric: str = "train/loss") -> list[int]:
        return sorted(s for (s,) in self._query(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = ?", run_id, metric))

    def integrity(self) -> str:
        rows = self._query("PRAGMA integrity_check")
        return rows[0][0] if rows else "unreadable"


class Chaos:
    def __init__(self, home: Path, seed: int, faults: int, steps: int) -> None:
        self.home = home
        self.rng = random.Random(seed)
        self.summary = Summary(seed=seed, faults_requested=faults)
        self.faults = faults
        self.steps = steps
        self.store = Store(home)
        self.spec = home / "chaos.yaml"
        # Enough preemption budget for every fault the run injects.
        self.spec.write_text(tiny_sweep("chaos", steps=steps, every=max(2, steps // 10), preemption=100))
        self.env = dict(os.environ, FLANSCALE_HOME=str(home))
        for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
            self.env.pop(name, None)
        self.logs = home / "logs"
        self.logs.mkdir(exist_ok=True)
        self.n_started = 0
        self.log_of: dict[int, int] = {}  # controller pid -> number of its log

    # ---- controllers

    def start(self) -> subprocess.Popen:
        self.n_started += 1
        log = open(self.logs / f"controller-{self.n_started}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "run", str(self.spec),
                                 "--no-progress"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.log_of[proc.pid] = self.n_started
        return proc

    def _log_tail(self, n: int) -> str:
        """The controller's last line (its one-line verdict), Ray's own chatter aside."""
        lines = (self.logs / f"controller-{n}.log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    @staticmethod
    def wait_exit(proc: subprocess.Popen, timeout: float = WAIT_S) -> tuple[int | None, float]:
        t0 = time.monotonic()
        try:
            return proc.wait(timeout), time.monotonic() - t0
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - t0

    # ---- what is running

    def running(self, controller: int) -> list[tuple[str, str, int]]:
        """(cell key, run id, last step) of the cells that `controller` (a pid) runs now: state
        running under its live lease. A state tag alone may be a dead controller's."""
        out = []
        for key, runs in self.store.cell_runs().items():
            for run in runs:
                tags = self.store.tags(run)
                try:
                    lease = json.loads(tags.get(TAG_LEASE) or "{}")
                    holder_pid = int(str(lease.get("holder", "")).split(":")[1])
                except (ValueError, IndexError):
                    continue
                if (tags.get(TAG_STATE) == "running" and holder_pid == controller
                        and float(lease.get("expires", 0)) > time.time()):
                    steps = self.store.steps(run)
                    out.append((key, run, steps[-1] if steps else 0))
        return out

    def all_finished(self) -> bool:
        runs = self.store.cell_runs()
        return len(runs) == 2 and all(self.store.tags(r).get(TAG_STATE) == "finished"
                                      for rs in runs.values() for r in rs)

    def wait_for_progress(self, proc: subprocess.Popen) -> tuple[str, str, int] | None:
        """A cell `proc` runs, a number of steps (drawn from the seed; 0 = as soon as it runs)
        past where this controller found it; None if the controller ended first."""
        delta = self.rng.randint(0, 12)
        first: dict[str, int] = {}
        deadline = time.monotonic() + WAIT_S
        best = None
        while time.monotonic() < deadline and proc.poll() is None:
            for cell in self.running(proc.pid):
                first.setdefault(cell[0], cell[2])
                if cell[2] - first[cell[0]] >= delta:
                    return cell
                best = cell
            time.sleep(0.1)
        return best if proc.poll() is None else None

    # ---- faults

    def inject(self, proc: subprocess.Popen, kind: str) -> tuple[Fault | None, subprocess.Popen | None]:
        """Inject `kind`; returns the fault (None: the controller ended first) and the
        controller that still runs (None: start another)."""
        hit = self.wait_for_progress(proc)
        if hit is None:
            return None, None
        key, run, step = hit
        fault = Fault(kind, cells=[key], at_step=step)
        if kind == "kill_worker":
            worker = self.store.tags(run).get(TAG_WORKER, "")
            pid = int(worker.rsplit(":", 1)[1]) if ":" in worker else 0
            if pid and psutil.pid_exists(pid):
                before = int(self.store.tags(run).get(TAG_PREEMPTIONS, 0))
                os.kill(pid, signal.SIGKILL)
                fault.detail = f"worker pid {pid}"
                # The next fault waits until the controller has recorded this one: two faults
                # closer together than it can notice would be one interruption, not two.
                deadline = time.monotonic() + 60
                while int(self.store.tags(run).get(TAG_PREEMPTIONS, 0)) == before and proc.poll() is None:
                    if time.monotonic() > deadline:
                        self.summary.violations.append(f"cell {key}: worker {pid} killed, no preemption recorded in 60 s")
                        break
                    time.sleep(0.1)
                fault.answer_s = round(time.monotonic() - deadline + 60, 1)
            else:
                fault.cells, fault.detail = [], f"no live worker ({worker!r})"
            return fault, proc
        if kind == "second_controller":
            n = self.n_started + 1
            second = self.start()
            code, took = self.wait_exit(second, timeout=60)
            if code is None:  # still waiting on the first: end it the way a user would
                second.send_signal(signal.SIGINT)
                code, took = self.wait_exit(second, timeout=60)
            fault.cells, fault.exit_code, fault.answer_s = [], code, round(took, 1)
            fault.detail = self._log_tail(n)
            return fault, proc
        # The controller takes every running cell down with it.
        fault.cells = sorted({c[0] for c in self.running(proc.pid)} | {key})
        if kind == "sigterm":
            n = self.log_of[proc.pid]
            proc.send_signal(signal.SIGTERM)
            fault.exit_code, took = self.wait_exit(proc)
            fault.answer_s, fault.detail = round(took, 1), self._log_tail(n)
        else:  # kill_controller, damage_checkpoint
            proc.send_signal(signal.SIGKILL)
            fault.exit_code, _ = self.wait_exit(proc)
        self.reap(proc)
        # A cell that had finished by the time its controller went down was not interrupted.
        runs = self.store.cell_runs()
        fault.cells = [k for k in fault.cells
                       if not any(self.store.tags(r).get(TAG_STATE) == "finished" for r in runs.get(k, []))]
        if kind == "damage_checkpoint":
            fault.detail = self.damage(key)
        return fault, None

    def damage(self, key: str) -> str:
        ckpt = self.home / "checkpoints" / key
        steps = sorted((p for p in ckpt.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) \
            if ckpt.exists() else []
        if not steps:
            return "no checkpoint to damage"
        newest = steps[-1]
        # flanscale's manifest of the step, orbax's own, or the largest array file
        manifests = [p for p in [ckpt / "manifests" / f"{newest.name}.json", *sorted(newest.rglob("*manifest*"))]
                     if p.is_file()]
        files = sorted(p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0)
        how = self.rng.choice(("manifest", "truncate"))
        if manifests and (how == "manifest" or not files):
            target = self.rng.choice(manifests)
            target.write_text("{garbled")
            return f"garbled {target.relative_to(self.home)}"
        if not files:
            return f"{newest.name} has no files"
        target = max(files, key=lambda p: p.stat().st_size)
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
        return f"truncated {target.relative_to(self.home)}"

    def ours(self) -> list[psutil.Process]:
        """Live processes started for this home (Ray's inherit the controller's environment)."""
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid != os.getpid() and p.environ().get("FLANSCALE_HOME") == str(self.home):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def reap(self, proc: subprocess.Popen, grace: float = 15.0) -> list[str]:
        """Wait for what the dead controller left to go; end and name whatever stays."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.ours():
            time.sleep(0.5)
        left = self.ours()
        names = [" ".join(p.cmdline()[:2])[:80] for p in left if p.is_running()]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return names

    # ---- the run

    def run(self) -> Summary:
        t0 = time.monotonic()
        kinds = [self.rng.choice(FAULTS) for _ in range(self.faults)]
        proc: subprocess.Popen | None = None
        for kind in kinds:
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    self.reap(proc)
                if self.all_finished():
                    break
                proc = self.start()
            n = self.n_started
            fault, proc = self.inject(proc, kind)
            if fault is None:  # the controller ended on its own: fine only if the sweep is done
                if not self.all_finished():
                    self.summary.violations.append(f"controller {n} ended before the sweep was done: "
                                                   f"{self._log_tail(n)!r}")
                    break
                continue
            self.summary.injected.append(fault)
            if fault.kind == "sigterm" and fault.exit_code != 143:
                self.summary.violations.append(f"SIGTERM: exit {fault.exit_code}, expected 143 ({fault.detail!r})")
            if fault.kind == "sigterm" and len(fault.detail.splitlines()) > 1:
                self.summary.violations.append("SIGTERM: more than one line")
        if proc is not None and proc.poll() is None:
            code, _ = self.wait_exit(proc, timeout=WAIT_S * 2)
            left = self.reap(proc)
        # Rerun until done: a controller that ended on a fault leaves the rest to the next one.
        final = self.start()
        code, _ = self.wait_exit(final, timeout=WAIT_S * 3)
        left = self.reap(final, grace=10)
        if code != 0:
            self.summary.violations.append(f"final run exited {code}: {self._log_tail(self.n_started)!r}")
        if left:
            self.summary.violations.append(f"processes left after the last controller: {left}")
        self.check()
        self.summary.survived = code == 0 and not self.summary.violations
        self.summary.wall_s = round(time.monotonic() - t0, 1)
        return self.summary

    def check(self) -> None:
        v = self.summary.violations
        integrity = self.store.integrity()
        if integrity != "ok":
            v.append(f"store integrity: {integrity}")
        runs = self.store.cell_runs()
        if len(runs) != 2:
            v.append(f"{len(runs)} cells in the store, expected 2")
        for key, ids in sorted(runs.items()):
            if len(ids) != 1:
                v.append(f"cell {key}: {len(ids)} runs")
            tags = self.store.tags(ids[0])
            steps = self.store.steps(ids[0])
            hits = [f for f in self.summary.injected if key in f.cells]
            interrupted = sum(f.kind != "second_controller" for f in hits)
            preempted = sum(f.kind == "kill_worker" for f in hits)
            attempts, preemptions = int(tags.get(TAG_ATTEMPTS, 0)), int(tags.get(TAG_PREEMPTIONS, 0))
            self.summary.cells[key] = {"state": tags.get(TAG_STATE), "attempts": attempts, "preemptions": preemptions,
                                       "interrupted": interrupted, "workers_killed": preempted,
                                       "steps_logged": len(steps)}
            if tags.get(TAG_STATE) != "finished":
                v.append(f"cell {key}: state {tags.get(TAG_STATE)}")
            if steps != list(range(1, self.steps + 1)):
                dup = sorted({s for s in steps if steps.count(s) > 1})
                missing = sorted(set(range(1, self.steps + 1)) - set(steps))
                v.append(f"cell {key}: train/loss steps duplicated {dup[:10]} missing {missing[:10]}")
            if attempts != 1 + interrupted:
                v.append(f"cell {key}: {attempts} attempts, expected {1 + interrupted} (1 + {interrupted} interruptions)")
            if preemptions != preempted:
                v.append(f"cell {key}: {preemptions} preemptions, expected {preempted} (workers killed)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200, help="training steps per cell")
    ap.add_argument("--home", default=None, help="FLANSCALE_HOME to use (default: a new temporary folder)")
    args = ap.parse_args(argv)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="flanscale-chaos-"))
    home.mkdir(parents=True, exist_ok=True)
    summary = Chaos(home.resolve(), args.seed, args.faults, args.steps).run()
    print(json.dumps({"home": str(home), **summary.to_json()}, indent=2))
    return 0 if summary.survived else 1


if __name__ == "__main__":
    sys.exit(main())
