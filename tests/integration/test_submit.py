"""`flanscale sweep submit` runs the controller as a Ray Job on a real Ray head started here.

The head gets its own temp dir and free ports; it is stopped by killing exactly the processes
that carry that temp dir or GCS port on their command line (never a machine-wide `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def ray_head_at(home: Path, python: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """A private Ray head started with `python` (its workers and jobs run that interpreter, and
    its bin folder leads PATH): (dashboard address, environment, Ray temp dir)."""
    temp_dir = f"/tmp/fs-{os.getpid()}-{_free_port()}"  # short: Ray's socket paths must fit 107 chars
    gcs, dash = _free_port(), _free_port()
    ports = {f"--{name}": str(_free_port()) for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port", "object-manager-port", "node-manager-port")}
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}", FLANSCALE_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    cmd = [str(python), str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={gcs}",
           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
           "--include-dashboard=true", "--object-store-memory=134217728", *[f"{k}={v}" for k, v in ports.items()]]
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
        yield address, env, temp_dir
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


@pytest.fixture()
def ray_head(home):
    with ray_head_at(home, Path(sys.executable)) as head:
        yield head


def working_dirs(temp_dir: str) -> list[set[str]]:
    """What each job's working directory held, as Ray unpacked it on the node."""
    root = Path(temp_dir) / "session_latest" / "runtime_resources" / "working_dir_files"
    return [{p.name for p in d.iterdir()} for d in sorted(root.iterdir()) if d.is_dir()]


