"""`flanscale sweep submit` runs the controller as a Ray Job on a real Ray head started here.

The head gets its own temp dir and free ports; it is stopped by killing exactly the processes
that carry that temp dir or GCS port on their command line (never a machine-wide `ray stop`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.commands.sweep import job_client
from orchestrator.store import SweepStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if temp_dir in cmd or f":{gcs_port} " in f"{cmd} " or f"={gcs_port} " in f"{cmd} ":
            mine.append(proc)
    return mine


@pytest.fixture()
def ray_head(tmp_path, home):
    temp_dir = f"/tmp/fs-{os.getpid()}-{_free_port()}"  # short: Ray's socket paths must fit 107 chars
    gcs, dash = _free_port(), _free_port()
    ports = {f"--{name}": str(_free_port()) for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port", "object-manager-port", "node-manager-port")}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               FLANSCALE_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true",
           "--object-store-memory=134217728", *[f"{k}={v}" for k, v in ports.items()]]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    address = f"http://127.0.0.1:{dash}"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.time() + 90
        while True:
            try:
                job_client(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        yield address, env
    finally:
        procs = _ours(temp_dir, gcs)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_submit_runs_the_controller_as_a_ray_job_and_logs_follow_it(ray_head, make_sweep, home):
    address, env = ray_head
    path = make_sweep("submitted", task_counts="[9]", steps=4)
    out = _cli("sweep", "submit", str(path), "optim.steps=5", "--ray-address", address, "--home", str(home), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted sweep submitted as Ray job flanscale-submitted-" in out.stdout

    from ray.job_submission import JobStatus

    client = job_client(address)
    (job,) = [j for j in client.list_jobs() if (j.metadata or {}).get("flanscale_sweep") == "submitted"]
    deadline = time.time() + 240
    while client.get_job_status(job.submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, client.get_job_logs(job.submission_id)
        time.sleep(2)
    logs = _cli("sweep", "logs", "submitted", "--ray-address", address, env=env)
    assert client.get_job_status(job.submission_id) == JobStatus.SUCCEEDED, logs.stdout
    assert logs.returncode == 0 and "sweep submitted: 1 finished" in logs.stdout, logs.stdout + logs.stderr
    (rec,) = SweepStore(home=home).list_cells("submitted")
    assert rec.state == "finished" and rec.params["steps"] == "5"  # the override travelled with the spec


def test_submit_refuses_bad_input_before_contacting_a_cluster(make_sweep, home):
    path = make_sweep("refused", task_counts="[9]")
    env = dict(os.environ, FLANSCALE_HOME=str(home))
    out = _cli("sweep", "submit", str(path), "optim.steps=-3", "--ray-address", "http://127.0.0.1:9", env=env)
    assert out.returncode == 2 and "steps" in out.stderr and "Traceback" not in out.stderr
