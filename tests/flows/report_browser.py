"""Headless Chromium driven over the DevTools protocol, for the report tests.

Debian's `chromium` (installed here by apt if missing; the tests run as root) and the
`websockets` package Prefect already brings: no browser download, no extra dependency.
`open_page` loads a file and returns what a person would notice: console errors, failed
loads, JavaScript dialogs (an injected `alert` would open one), plus whatever the given
expressions evaluate to, and a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
]


def ensure_chromium() -> str:
    """The Chromium binary, installed with apt-get when missing (as the issue asks)."""
    if not Path(CHROMIUM).exists():
        done = subprocess.run(
            "apt-get update -qq && apt-get install -y -qq chromium",
            shell=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0 or not Path(CHROMIUM).exists():
            raise RuntimeError(f"could not install chromium with apt-get: {done.stderr[-2000:]}")
    return CHROMIUM


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: Path | None = None


class _DevTools:
    def __init__(self, ws_url: str) -> None:
        self.ws = connect(ws_url, max_size=None, open_timeout=20)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params: Any):
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._keep(reply)

    def _keep(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("method") == "Page.javascriptDialogOpening":
            # Dismiss it, or the page would hang; the report records that it opened.
            self.ws.send(
                json.dumps(
                    {
                        "id": next(self.ids),
                        "method": "Page.handleJavaScriptDialog",
                        "params": {"accept": False},
                        "sessionId": event.get("sessionId"),
                    }
                )
            )

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            self._keep(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(f"no {method} within {timeout} s")


def open_page(
    path: Path,
    expressions: dict[str, str],
    screenshot: Path | None = None,
    full_page: Path | None = None,
    width: int = 1400,
    height: int = 1000,
) -> PageReport:
    binary = ensure_chromium()
    profile = Path(tempfile.mkdtemp(prefix="yieldrank-chromium-"))
    proc = subprocess.Popen(
        [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port, browser_path = port_file.read_text().splitlines()[:2]
        tools = _DevTools(f"ws://127.0.0.1:{port}{browser_path}")
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable", session)
        tools.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        tools.events.clear()
        tools.call("Page.navigate", session, url=path.resolve().as_uri())
        tools.wait_for("Page.loadEventFired")
        report = PageReport()
        for name, expression in expressions.items():
            result = tools.call(
                "Runtime.evaluate",
                session,
                expression=expression,
                returnByValue=True,
                awaitPromise=True,
            )
            if "exceptionDetails" in result:
                raise RuntimeError(f"{name}: {result['exceptionDetails']}")
            report.values[name] = result["result"].get("value")
        if screenshot is not None:
            shot = tools.call("Page.captureScreenshot", session, format="png")
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            report.screenshot = screenshot
        if full_page is not None:
            size = tools.call("Page.getLayoutMetrics", session)["cssContentSize"]
            shot = tools.call(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
            full_page.write_bytes(base64.b64decode(shot["data"]))
        time.sleep(0.2)  # late console messages (none expected: the page has no script)
        tools.call("Runtime.evaluate", session, expression="1")
        for event in tools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                report.console_errors.append(json.dumps(params.get("args"))[:500])
            elif method == "Runtime.exceptionThrown":
                report.console_errors.append(json.dumps(params.get("exceptionDetails"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                report.console_errors.append(params["entry"].get("text", "")[:500])
            elif method == "Network.loadingFailed":
                report.failed_loads.append(f"{params.get('errorText')}: {params.get('requestId')}")
            elif method == "Page.javascriptDialogOpening":
                report.dialogs.append(params.get("message", ""))
        tools.ws.close()
        return report
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)
