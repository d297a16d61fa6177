"""The real `flanscale` command refuses bad flags and inputs with one line, a non-zero exit and
an untouched home: no MLflow store, no run, no Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLANSCALE = str(Path(sys.executable).with_name("flanscale"))
SWEEP = [str(ROOT / "sweeps" / "demo.yaml"), "models=[tiny-1]", "task_counts=[9]", "seeds=[0]", "eval=none"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flanscale(tmp_path):
    """Runs the installed command with a fresh FLANSCALE_HOME; returns (exit code, stderr, seconds)
    after checking that the home was left as it was: absent."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "FLANSCALE_CONNECT_TIMEOUT")}
    env["FLANSCALE_HOME"] = str(home)

    def run(*argv: str) -> tuple[int, str, float]:
        t0 = time.monotonic()
        out = subprocess.run([FLANSCALE, *argv], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        seconds = time.monotonic() - t0
        assert "Traceback" not in out.stderr, out.stderr
        assert not home.exists(), sorted(str(p) for p in home.rglob("*"))
        return out.returncode, out.stderr, seconds

    return run


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("flanscale: error: ") and all(n in err for n in needles), err


@pytest.mark.slow
def test_unreachable_or_malformed_addresses(flanscale, tmp_path):
    closed = f"127.0.0.1:{free_port()}"
    one_line(*flanscale("sweep", "run", *SWEEP, "--ray-address", "not a host")[:2],
             "--ray-address 'not a host'", "HOST:PORT")
    one_line(*flanscale("sweep", "run", *SWEEP, "--ray-address", closed)[:2], f"--ray-address {closed}", "refused")
    one_line(*flanscale("sweep", "run", *SWEEP, "--tracking-uri", f"http://{closed}")[:2],
             f"--tracking-uri http://{closed}", "no MLflow server")
    one_line(*flanscale("sweep", "status", "demo", "--tracking-uri", "bogus://x")[:2],
             "--tracking-uri bogus://x", "unknown scheme 'bogus'", "sqlite:///PATH")
    f = tmp_path / "report.html"
    f.write_text("")
    one_line(*flanscale("report", "demo", "--out", str(f))[:2], f"--out {f}", "is a file")


def test_a_silent_server_is_given_up_on_after_the_connect_timeout(flanscale):
    with socket.socket() as s:  # accepts connections, never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        code, err, seconds = flanscale("sweep", "status", "demo", "--tracking-uri",
                                       f"http://127.0.0.1:{s.getsockname()[1]}", "--connect-timeout", "1")
    one_line(code, err, "within 1 s")
    assert seconds < 10


def test_bad_spec_values_and_input_files(flanscale, tmp_path):
    one_line(*flanscale("sweep", "run", *SWEEP, "optim.learning_rate=nan")[:2], "optim.learning_rate: nan")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# to do\n")
    one_line(*flanscale("sweep", "run", str(empty))[:2], "the sweep file is empty")
    missing = tmp_path / "missing"
    one_line(*flanscale("sweep", "run", *SWEEP, "data=flan", f"data.paths=[{missing}]")[:2],
             "data.paths:", "does not exist")
    one_line(*flanscale("sweep", "run", *SWEEP, f"+init_checkpoint.tiny-1={missing}")[:2],
             "init_checkpoint.tiny-1:", "does not exist")


def test_infeasible_cells_start_nothing(flanscale):
    code, err, _ = flanscale("sweep", "run", *SWEEP, "models=[tiny-1,palm-540b]")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert "1 of 2 cells cannot run, nothing was started; pass --skip-infeasible" in lines[0]
    assert lines[1].startswith("  palm-540b · 9 tasks") and "does not fit cpu memory" in lines[1]
