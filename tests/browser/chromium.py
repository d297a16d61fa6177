"""Headless Chromium for the browser tests: start it, and a minimal DevTools-protocol client
(websocket-client) over one page target and, flattened, the frames it embeds."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
websocket = pytest.importorskip("websocket", reason="websocket-client is needed to drive Chromium over CDP")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    # Output to a file: a pipe nobody reads would stall a chatty server once it fills.
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} never answered: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Page:
    """Send commands, collect events, evaluate and poll expressions, take screenshots."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        msg = {"id": my_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == my_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def evaluate(self, expr: str, session: str | None = None):
        r = self.send("Runtime.evaluate", session, expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 60.0, what: str = ""):
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expr)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expr}")
            time.sleep(0.5)

    def open(self, url: str) -> None:
        # From a blank page, so the app loads afresh and reads its state from the URL (a
        # change of the hash alone keeps the running app's state).
        for target in ("about:blank", url):
            self.send("Page.navigate", url=target)
            self.wait_for("document.readyState === 'complete'", what=f"{target} to load")

    def screenshot(self, path: Path) -> None:
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        path.write_bytes(png)


@contextlib.contextmanager
def chromium(profile: Path, window: str = "1280,900") -> Iterator[Page]:
    """A headless Chromium on a fresh profile, its first page, closed afterwards."""
    port = free_port()
    log = profile.parent / f"{profile.name}-chromium.log"
    proc = start([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--remote-allow-origins=*",
                  f"--window-size={window}", "about:blank"], log)
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", proc, log, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        page = Page(pages[0]["webSocketDebuggerUrl"])
        try:
            yield page
        finally:
            page.ws.close()
    finally:
        stop(proc)
