"""A real headless Chromium (Debian's package), driven over the DevTools protocol: open a
page, evaluate JavaScript in it, take screenshots."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import websocket

from gpufleet.localcluster.waiting import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1400, 1000


class Chromium:
    def __init__(self, workdir: Path) -> None:
        assert CHROMIUM, "chromium is not installed (apt-get install chromium)"
        self.profile = workdir / "profile"
        self.log = (workdir / "chromium.log").open("w")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # tests run as root in CI containers
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={self.profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                "about:blank",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        active = self.profile / "DevToolsActivePort"
        port = wait_for(
            lambda: active.read_text().split("\n")[0] if active.exists() else "",
            lambda text: text.isdigit(),
            60,
            what="chromium's DevTools port",
        )
        pages = wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/json/list").json(),
            lambda found: any(p["type"] == "page" for p in found),
            30,
            what="a chromium page",
        )
        page = next(p for p in pages if p["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_for(lambda: self.evaluate("document.readyState"), lambda s: s == "complete", 30, what=url)

    def screenshot(self, path: Path) -> Path:
        """The whole page, however long."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=max(HEIGHT, height),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png")
        self.call("Emulation.clearDeviceMetricsOverride")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
