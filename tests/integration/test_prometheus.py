"""Live metrics path: a real tiny cell in a Ray task reports through RayMetricsTracker, a real
Prometheus scrapes Ray's metrics agent, and every PromQL query of the Grafana dashboard
returns the cell's series."""

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


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package 'prometheus')")
def test_grafana_queries_return_a_live_cells_metrics(tmp_path):
    ray = pytest.importorskip("ray")
    from trainers.spec import CellSpec, DataConfig, EvalConfig, ModelConfig, OptimConfig

    sweep = f"prom-{uuid.uuid4().hex[:6]}"
    spec = CellSpec(
        sweep=sweep,
        model=ModelConfig(name="tiny-1", vocab_size=384, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                          num_encoder_layers=1, num_decoder_layers=1),
        data=DataConfig(task_count=9, input_length=64, target_length=32, examples_per_task=8),
        optim=OptimConfig(batch_size=4, steps=3),
        eval=EvalConfig(benchmarks=("mmlu",), modes=("direct",), max_examples=1, max_new_tokens=4),
    )
    key = spec.key()
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
    # metrics port is the one Prometheus scrapes.
    ray.init(address="local", num_cpus=1, include_dashboard=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 500})
    try:
        @ray.remote(num_cpus=1)
        def cell_task(spec_dict: dict, home: str) -> dict:
            from orchestrator.metrics import RayMetricsTracker
            from trainers.job import run_cell

            tracker = RayMetricsTracker(spec_dict["sweep"], CellSpec.from_dict(spec_dict).key())
            result = run_cell(spec_dict, home=home, extra_trackers=[tracker])
            tracker.set_state(result["status"])
            return result

        result = ray.get(cell_task.remote(spec.to_dict(), str(tmp_path / "home")), timeout=240)
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
        states = value(f"max by (flanscale_state) (ray_flanscale_cell_state{{{sel}}})")
        assert {json.loads(k)["flanscale_state"]: v for k, v in states.items() if v == 1.0} == {"finished": 1.0}
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
