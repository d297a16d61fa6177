"""Live metrics path: a real tiny sweep on Ray reports through RayMetricsTracker, a real
Prometheus scrapes Ray's metrics agent, every PromQL query of the Grafana dashboard returns
the sweep's series, and the cell-state gauge ends where the cells end."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import tiny_sweep

DASHBOARD = Path(__file__).parents[2] / "dashboards" / "grafana" / "flanscale.json"
PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # Prometheus explains a bad query in the body
        raise AssertionError(f"{url}: {e.code} {e.read().decode()}") from None


def _expand(expr: str, sweep: str) -> str:
    """What Grafana sends for the panel with the dashboard's variables set to this sweep."""
    return (expr.replace("$sweep", sweep).replace("$cell", ".*")
            .replace("$__rate_interval", "30s").replace("$__interval", "5s"))


def test_dashboard_model_is_consistent_with_the_tracker():
    from orchestrator.metrics import GAUGES

    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"sweep", "cell"} <= set(variables)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    known = {f"ray_{name}" for name, _ in GAUGES.values()} | {
        "ray_flanscale_step", "ray_flanscale_steps_total", "ray_flanscale_tokens_total", "ray_flanscale_cell_state",
        "ray_flanscale_eval"}
    used = set()
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p["targets"]:
            used |= set(re.findall(r"\bray_flanscale_\w+", t["expr"]))
    assert used == known, used ^ known  # every series the tracker exports is charted, and nothing else


class _Recorder:
    """Stands in for RayMetricsTracker: records the states the real path sets."""

    made: list["_Recorder"] = []

    def __init__(self, sweep, cell_key, model=""):
        self.states: list[str] = []
        _Recorder.made.append(self)

    def set_state(self, state):
        self.states.append(state)


@pytest.mark.parametrize("outcome,stop,expected", [
    ({"status": "finished"}, False, "finished"),
    ({"status": "preempted"}, False, "preempted"),  # SIGTERM: a preemption notice
    ({"status": "preempted"}, True, "cancelled"),  # the controller asked the cell to stop
    (RuntimeError("boom"), False, "failed"),
])
def test_default_cell_fn_ends_the_state_gauge_with_the_cell(monkeypatch, outcome, stop, expected):
    from orchestrator import metrics, placement
    from trainers import job
    from trainers.spec import CellSpec

    def run_cell(*args, **kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(metrics, "RayMetricsTracker", _Recorder)
    monkeypatch.setattr(job, "run_cell", run_cell)
    _Recorder.made.clear()
    spec = CellSpec(sweep="s").to_dict()
    if isinstance(outcome, Exception):
        with pytest.raises(RuntimeError):
            placement.default_cell_fn(spec, "run", "uri", "home", lambda: stop)
    else:
        assert placement.default_cell_fn(spec, "run", "uri", "home", lambda: stop) is outcome
    assert [r.states for r in _Recorder.made] == [[expected]]


def setup_module(module):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)  # the cell function below runs in Ray workers


EVAL = """\
eval:
  benchmarks: [mmlu]
  modes: [direct]
  max_examples: 1
  max_new_tokens: 4
  loss: false
"""


def fail_89_at_step_2(spec, run_id, tracking_uri, home, should_stop):
    """The real cell function; the 89-task cell's job raises during its second step, as a
    broken data shard would."""
    from orchestrator.placement import default_cell_fn

    calls = []

    def stop():
        calls.append(1)
        if spec["data"]["task_count"] == 89 and len(calls) >= 2:
            raise RuntimeError("shard 89 unreadable")
        return should_stop()

    return default_cell_fn(spec, run_id, tracking_uri, home, stop)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package 'prometheus')")