def wait_for_job(client, submission_id: str, timeout: float = 240) -> None:
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while client.get_job_status(submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, client.get_job_logs(submission_id)
        time.sleep(2)


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_submit_runs_the_controller_as_a_ray_job_and_logs_follow_it(ray_head, make_sweep, home):
    address, env, temp_dir = ray_head
    path = make_sweep("submitted", task_counts="[9]", steps=4)
    (path.parent / "private.txt").write_text("stays on this machine")  # beside the spec, never sent
    out = _cli("sweep", "submit", str(path), "optim.steps=5", "--ray-address", address, "--home", str(home), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted sweep submitted as Ray job flanscale-submitted-" in out.stdout
    assert "sent: the composed spec (sweep.yaml)" in out.stdout

    from ray.job_submission import JobStatus

    client = job_client(address)
    (job,) = [j for j in client.list_jobs() if (j.metadata or {}).get("flanscale_sweep") == "submitted"]
    assert job.entrypoint == "flanscale sweep run sweep.yaml --no-progress"
    wait_for_job(client, job.submission_id)
    logs = _cli("sweep", "logs", "submitted", "--ray-address", address, env=env)
    assert client.get_job_status(job.submission_id) == JobStatus.SUCCEEDED, logs.stdout
    assert logs.returncode == 0 and "sweep submitted: 1 finished" in logs.stdout, logs.stdout + logs.stderr
    (rec,) = SweepStore(home=home).list_cells("submitted")
    assert rec.state == "finished" and rec.params["steps"] == "5"  # the override travelled in the composed spec
    assert working_dirs(temp_dir) == [{"sweep.yaml"}]


def test_submit_refuses_bad_input_before_contacting_a_cluster(make_sweep, home):
    path = make_sweep("refused", task_counts="[9]")
    env = dict(os.environ, FLANSCALE_HOME=str(home))
    out = _cli("sweep", "submit", str(path), "optim.steps=-3", "--ray-address", "http://127.0.0.1:9", env=env)
    assert out.returncode == 2 and "steps" in out.stderr and "Traceback" not in out.stderr


def test_uploads_from_outside_the_current_folder_are_where_the_spec_says(ray_head, make_sweep, home, tmp_path):
    """A tokenizer and Flan exports beside, not under, the folder submit runs in: the composed
    spec names them where the job's working directory holds them, so the job finds them."""
    from trainers.data.tokenizer import load_spm, train_spm

    address, env, temp_dir = ray_head
    outside, work = tmp_path / "outside", tmp_path / "work"
    shutil.copytree(REPO / "tests" / "fixtures" / "flan", outside / "flan")
    text = [line for f in sorted((outside / "flan").glob("*.jsonl")) for line in f.read_text().splitlines()]
    (outside / "tok").mkdir()
    (outside / "tok" / "my.model").write_bytes(train_spm(text * 4, 200))
    assert load_spm(outside / "tok" / "my.model").vocab_size <= 384  # tiny-1 embeds it
    work.mkdir()
    path = make_sweep("uploaded", task_counts="[9]", steps=2)
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", "submit", str(path), "data.source=flan",
                          "data.paths=[../outside/flan]", "data.tokenizer=../outside/tok/my.model",
                          "--upload", "../outside/tok/my.model", "--upload", "../outside/flan",
                          "--ray-address", address, "--home", str(home)],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    client = job_client(address)
    (job,) = [j for j in client.list_jobs() if (j.metadata or {}).get("flanscale_sweep") == "uploaded"]
    wait_for_job(client, job.submission_id)
    logs = client.get_job_logs(job.submission_id)
    assert "sweep uploaded: 1 finished" in logs, logs[-4000:]
    assert working_dirs(temp_dir) == [{"sweep.yaml", "my.model", "flan"}]
    (rec,) = SweepStore(home=home).list_cells("uploaded")
    assert rec.state == "finished"


# ---- from an installed (non-editable) flanscale ----

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "orchestrator", "trainers", "dashboards")
# The paper sweeps shrunk to one tiny CPU cell on the Flan fixtures, which the job reads from
# its working directory (a relative path), so they arrive only if --upload sends them.
SMALL = ["models=[tiny-1]", "task_counts=[9]", "accelerator=cpu", "eval=none", "optim.steps=2", "optim.batch_size=2",
         "data.paths=[flan]", "data.tokenizer=byte", "data.input_length=32", "data.target_length=16",
         "checkpoint.every_steps=0", "retries.failure=0", "max_concurrent=1"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """flanscale installed from a copy of the sources, not editable, into a fresh venv that
    reuses this venv's dependencies through a .pth line: nothing is downloaded and nothing is
    built inside the checkout. Returns the venv's bin folder."""
    import sysconfig

    root = tmp_path_factory.mktemp("installed")
    src = root / "src"
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(source, src / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "flanscale-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          "--no-build-isolation", "--no-cache-dir", "-q", str(src)],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.rmtree(src)  # what runs from here on is the installed copy, nothing else
    where = subprocess.run([str(python), "-c", "import orchestrator.compose as c; print(c.SHARED_GROUPS)"],
                           capture_output=True, text=True, cwd=root)
    groups = Path(where.stdout.strip())
    assert where.returncode == 0 and groups.is_relative_to(Path(site)), where.stdout + where.stderr
    assert (groups / "eval" / "paper.yaml").is_file() and (groups / "data" / "flan.yaml").is_file()
    return venv / "bin"


def test_an_installed_flanscale_submits_the_paper_sweeps(installed, tmp_path):
    user = tmp_path / "user"  # the submitting user's folder: neither the checkout nor site-packages
    shutil.copytree(REPO / "tests" / "fixtures" / "flan", user / "flan")
    # One home per sweep: two controllers creating one fresh MLflow database at once would race.
    homes = {sweep: tmp_path / sweep for sweep in ("flan-t5", "flan-palm")}
    with ray_head_at(tmp_path, installed / "python") as (address, env, temp_dir):
        env = dict(env, FLANSCALE_HOME=str(tmp_path / "local-home"))
        for sweep, home in homes.items():
            path = REPO / "sweeps" / "paper" / f"{sweep.replace('-', '_')}.yaml"
            out = subprocess.run([str(installed / "flanscale"), "sweep", "submit", str(path), *SMALL,
                                  "--upload", "flan", "--ray-address", address, "--home", str(home)],
                                 cwd=user, env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"submitted sweep {sweep} as Ray job" in out.stdout, out.stdout
        client = job_client(address)
        jobs = {(j.metadata or {}).get("flanscale_sweep"): j for j in client.list_jobs()}
        for sweep in homes:
            wait_for_job(client, jobs[sweep].submission_id, timeout=300)
            logs = client.get_job_logs(jobs[sweep].submission_id)
            assert f"sweep {sweep}: 1 finished" in logs, logs[-4000:]
        assert working_dirs(temp_dir) == [{"sweep.yaml", "flan"}] * 2
    for sweep, home in homes.items():
        (rec,) = SweepStore(home=home).list_cells(sweep)
        assert rec.state == "finished" and rec.params["steps"] == "2" and rec.params["model"] == "tiny-1"
