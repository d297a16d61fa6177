"""The MLflow UI as a user browses a finished sweep, in a real headless Chromium.

A two-cell sweep runs through the real controller (`flanscale sweep run`, local Ray, tiny
models), `flanscale report` logs its report on the parent run, and a real `mlflow server`
on loopback serves the store. The browser, driven over the DevTools protocol, checks that
the link flanscale prints opens the experiment on its runs (not MLflow's GenAI view), that
a cell's `train/loss` and `eval/loss` charts draw, and that the report renders in MLflow's
artifact viewer. Screenshots of each page are saved under the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chromium import CHROMIUM, Page, chromium, free_port, start, stop, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH")]

BIN = Path(sys.executable).parent
SWEEP = """\
name: ui
models: [tiny-1]
task_counts: [9, 89]
formats: [mixed]
max_concurrent: 2
seeds: [0]
data:
  input_length: 32
  target_length: 16
  examples_per_task: 4
optim:
  batch_size: 2
  steps: 6
eval:
  benchmarks: []
  loss: true
  loss_examples: 2
  every_steps: 2
"""


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A two-cell sweep run by the real controller, with its report logged:
    (home, client, experiment id, what `sweep run` printed)."""
    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    (root / "ui.yaml").write_text(SWEEP)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(FLANSCALE_HOME=str(home), JAX_PLATFORMS="cpu")
    printed = []
    for cmd in (["sweep", "run", str(root / "ui.yaml"), "--no-progress"], ["report", "ui", "--bootstrap", "20"]):
        done = subprocess.run([str(BIN / "flanscale"), *cmd], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed.append(done.stdout)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return home, client, client.get_experiment_by_name("ui").experiment_id, printed[0]


@pytest.fixture(scope="module")
def server(finished_sweep):
    home = finished_sweep[0]
    port = free_port()
    log = home.parent / "mlflow-server.log"
    proc = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], log, cwd=home)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", proc, log)
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chrome-profile"), window="1440,1000") as page:
        for domain in ("Page", "Runtime"):
            page.send(f"{domain}.enable")
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    out = tmp_path_factory.mktemp("screenshots")
    yield out
    print(f"\nscreenshots: {out}")


def _cells(client, exp_id):
    runs = client.search_runs([exp_id], "tags.`flanscale.kind` = 'cell'")
    return sorted(runs, key=lambda r: int(r.data.tags["task_count"]))


def test_the_printed_link_opens_the_experiment_on_its_runs(finished_sweep, server, browser, shots):
    from trainers.run_layout import ui_runs_url

    _, client, exp_id, printed = finished_sweep
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    names = [r.info.run_name for r in _cells(client, exp_id)]
    assert names == ["tiny-1 · 9 tasks · mixed · seed 0", "tiny-1 · 89 tasks · mixed · seed 0"]
    link = ui_runs_url(server, exp_id)
    assert link.replace(server, "http://127.0.0.1:5000") in printed  # the link `sweep run` ends with
    browser.open(link)
    # Every cell is listed by its name, with its training data, in the model-training view.
    browser.wait_for(f"{json.dumps(names)}.every(n => document.body.innerText.includes(n))", what="the cells' rows")
    page = browser.evaluate("({url: location.href, text: document.body.innerText})")
    browser.screenshot(shots / "1-runs.png")
    assert f"/experiments/{exp_id}/runs" in page["url"] and "workflowType=machine_learning" in page["url"]
    assert "synthetic · 89 tasks · mixture A" in page["text"]
    for genai in ("Sessions", "Judges", "Evaluation runs"):  # the GenAI view's navigation
        assert genai not in page["text"].splitlines(), genai