def test_grafana_queries_return_a_live_sweeps_metrics(tmp_path, monkeypatch):
    """A real sweep (controller, Ray tasks, default_cell_fn, run_cell): nothing but the cells
    themselves moves the state gauge, to finished for one cell and failed for the other."""
    ray = pytest.importorskip("ray")
    from orchestrator import controller
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sweep = f"prom-{uuid.uuid4().hex[:6]}"
    (tmp_path / "sweep.yaml").write_text(tiny_sweep(sweep, steps=3, extra=EVAL))
    spec = load_spec(str(tmp_path / "sweep.yaml"), [])
    cells = {c.task_count: c for c in plan(spec)}
    key, failing = cells[9].key, cells[89].key
    metrics_port, prom_port = _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: ray\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{prom_port}"
    # address="local": a fresh cluster of our own even when RAY_ADDRESS points elsewhere, so the
    # metrics port is the one Prometheus scrapes; the controller uses the Ray it finds running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 500})
    try:
        summary = controller.run_sweep(spec, list(cells.values()), home=tmp_path / "home", progress=False,
                                       cell_fn=fail_89_at_step_2)
        assert summary.states == {key: "finished", failing: "failed"}, summary.errors
        result = summary.results[key]
        assert result["status"] == "finished" and result["steps"] == 3

        queries = [(p["title"], _expand(t["expr"], sweep)) for p in _panels() for t in p["targets"]]
        deadline = time.monotonic() + 60
        while True:
            empty = []
            for title, q in queries:
                r = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
                assert r["status"] == "success", (title, r)
                if not r["data"]["result"]:
                    empty.append(title)
            if not empty:
                break
            assert prom.poll() is None, prom.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"panels without data after 60 s: {empty}"
            time.sleep(1)

        def value(q: str) -> dict[str, float]:
            res = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q}))["data"]["result"]
            return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in res}

        sel = f'flanscale_sweep="{sweep}", flanscale_cell="{key}"'
        assert list(value(f"max(ray_flanscale_loss{{{sel}}})").values()) == [pytest.approx(result["final_loss"], rel=1e-5)]
        assert list(value(f"max(ray_flanscale_steps_total{{{sel}}})").values()) == [3.0]
        assert list(value(f"max(ray_flanscale_step{{{sel}}})").values()) == [3.0]

        def state_of(cell: str) -> dict[str, float]:
            q = f'max by (flanscale_state) (ray_flanscale_cell_state{{flanscale_sweep="{sweep}", flanscale_cell="{cell}"}})'
            return {json.loads(k)["flanscale_state"]: v for k, v in value(q).items() if v == 1.0}

        deadline = time.monotonic() + 30  # each cell's last report may trail the sweep's end by a scrape
        while (state_of(failing), state_of(key)) != ({"failed": 1.0}, {"finished": 1.0}) and time.monotonic() < deadline:
            time.sleep(1)
        assert state_of(key) == {"finished": 1.0}
        assert state_of(failing) == {"failed": 1.0}
        mfu = list(value(f"max(ray_flanscale_mfu{{{sel}}})").values())[0]
        assert 0.0 < mfu < 1.0
        eff = list(value(f"max(ray_flanscale_packing_efficiency{{{sel}}})").values())[0]
        assert 0.0 < eff <= 1.0
        evals = value(f"max by (metric) (ray_flanscale_eval{{{sel}}})")
        assert any(json.loads(k)["metric"] == "eval/mmlu/direct" for k in evals)
        # The dashboard's sweep variable lists this sweep.
        labels = _get(f"{base}/api/v1/label/flanscale_sweep/values?" + urllib.parse.urlencode({"match[]": "ray_flanscale_step"}))
        assert sweep in labels["data"]
    finally:
        ray.shutdown()
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def _scrape(port: int) -> dict[tuple[str, str], float]:
    """One scrape of Ray's metrics agent, as Prometheus takes it: the cell-state series,
    (cell, state) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.labels["flanscale_cell"], s.labels["flanscale_state"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "ray_flanscale_cell_state"}


def slow_steps(spec, run_id, tracking_uri, home, should_stop):
    """The real cell function, each step a second long, so the cell runs while it is scraped."""
    from orchestrator.placement import default_cell_fn

    def stop():
        time.sleep(1.0)
        return should_stop()

    return default_cell_fn(spec, run_id, tracking_uri, home, stop)


@pytest.mark.slow
@pytest.mark.ray
def test_a_running_cells_state_series_stays_while_it_runs(tmp_path, monkeypatch):
    """Three scrapes of Ray's metrics endpoint, 12 s apart, while one cell trains: each holds
    the cell's state series, running = 1. Ray's agent drops a gauge's series that its process
    has not recorded again within two report intervals (20 s at Ray's default 10 s, which
    this test keeps), so a state set once would be gone by the third."""
    ray = pytest.importorskip("ray")
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec
    from orchestrator.store import SweepStore

    monkeypatch.setenv("FLANSCALE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sweep = f"prom-{uuid.uuid4().hex[:6]}"
    (tmp_path / "sweep.yaml").write_text(tiny_sweep(sweep, task_counts="[9]", steps=50, every=100))
    cell = plan(load_spec(str(tmp_path / "sweep.yaml"), []))[0]
    store = SweepStore(home=tmp_path / "home")
    run_id, _ = store.cell_run(sweep, cell)
    port = _free_port()
    ray.init(address="local", num_cpus=1, include_dashboard=False, _metrics_export_port=port)
    try:
        task = ray.remote(slow_steps).remote(cell.spec.to_dict(), run_id, store.tracking_uri, str(store.home),
                                             lambda: False)
        running = (cell.key, "running")
        deadline = time.monotonic() + 120
        while _scrape(port).get(running) != 1.0:  # the cell has started
            assert time.monotonic() < deadline, "no running state series within 120 s"
            assert not ray.wait([task], timeout=0)[0], "the cell ended before its state was scraped"
            time.sleep(0.5)
        seen = []
        for _ in range(3):
            time.sleep(12)
            assert not ray.wait([task], timeout=0)[0], "the cell ended before the third scrape"
            seen.append(_scrape(port).get(running))
        assert seen == [1.0, 1.0, 1.0]
        ray.get(task)
    finally:
        ray.shutdown()
