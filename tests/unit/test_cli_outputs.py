"""Where a command writes: an output folder it cannot write to is one line before any work,
a reader that closes the pipe ends the command quietly, and an unknown sweep is one line
that creates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import preflight
from trainers.spec import UserError

ROOT = Path(__file__).resolve().parents[2]


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_an_output_folder_is_probed_not_only_its_permissions(tmp_path):
    with pytest.raises(UserError) as e:  # /proc lets the superuser pass any permission check
        preflight.check_out_dir(Path("/proc/x"), "--out")
    assert str(e.value).startswith("--out /proc/x: cannot write in /proc (") and "\n" not in str(e.value)
    preflight.check_out_dir(tmp_path / "new" / "deeper", "--out")
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    if os.geteuid() != 0:  # a read-only folder stops only other users
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(UserError, match="ro"):
            preflight.check_out_dir(tmp_path / "ro" / "out", "--out")


def test_pretrain_checks_its_output_before_training(cli_runner, empty_home):
    started = time.monotonic()
    code, out, err = cli_runner("pretrain")("pretrain", "--out", "/proc/x", "--steps", "1000")
    _one_line(code, err, "flanscale: error: --out /proc/x: cannot write in /proc")
    assert out == "" and time.monotonic() - started < 20 and not empty_home.exists()


def test_report_to_an_unwritable_folder_is_one_line(cli_runner, empty_home):
    code, _, err = cli_runner("report")("report", "s", "--out", "/proc/x")
    _one_line(code, err, "flanscale: error: --out /proc/x: cannot write in /proc")
    assert not empty_home.exists()


def _into_a_closed_pipe(*argv: str, home: Path) -> subprocess.CompletedProcess:
    """`flanscale ARGV | head -0`: the reader is gone before the command writes."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], stdout=w, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, timeout=120, env=dict(os.environ, FLANSCALE_HOME=str(home)))
    finally:
        os.close(w)


def test_a_closed_pipe_ends_a_command_quietly(tmp_path):
    proc = _into_a_closed_pipe("plan", "sweeps/demo.yaml", "--format", "json", home=tmp_path / "home")
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


@pytest.mark.slow
def test_a_closed_pipe_after_a_fit_is_quiet_too(tmp_path):
    proc = _into_a_closed_pipe("fit", "paper:table5", "--x", "params", "--y", "mmlu_direct", "--where", "family=t5",
                               "--where", "finetuned=yes", "--format", "json", "--bootstrap", "0",
                               home=tmp_path / "home")
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_cancelling_an_unknown_sweep_creates_nothing(cli_runner, empty_home):
    started = time.monotonic()
    code, _, err = cli_runner("sweep")("sweep", "cancel", "nope")
    _one_line(code, err, f"flanscale: error: sweep 'nope': no such sweep in sqlite:///{empty_home / 'mlflow.db'}")
    assert time.monotonic() - started < 5 and not empty_home.exists()
