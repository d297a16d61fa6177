"""SIGTERM to a running `flanscale sweep run`: it ends as Ctrl-C does (cells checkpoint, states
written, claims released), exits 143 with one line, and leaves no Ray process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.cells import LAPSED
from orchestrator.store import TAG_LEASE, SweepStore


def _session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


@pytest.mark.slow
def test_sigterm_ends_like_ctrl_c_with_143_and_no_ray_left(make_sweep, home):
    path = make_sweep("term", task_counts="[9]", steps=400, every=5)
    env = dict(os.environ, FLANSCALE_HOME=str(home))
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "JAX_PLATFORMS"):
        env.pop(var, None)
    store = SweepStore(home=home)
    ctl = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "run", str(path), "--no-progress"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not any(r.metric_steps.get("train/loss", 0) >= 3
                                                  for r in store.list_cells("term")):
            time.sleep(0.5)
        assert ctl.poll() is None, ctl.communicate()[1][-3000:]
        ctl.send_signal(signal.SIGTERM)
        out, err = ctl.communicate(timeout=120)
        time.sleep(3)
        left = _session(ctl.pid)
    finally:
        for p in _session(ctl.pid):  # whatever is left is ours to end
            p.kill()
    assert ctl.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Stack trace" not in err and "*** " not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("flanscale: sweep term: terminated"), err[-3000:]
    assert left == [], [p.name() for p in left]
    (rec,) = store.list_cells("term")
    assert rec.state == "cancelled" and rec.live_state() != LAPSED
    assert 3 <= rec.metric_steps["train/loss"] < 400
    tags = store.sweep_tags("term")
    assert tags["flanscale.state"] == "preempted" and TAG_LEASE not in tags  # the next run resumes it
    assert not list((home / "checkpoints").glob("*.lease")) and not list((home / "leases").glob("*.json"))
