"""Several processes stop at the same step through JAX's preemption sync point, whether
one of them gets SIGTERM or a stop request, with no exchange between hosts per step."""

import json
import os
import socket
import subprocess
import sys

import pytest

from trainers.process import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

_CHILD = """
import json, os, signal, sys, time
from trainers.process import StopFlag, init_distributed

init_distributed()
import jax

how = sys.argv[1]
requested = {"n": 0}
def should_stop():  # process 1 asks to stop at its step 3
    return how == "request" and jax.process_index() == 1 and requested["n"] >= 3
flag = StopFlag(should_stop)
flag.install()
for step in range(1, 500):
    requested["n"] = step
    if how == "sigterm" and jax.process_index() == 1 and step == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    if flag(step):
        break
    time.sleep(0.02)
print("STOPPED " + json.dumps(step), flush=True)
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["request", "sigterm"])
def test_processes_agree_on_the_stop_step(how):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, how], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu", ENV_COORDINATOR: f"127.0.0.1:{port}",
                 ENV_NUM_PROCESSES: "2", ENV_PROCESS_ID: str(pid)},
        )
        for pid in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    stops = [json.loads(out.split("STOPPED ", 1)[1]) for out, _ in outs]
    assert stops[0] == stops[1] and 3 < stops[0] < 499, stops
