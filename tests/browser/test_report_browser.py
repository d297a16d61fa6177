"""The HTML report in a real headless Chromium: every figure decodes, every table has rows,
nothing is fetched from the network, and the console stays clean. Driven over the DevTools
protocol (websocket-client); a full-page screenshot is saved next to the report."""

from __future__ import annotations

import base64
import importlib.util
import time
from pathlib import Path

import pytest
from chromium import CHROMIUM, chromium

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH")]


def _synthetic_sweep_writer():
    # The MLflow layout writer lives with the report tests; load it by path (tests/unit is no package).
    path = Path(__file__).parents[1] / "unit" / "test_report.py"
    spec = importlib.util.spec_from_file_location("flanscale_report_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_synthetic_sweep


@pytest.fixture()
def browser(tmp_path):
    with chromium(tmp_path / "chrome-profile") as page:
        yield page


def test_report_renders_in_chromium(tmp_path, browser):
    from dashboards.report import ReportOptions, write_report
    from dashboards.runs import load_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sizes = {"tiny-1": 480_000, "tiny-2": 1_950_000, "tiny-3": 7_900_000}
    _synthetic_sweep_writer()(uri, tmp_path / "mlartifacts", sweep="browser", sizes=sizes)
    rep = write_report(load_sweep("browser", uri), tmp_path / "report", ReportOptions(n_boot=40, log_artifacts=False))

    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable")
    browser.send("Page.navigate", url=rep.html.resolve().as_uri())
    browser.wait_event("Page.loadEventFired")
    ready = browser.evaluate("""new Promise(resolve => {
        const check = () => document.body && document.body.dataset.ready === '1'
            ? resolve(true) : setTimeout(check, 50);
        check(); setTimeout(() => resolve(false), 10000);
    })""")
    assert ready, "the report's load handler never ran"

    state = browser.evaluate("""(() => ({
        figures: Number(document.body.dataset.figures),
        broken: document.body.dataset.figuresBroken,
        images: [...document.images].map(i => ({name: i.dataset.figure, w: i.naturalWidth, h: i.naturalHeight,
                                                 shown: i.getBoundingClientRect().width})),
        tables: [...document.querySelectorAll('table.data')].map(t => ({
            name: t.dataset.table, rows: t.rows.length, width: t.getBoundingClientRect().width})),
        title: document.title,
    }))()""")
    assert state["title"] == "flanscale report: browser"
    assert state["broken"] == "" and state["figures"] == len(rep.figures) == len(state["images"])
    for img in state["images"]:
        assert img["w"] > 300 and img["h"] > 200 and img["shown"] > 100, img
    names = {t["name"] for t in state["tables"]}
    assert {"results", "flops", "fits", "forecasts", "backtests", "cells", "sweep"} <= names
    for t in state["tables"]:
        assert t["rows"] >= 2 and t["width"] > 0, t  # header + at least one row (data or a note)

    shot = browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (rep.out_dir / "screenshot.png").write_bytes(png)

    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    fetched = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file:", "data:")) for u in fetched), fetched


def test_console_errors_are_caught(tmp_path, browser):
    # The check above must be able to fail: a page that breaks its own policy is reported.
    page = tmp_path / "bad.html"
    page.write_text((Path(__file__).parents[2] / "dashboards" / "templates" / "report.html").read_text()
                    .split("<body>")[0] + "<body><img src='https://example.invalid/x.png'></body></html>")
    for domain in ("Runtime", "Log", "Page"):
        browser.send(f"{domain}.enable")
    browser.send("Page.navigate", url=page.as_uri())
    browser.wait_event("Page.loadEventFired")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(e.get("method") == "Log.entryAdded" for e in browser.events):
        browser.evaluate("1")
        time.sleep(0.1)
    assert any(e.get("method") == "Log.entryAdded" and "Content Security Policy" in e["params"]["entry"]["text"]
               for e in browser.events)


def test_first_screen_states_the_findings_and_shows_a_figure(tmp_path):
    """At 1280x800, before any scrolling: the findings sentences (with numbers) and the first
    figure, whole and decoded; the appendix starts below."""
    from dashboards.report import ReportOptions, write_report
    from dashboards.runs import load_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sizes = {"tiny-1": 480_000, "tiny-2": 1_950_000, "tiny-3": 7_900_000}
    _synthetic_sweep_writer()(uri, tmp_path / "mlartifacts", sweep="first", sizes=sizes, task_counts=(0, 9, 89),
                              seeds=(0, 1), extra_states=False)
    rep = write_report(load_sweep("first", uri), tmp_path / "report", ReportOptions(n_boot=20, log_artifacts=False))
    with chromium(tmp_path / "chrome-profile", window="1280,800") as page:
        page.send("Page.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
        page.send("Page.navigate", url=rep.html.resolve().as_uri())
        page.wait_for("document.body && document.body.dataset.ready === '1'", what="the report to load")
        seen = page.evaluate("""(() => {
            const box = e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom,
                                                                             left: r.left, right: r.right}; };
            const sentences = [...document.querySelectorAll('[data-list="findings"] p')];
            const first = document.querySelector('img[data-first]');
            return {view: [innerWidth, innerHeight], sentences: sentences.map(p => p.textContent),
                    boxes: sentences.map(box), figure: first && {...box(first), w: first.naturalWidth},
                    appendix: box(document.getElementById('appendix'))};
        })()""")
        page.screenshot(rep.out_dir / "first_screen.png")
    width, height = seen["view"]
    assert (width, height) == (1280, 800)
    assert 2 <= len(seen["sentences"]) <= 3, seen["sentences"]
    assert seen["sentences"][0].startswith("eval/loss falls with model size, -") and "per e-fold of parameters [" in \
        seen["sentences"][0]
    assert all(b["bottom"] <= height and b["right"] <= width for b in seen["boxes"]), seen
    fig = seen["figure"]
    assert fig is not None and fig["w"] > 300 and fig["top"] >= 0 and fig["bottom"] <= height and fig["right"] <= width
    assert seen["appendix"]["top"] > height
