"""A recording proxy in front of the API server for one operator replica.

The replica's kubeconfig points here (plain HTTP on loopback); every request goes on to the
real API server over TLS, responses (watch streams included) come back as they arrive. The
proxy records every write the replica sent, with the time it arrived, so a test can tell
which replica wrote when from what reached the wire; it can answer a share of the job status
writes with 409 Conflict instead of forwarding them, as an API server does when another
writer got there first.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from gpufleet.localcluster.processes import free_port

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JOB_STATUS_PATH = re.compile(r"/apis/gpufleet\.io/[^/]+/namespaces/[^/]+/generationjobs/[^/]+/status$")
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class Write:
    replica: str
    at: float  # time.time() when the request reached the proxy
    method: str
    path: str
    status: int  # what the replica was answered; 409 where the proxy injected the conflict
    injected: bool


class ApiProxy:
    def __init__(
        self, replica: str, upstream: str, ca_cert: Path, conflict_rate: float = 0.0, seed: int = 0
    ) -> None:
        self.replica = replica
        self.upstream = upstream.rstrip("/")
        self.ca_cert = ca_cert
        self.conflict_rate = conflict_rate
        self.random = random.Random(seed)
        self.port = free_port()
        self.writes: list[Write] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"apiproxy-{replica}", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"API proxy for {self.replica} did not start")
        return self

    def stop(self) -> None:
        if self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def recorded(self) -> list[Write]:
        with self._lock:
            return list(self.writes)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        self._started.set()
        self._loop.run_forever()

    async def _open(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # Open watches end at once when the proxy stops.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        # Watches still being forwarded end here, not as "Task was destroyed" when the loop goes.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _record(self, request: web.Request, at: float, status: int, injected: bool) -> None:
        if request.method in WRITE_METHODS:
            with self._lock:
                self.writes.append(Write(self.replica, at, request.method, request.path, status, injected))

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        at = time.time()
        if (
            request.method == "PATCH"
            and JOB_STATUS_PATH.search(request.path)
            and self.random.random() < self.conflict_rate
        ):
            self._record(request, at, 409, True)
            return web.json_response(_conflict(request.path), status=409)
        assert self._session is not None
        try:
            body = await request.read()
        except ConnectionResetError:  # the replica was killed while it sent its request
            return web.Response(status=499)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=body or None,
                # Pass the request on as it came: without a Content-Type of its own (the
                # Kubernetes client sends none on creates), aiohttp's octet-stream would get 415.
                skip_auto_headers=("Content-Type",),
            )
        except aiohttp.ClientError as error:
            self._record(request, at, 502, False)
            return web.Response(status=502, text=str(error))
        async with upstream:
            self._record(request, at, upstream.status, False)
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS},
            )
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # the replica went away (killed) or the API server closed the watch
            return response


def _conflict(path: str) -> dict:
    name = path.rstrip("/").split("/")[-2]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Conflict",
        "code": 409,
        "message": (
            f'Operation cannot be fulfilled on generationjobs.gpufleet.io "{name}": the object has '
            "been modified; please apply your changes to the latest version and try again"
        ),
        "details": {"name": name, "group": "gpufleet.io", "kind": "generationjobs"},
    }


def dump(writes: list[Write], path: Path) -> None:
    path.write_text("\n".join(json.dumps(w.__dict__) for w in sorted(writes, key=lambda w: w.at)) + "\n")
