"""The dashboard's HTTP server: the page, its view as JSON, the view pushed as server-sent
events whenever a watch sees a change, and redirects to presigned artifact URLs.

Read-only: GET only. It answers only requests addressed to the host it listens on, so a web
page elsewhere cannot read the fleet through a DNS name rebound to 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from gpufleet.client.dashboard import view
from gpufleet.client.dashboard.watch import FleetWatch
from gpufleet.client.errors import ClientError

log = logging.getLogger("gpufleet.dashboard")

REFRESH_SECONDS = 5.0  # with no change, the view is sent again this often (durations move on)
PUSH_INTERVAL_SECONDS = 0.2  # the most views a second a page gets: many jobs' progress is one update
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Images come from the artifacts' presigned URLs, wherever the bucket is; nothing else leaves.
CSP = (
    "default-src 'self'; img-src 'self' data: http: https:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

Presigner = Callable[[Any, str], str]  # (job, artifact name) -> URL; raises ClientError


def static_file(name: str) -> bytes:
    return resources.files("gpufleet.client.dashboard").joinpath("static", name).read_bytes()


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], fleet: FleetWatch, presign: Presigner, extra_hosts: Sequence[str] = ()
    ) -> None:
        super().__init__(address, Handler)
        self.fleet = fleet
        self.presign = presign
        self.extra_hosts = set(extra_hosts)  # names it is reached by through a proxy or an ingress
        self.closing = threading.Event()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def allowed_hosts(self) -> set[str]:
        host, port = str(self.server_address[0]), self.server_address[1]
        names = {host, f"[{host}]"}
        if host in ("127.0.0.1", "::1", "0.0.0.0", "::"):
            names |= {"localhost", "127.0.0.1", "[::1]"}
        return {f"{name}:{port}" for name in names} | self.extra_hosts

    def view(self) -> tuple[int, dict[str, Any]]:
        version, fleet = self.fleet.snapshot()
        return version, view.page(fleet, datetime.now(UTC))

    def shutdown(self) -> None:
        self.closing.set()
        self.fleet.stop()  # wakes the event streams, which then end
        super().shutdown()


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _text(self, status: int, message: str) -> None:
        self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        if self.headers.get("Host", "") not in self.server.allowed_hosts():
            self._text(HTTPStatus.FORBIDDEN, "unexpected Host header: open the URL the dashboard printed")
            return
        path = urlsplit(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, static_file("index.html"), STATIC["index.html"])
        elif path.startswith("/static/") and path[len("/static/") :] in STATIC:
            name = path[len("/static/") :]
            self._send(HTTPStatus.OK, static_file(name), STATIC[name])
        elif path == "/api/view":
            self._send(HTTPStatus.OK, json.dumps(self.server.view()[1]).encode(), "application/json")
        elif path == "/events":
            self._events()
        elif path.startswith("/artifacts/"):
            self._artifact(path[len("/artifacts/") :])
        else:
            self._text(HTTPStatus.NOT_FOUND, f"{path}: not found")

    def do_HEAD(self) -> None:
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, "GET only")

    def _events(self) -> None:
        """Server-sent events: the whole view on every change, and every few seconds."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.close_connection = True
        fleet = self.server.fleet
        try:
            self.wfile.write(b"retry: 1000\n\n")
            while not self.server.closing.is_set():
                version, shown = self.server.view()
                self.wfile.write(b"data: " + json.dumps(shown).encode() + b"\n\n")
                self.wfile.flush()
                if self.server.closing.wait(PUSH_INTERVAL_SECONDS):
                    return
                fleet.wait_newer(version, REFRESH_SECONDS)
        except (BrokenPipeError, ConnectionResetError):
            return  # the page went away

    def _artifact(self, rest: str) -> None:
        parts = [unquote(p) for p in rest.split("/")]
        if len(parts) != 3 or not all(parts):
            self._text(HTTPStatus.NOT_FOUND, "artifact paths are /artifacts/NAMESPACE/JOB/ARTIFACT")
            return
        namespace, name, artifact = parts
        job = self.server.fleet.job(namespace, name)
        if job is None:
            self._text(HTTPStatus.NOT_FOUND, f'generationjob "{name}" not found in namespace "{namespace}"')
            return
        try:
            url = self.server.presign(job, artifact)
        except ClientError as exc:
            self._text(HTTPStatus.BAD_GATEWAY, str(exc))
            return
        self._send(HTTPStatus.FOUND, b"", "text/plain", Location=url)
