"""The operator's client for the worker HTTP API (the protocol lives in gpufleet_worker.protocol)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import httpx

import gpufleet_worker.protocol as protocol

TIMEOUT = httpx.Timeout(5.0, read=10.0)


class WorkerError(Exception):
    """The worker refused a request; ``reason`` is the protocol's reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class WorkerClient:
    """One worker, addressed by pod IP, authenticated with its pool's token."""

    def __init__(self, http: httpx.AsyncClient, address: str, token: str, port: int) -> None:
        self.http = http
        self.base = f"http://{address}:{port}"
        self.headers = {protocol.AUTH_HEADER: protocol.auth_header_value(token)}

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = await self.http.request(
            method, self.base + path, headers=self.headers, timeout=TIMEOUT, **kwargs
        )
        if response.status_code >= 400:
            try:
                error = protocol.ErrorResponse.model_validate_json(response.content)
                raise WorkerError(response.status_code, error.reason.value, error.message)
            except ValueError:
                raise WorkerError(response.status_code, "Unknown", response.text[:200]) from None
        return response

    async def inventory(self) -> protocol.Inventory:
        response = await self._request("GET", protocol.INVENTORY)
        return protocol.Inventory.model_validate_json(response.content)

    async def submit(self, request: protocol.SubmitRequest) -> protocol.JobStatus:
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        response = await self._request("POST", protocol.JOBS, json=body)
        return protocol.JobStatus.model_validate_json(response.content)

    async def get(self, run: str) -> protocol.JobStatus | None:
        try:
            response = await self._request("GET", protocol.job_path(protocol.JOB, run))
        except WorkerError as error:
            if error.status == 404:
                return None
            raise
        return protocol.JobStatus.model_validate_json(response.content)

    async def cancel(self, run: str) -> None:
        try:
            await self._request("POST", protocol.job_path(protocol.JOB_CANCEL, run))
        except WorkerError as error:
            if error.status != 404:
                raise

    async def events(self, run: str, after: int = 0) -> AsyncGenerator[tuple[int, protocol.JobEvent], None]:
        """The run's event stream (replayed after event id ``after``), as (id, event) pairs."""
        headers = dict(self.headers)
        if after:
            headers["Last-Event-ID"] = str(after)
        url = self.base + protocol.job_path(protocol.JOB_EVENTS, run)
        async with self.http.stream(
            "GET", url, headers=headers, timeout=httpx.Timeout(5.0, read=None)
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise WorkerError(response.status_code, "StreamRefused", response.text[:200])
            event_id, data = after, ""
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    event_id = int(line[3:].strip())
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    yield event_id, protocol.JobEvent.model_validate(json.loads(data))
                    data = ""
