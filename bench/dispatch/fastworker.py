"""A lightweight worker that speaks the worker protocol, for measuring the operator alone.

It takes the real worker's command line (the pool's pods run it in place of
``gpufleet-worker``), checks the pool's token, admits runs up to ``--max-jobs-per-gpu`` per
simulated GPU with the protocol's own request and response models, and ends each run as
Succeeded after ``GPUFLEET_BENCH_RUN_SECONDS`` (0.1 s) without computing or uploading
anything. A small HTTP/1.1 server on asyncio streams keeps its own cost per request low, so
the workers are never what limits a dispatch benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
from pathlib import Path

import gpufleet_worker.protocol as protocol
from gpufleet.api.quantity import parse_quantity


class FastWorker:
    def __init__(self, name: str, token: str, max_jobs: int, gpus: int, product: str, memory: int) -> None:
        self.name = name
        self.auth = protocol.auth_header_value(token)
        self.max_jobs = max_jobs
        self.gpus = [(f"GPU-{name}-{i}", product, memory) for i in range(gpus)]
        self.runs: dict[str, protocol.JobStatus] = {}
        self.ended: dict[str, asyncio.Event] = {}
        self.run_seconds = float(os.environ.get("GPUFLEET_BENCH_RUN_SECONDS", "0.1"))

    def live(self, gpu: str | None = None) -> list[protocol.JobStatus]:
        return [
            r
            for r in self.runs.values()
            if r.phase == protocol.Phase.RUNNING and (gpu is None or r.gpu == gpu)
        ]

    def inventory(self) -> protocol.Inventory:
        gpus = []
        for index, (uuid, product, memory) in enumerate(self.gpus):
            reserved = sum(r.vram_reserved_bytes for r in self.live(uuid))
            gpus.append(
                protocol.GpuInfo(
                    index=index,
                    uuid=uuid,
                    product=product,
                    simulated=True,
                    memory_total_bytes=memory,
                    memory_used_bytes=reserved,
                    memory_free_bytes=memory - reserved,
                    reserved_bytes=reserved,
                    admittable_bytes=memory - reserved,
                    running_jobs=len(self.live(uuid)),
                )
            )
        return protocol.Inventory(
            worker=self.name,
            ready=True,
            max_jobs_per_gpu=self.max_jobs,
            gpus=gpus,
            models=[],
            jobs=self.live(),
        )

    def submit(self, request: protocol.SubmitRequest) -> tuple[int, object]:
        if (held := self.runs.get(request.run_id)) is not None:
            if held.job_uid == request.job_uid:
                return 200, held
            if held.phase == protocol.Phase.RUNNING:  # an earlier job of that name
                return 409, protocol.ErrorResponse(reason=protocol.Reason.SPEC_MISMATCH, message="not ended")
        for uuid, _, memory in self.gpus:
            live = self.live(uuid)
            if (
                len(live) < self.max_jobs
                and sum(r.vram_reserved_bytes for r in live) + request.vram_bytes <= memory
            ):
                break
        else:
            return 409, protocol.ErrorResponse(
                reason=protocol.Reason.TOO_MANY_JOBS, message="every GPU is full"
            )
        status = protocol.JobStatus(
            run_id=request.run_id,
            job_id=request.job_id,
            attempt=request.attempt,
            job_uid=request.job_uid,
            task=request.task,
            model=request.model,
            seed=0,
            phase=protocol.Phase.RUNNING,
            progress=protocol.Progress(step=0, total_steps=1, percent=0),
            gpu=uuid,
            vram_reserved_bytes=request.vram_bytes,
            created_at=dt.datetime.now(dt.UTC),
        )
        self.runs[request.run_id] = status
        self.ended[request.run_id] = asyncio.Event()
        asyncio.get_running_loop().call_later(self.run_seconds, self.finish, request.run_id)
        return 201, status

    def finish(self, run: str) -> None:
        status = self.runs[run]
        if status.phase == protocol.Phase.RUNNING:
            self.runs[run] = status.model_copy(
                update={
                    "phase": protocol.Phase.SUCCEEDED,
                    "reason": protocol.Reason.COMPLETED,
                    "vram_reserved_bytes": 0,
                    "finished_at": dt.datetime.now(dt.UTC),
                    "progress": protocol.Progress(step=1, total_steps=1, percent=100),
                }
            )
        self.ended[run].set()

    async def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        if path in (protocol.HEALTHZ, protocol.READYZ):
            return 200, "application/json", b'{"status":"ok"}'
        if headers.get("authorization") != self.auth:
            return error(401, protocol.Reason.UNAUTHORIZED, "missing or wrong token")
        if path == protocol.INVENTORY:
            return ok(200, self.inventory())
        if path == protocol.JOBS and method == "POST":
            code, result = self.submit(protocol.SubmitRequest.model_validate_json(body))
            return ok(code, result)
        parts = path.split("/")  # /v1/jobs/{run}[/events|/cancel]
        run = parts[3] if len(parts) > 3 else ""
        if run not in self.runs:
            return error(404, protocol.Reason.NOT_FOUND, f"no run {run}")
        if path.endswith("/cancel"):
            self.finish(run)
            return ok(200, self.runs[run])
        if path.endswith("/events"):
            await self.ended[run].wait()
            event = protocol.JobEvent(run_id=run, event=protocol.EventName.RESULT, status=self.runs[run])
            text = f"id: 1\nevent: result\ndata: {event.model_dump_json(by_alias=True)}\n\n"
            return 200, protocol.SSE_MEDIA_TYPE, text.encode()
        return ok(200, self.runs[run])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = header.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                code, media, payload = await self.answer(method, path.split("?")[0], headers, body)
                head = f"HTTP/1.1 {code} X\r\ncontent-type: {media}\r\ncontent-length: {len(payload)}\r\n\r\n"
                writer.write(head.encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def ok(code: int, model: object) -> tuple[int, str, bytes]:
    return code, "application/json", model.model_dump_json(by_alias=True, exclude_none=True).encode()  # type: ignore[attr-defined]


def error(code: int, reason: protocol.Reason, message: str) -> tuple[int, str, bytes]:
    return ok(code, protocol.ErrorResponse(reason=reason, message=message))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--max-jobs-per-gpu", type=int, default=1)
    args, _ = parser.parse_known_args()  # the real worker's other flags (models...) do not matter here
    worker = FastWorker(
        os.environ.get("POD_NAME", "fast-worker"),
        args.token_file.read_text().strip(),
        args.max_jobs_per_gpu,
        int(os.environ.get("GPUFLEET_SIMULATED_GPU_COUNT", "1")),
        os.environ.get("GPUFLEET_SIMULATED_GPU_PRODUCT", "Simulated-GPU"),
        parse_quantity(os.environ.get("GPUFLEET_SIMULATED_GPU_MEMORY", "24Gi")).value(),
    )
    server = await asyncio.start_server(worker.serve, args.host, args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