# A chart card holds a plotly figure and a legend line "<run name> (<metric>)". Cards render
# when they come into view, so while the metric's card is missing, its section (the metric
# name up to the last "/") is scrolled to the top of the view.
CHART_DRAWN = """((metric) => {
    for (const card of document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')) {
        if (!card.innerText.includes('(' + metric + ')')) continue;
        const lines = [...card.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line')]
            .filter(p => (p.getAttribute('d') || '').length > 10);
        card.scrollIntoView({block: 'center'});
        // Found but not drawn yet (a loaded machine draws slowly): wait here, scroll no further.
        return lines.length;
    }
    const section = metric.slice(0, metric.lastIndexOf('/'));
    const title = [...document.querySelectorAll('span, div, h2, h3')]
        .find(e => e.childElementCount === 0 && e.textContent.trim() === section);
    let box = title && title.parentElement;
    while (box && !(box.scrollHeight > box.clientHeight + 10 && getComputedStyle(box).overflowY !== 'visible')) {
        box = box.parentElement;
    }
    if (box) {
        // Bring the section's title to the top of the view and wait there for its first cards
        // to render (a loaded machine renders late; stepping on would scroll them out of view).
        const offset = title.getBoundingClientRect().top - box.getBoundingClientRect().top;
        if (Math.abs(offset) > 50) box.scrollTop += offset;
    }
    return 0;
})"""


def test_a_cells_loss_charts_draw(finished_sweep, server, browser, shots):
    _, client, exp_id, _ = finished_sweep
    cell = _cells(client, exp_id)[1]
    history = {m: len(client.get_metric_history(cell.info.run_id, m)) for m in ("train/loss", "eval/loss")}
    assert history == {"train/loss": 6, "eval/loss": 3}  # every step; every 2 steps
    browser.open(f"{server}/#/experiments/{exp_id}/runs/{cell.info.run_id}/model-metrics?workflowType=machine_learning")
    for metric in ("eval/loss", "train/loss"):
        assert browser.wait_for(f"{CHART_DRAWN}({json.dumps(metric)})", what=f"the {metric} chart to draw") >= 1
        browser.screenshot(shots / f"2-cell-{metric.replace('/', '-')}.png")


def test_the_report_renders_in_the_artifact_viewer(finished_sweep, server, browser, shots):
    _, client, exp_id, _ = finished_sweep
    parent = client.search_runs([exp_id], "tags.`flanscale.kind` = 'sweep'")[0]
    assert parent.data.metrics["sweep/cells_finished"] == 2 and "sweep/best/eval/loss" in parent.data.metrics
    # MLflow shows an HTML artifact in a sandboxed iframe, which Chromium runs as a frame of
    # its own: attached to, it gets a DevTools session to evaluate in.
    browser.send("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True)
    browser.open(f"{server}/#/experiments/{exp_id}/runs/{parent.info.run_id}/artifacts/report/report.html"
                 "?workflowType=machine_learning")
    browser.wait_for("document.querySelector('iframe.mlflow-html-iframe') !== null", what="the HTML viewer")
    report = _rendered_report(browser)
    assert report["title"] == "flanscale report: ui" and report["broken"] == ""
    assert report["figures"] >= 1 and len(report["images"]) == report["figures"]
    assert all(w > 300 and h > 200 for w, h in report["images"]), report
    browser.screenshot(shots / "3-report.png")


def _rendered_report(browser: Page, timeout: float = 60.0) -> dict:
    probe = """document.body && document.body.dataset.ready === '1' ? {
        title: document.title, broken: document.body.dataset.figuresBroken,
        figures: Number(document.body.dataset.figures),
        images: [...document.images].map(i => [i.naturalWidth, i.naturalHeight])} : null"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in list(browser.events):
            # Attached while still blank, a frame's URL shows only in later events: try every frame.
            if e.get("method") == "Target.attachedToTarget" and e["params"]["targetInfo"]["type"] == "iframe":
                try:
                    value = browser.evaluate(probe, session=e["params"]["sessionId"])
                except RuntimeError:  # a frame of an earlier page, gone since
                    continue
                if value:
                    return value
        browser.evaluate("1")  # reads the events that arrived meanwhile
        time.sleep(0.5)
    raise AssertionError("the report never rendered in the artifact viewer")
