"""In-process stand-ins for the API server and the workers, for fast round tests.

They keep only what the operator reads back (objects with resourceVersions, events) and
count every write by verb, so a test asserts from the operator's own records. The real
API server and worker are exercised by tests/operator and tests/worker.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

import gpufleet_worker.protocol as protocol
from gpufleet import labels
from gpufleet.api.models import GROUP, VERSION
from gpufleet.controller.kube import PodRefused
from gpufleet.controller.state import Operator
from gpufleet.core.jobs import GpuClass
from gpufleet.core.workerpod import WorkerEnv

NAMESPACE = "studio"
GIB = 2**30


def merge(target: dict, patch: dict) -> None:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKube:
    """The part of the API server the operator writes to, with a count of writes by verb."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.versions = itertools.count(1)
        self.writes: Counter[str] = Counter()
        self.status_writes: Counter[str] = Counter()  # by job name (jobs only)
        self.events: list[tuple[str, str, str]] = []  # (object name, reason, note)
        self.deleted_pods: list[str] = []
        self.pods: dict[str, dict] = {}  # what the cache holds: a deletion marks it, as a watch would
        self.refuse_pods: str | None = None  # the API server's message when it refuses worker pods
        self.specs: dict[tuple[str, str, str], Any] = {}  # each object's last spec, for its generation

    def store(self, plural: str, body: dict) -> dict:
        meta = body["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["resourceVersion"] = str(next(self.versions))
        key = (plural, meta["namespace"], meta["name"])
        if key in self.specs and self.specs[key] != body.get("spec"):
            meta["generation"] += 1  # as the API server counts changes of spec
        self.specs[key] = copy.deepcopy(body.get("spec"))
        self.objects[key] = body
        return copy.deepcopy(body)

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict) -> dict | None:
        self.writes[f"patch {plural}/status"] += 1
        body = self.objects.get((plural, namespace, name))
        if body is None:
            return None
        if plural == "generationjobs":
            self.status_writes[name] += 1
        body.setdefault("status", {})
        merge(body["status"], status)
        return self.store(plural, body)

    async def delete_job(self, namespace: str, name: str) -> None:
        self.writes["delete generationjobs"] += 1
        self.objects.pop(("generationjobs", namespace, name), None)

    async def create_pod(self, namespace: str, manifest: dict) -> bool:
        self.writes["create pods"] += 1
        if self.refuse_pods is not None:
            raise PodRefused(self.refuse_pods)
        return True

    async def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        self.writes["delete pods"] += 1
        self.deleted_pods.append(name)
        if name in self.pods:
            self.pods[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    async def patch_pod_labels(self, namespace: str, name: str, pod_labels: dict) -> None:
        self.writes["patch pods"] += 1

    async def create_secret(self, namespace: str, manifest: dict) -> None:
        self.writes["create secrets"] += 1

    async def event(self, obj: dict, reason: str, note: str, warning: bool = False) -> None:
        self.writes["create events"] += 1
        self.events.append((obj["metadata"]["name"], reason, note))


@dataclass
class FakeWorker:
    """One worker speaking the worker protocol: runs end as ``outcome`` once released."""

    name: str
    address: str
    max_jobs_per_gpu: int = 4
    vram: int = 24 * GIB
    refuse: tuple[int, protocol.Reason, str] | None = None  # answer to every submit
    outcome: protocol.Reason = protocol.Reason.COMPLETED
    hold: bool = False  # runs wait for `release` before they end
    runs: dict[str, protocol.JobStatus] = field(default_factory=dict)
    submits: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    inventory_gate: asyncio.Event | None = None  # when set, inventories wait for it
    inventory_asked: asyncio.Event = field(default_factory=asyncio.Event)
    model_load: protocol.ModelLoad | None = None  # what each run says of its model's load
    model_state: protocol.ModelState = protocol.ModelState.LOADED
    forget_next_run: bool = False  # the next run admitted is lost at once (the process restarts)
    drop_next_reply: bool = False  # the next submit is admitted but its reply never arrives
    instance: str = "first"  # the worker process; restart() starts another

    def restart(self) -> None:
        """The worker process restarts in its pod: a new instance that knows no runs."""
        self.runs.clear()
        self.instance = f"after-{self.instance}"

    def live(self) -> list[protocol.JobStatus]:
        return [r for r in self.runs.values() if r.phase == protocol.Phase.RUNNING]

    def inventory(self) -> protocol.Inventory:
        reserved = sum(r.vram_reserved_bytes for r in self.live())
        return protocol.Inventory(
            worker=self.name,
            instance=self.instance,
            ready=True,
            max_jobs_per_gpu=self.max_jobs_per_gpu,
            gpus=[
                protocol.GpuInfo(
                    index=0,
                    uuid=f"GPU-{self.name}",
                    product="NVIDIA-L4",
                    simulated=True,
                    memory_total_bytes=self.vram,
                    memory_used_bytes=reserved,
                    memory_free_bytes=self.vram - reserved,
                    reserved_bytes=reserved,
                    admittable_bytes=self.vram - reserved,
                    running_jobs=len(self.live()),
                )
            ],
            models=[
                protocol.ModelInfo(
                    name="tiny-sd",
                    source="builtin://tiny-sd",
                    vram_bytes=GIB,
                    tasks=["text-to-image"],
                    state=self.model_state,
                )
            ],
            jobs=self.live(),
        )

    def submit(self, request: protocol.SubmitRequest) -> tuple[int, Any]:
        self.submits.append(request.run_id)
        if self.refuse is not None:
            status, reason, message = self.refuse
            return status, protocol.ErrorResponse(reason=reason, message=message)
        held = self.runs.get(request.run_id)
        if held is not None and held.job_uid != request.job_uid:  # an earlier job of that name
            if held.phase == protocol.Phase.RUNNING:
                return 409, protocol.ErrorResponse(reason=protocol.Reason.SPEC_MISMATCH, message="not ended")
            del self.runs[request.run_id]
        if request.run_id not in self.runs:
            if len(self.live()) >= self.max_jobs_per_gpu:
                return 409, protocol.ErrorResponse(reason=protocol.Reason.TOO_MANY_JOBS, message="full")
            self.runs[request.run_id] = protocol.JobStatus(
                run_id=request.run_id,
                job_id=request.job_id,
                attempt=request.attempt,
                job_uid=request.job_uid,
                task=request.task,
                model=request.model,
                seed=1,
                phase=protocol.Phase.RUNNING,
                progress=protocol.Progress(step=0, total_steps=4, percent=0),
                gpu=f"GPU-{self.name}",
                model_load=self.model_load,
                vram_reserved_bytes=request.vram_bytes,
                created_at=dt.datetime.now(dt.UTC),
            )
        if self.forget_next_run:
            self.forget_next_run = False
            return 201, self.runs.pop(request.run_id)
        return 201, self.runs[request.run_id]

    def cancel(self, run: str) -> protocol.JobStatus | None:
        self.cancels.append(run)
        status = self.runs.get(run)
        if status is not None and status.phase == protocol.Phase.RUNNING:
            self.runs[run] = status = status.model_copy(
                update={"phase": protocol.Phase.CANCELLED, "vram_reserved_bytes": 0}
            )
        return status

    def end(self, run: str) -> protocol.JobStatus:
        status = self.runs[run]
        if status.phase == protocol.Phase.RUNNING:
            ok = self.outcome == protocol.Reason.COMPLETED
            status = status.model_copy(
                update={
                    "phase": protocol.Phase.SUCCEEDED if ok else protocol.Phase.FAILED,
                    "reason": self.outcome,
                    "message": "done" if ok else "the GPU fell over",
                    "vram_reserved_bytes": 0,
                    "finished_at": dt.datetime.now(dt.UTC),
                    "progress": protocol.Progress(step=4, total_steps=4, percent=100),
                }
            )
            self.runs[run] = status
        return status

    async def events(self, run: str) -> Any:
        if self.hold:
            await self.released.wait()
        status = self.end(run)
        event = protocol.JobEvent(run_id=run, event=protocol.EventName.RESULT, status=status)
        yield f"id: 1\nevent: result\ndata: {event.model_dump_json(by_alias=True)}\n\n".encode()


class FakeWorkers:
    """Routes the operator's worker calls (httpx) to FakeWorkers by address."""

    def __init__(self) -> None:
        self.by_address: dict[str, FakeWorker] = {}

    def add(self, worker: FakeWorker) -> FakeWorker:
        self.by_address[worker.address] = worker
        return worker

    async def handle(self, request: httpx.Request) -> httpx.Response:
        worker = self.by_address.get(request.url.host)
        if worker is None:
            raise httpx.ConnectError("no route to host", request=request)
        path = request.url.path
        if path == protocol.INVENTORY:
            worker.inventory_asked.set()
            if worker.inventory_gate is not None:
                await worker.inventory_gate.wait()
            return json_response(200, worker.inventory())
        if path == protocol.JOBS and request.method == "POST":
            await request.aread()
            status, body = worker.submit(protocol.SubmitRequest.model_validate(json.loads(request.content)))
            if worker.drop_next_reply:
                worker.drop_next_reply = False
                raise httpx.ReadError("connection reset by peer", request=request)
            return json_response(status, body)
        run = path.split("/")[3]
        if path.endswith("/events"):
            if run not in worker.runs:
                return json_response(
                    404, protocol.ErrorResponse(reason=protocol.Reason.NOT_FOUND, message=run)
                )
            return httpx.Response(
                200, content=worker.events(run), headers={"content-type": "text/event-stream"}
            )
        if path.endswith("/cancel"):
            return json_response(200, worker.cancel(run) or {})
        if run in worker.runs:
            return json_response(200, worker.runs[run])
        return json_response(404, protocol.ErrorResponse(reason=protocol.Reason.NOT_FOUND, message=run))


def json_response(status: int, body: Any) -> httpx.Response:
    if hasattr(body, "model_dump"):
        body = body.model_dump(mode="json", by_alias=True, exclude_none=True)
    return httpx.Response(status, json=body)


class Clock:
    """An injected monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_body(name: str = "sd", replicas: int = 1, max_jobs_per_gpu: int = 4) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "runtime": "builtin",
            "image": "ghcr.io/gpufleet/worker:0.1.0",
            "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "1Gi"}],
            "tasks": ["text-to-image"],
            "gpu": {"count": 1, "minMemory": "16Gi", "maxJobsPerGPU": max_jobs_per_gpu},
            "replicas": replicas,
        },
    }


def job_body(name: str, pool: str = "sd", **spec: Any) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GenerationJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "poolRef": {"name": pool},
            "task": "text-to-image",
            "model": "tiny-sd",
            "input": {"prompt": f"test {name}", "width": 64, "height": 64, "steps": 4, "seed": 1},
            "vram": "1Gi",
            "output": {"uri": "s3://artifacts/studio/"},
            **spec,
        },
    }


def pod_body(name: str, pool: str, address: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {labels.POOL: pool},
        },
        "spec": {"nodeName": "gpu-node-0"},
        "status": {
            "phase": "Running",
            "podIP": address,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class Harness:
    """An Operator wired to a FakeKube and FakeWorkers; objects go to both the store and the
    cache, as a watch would deliver them."""

    def __init__(self) -> None:
        self.kube = FakeKube()
        self.workers = FakeWorkers()
        self.clock = Clock()
        self.op = Operator(
            kube=self.kube,  # type: ignore[arg-type]
            http=httpx.AsyncClient(transport=httpx.MockTransport(self.workers.handle)),
            token_key=b"k" * 32,
            worker_env=WorkerEnv(),
            clock=self.clock,
        )
        self.op.cache.gpu_nodes["gpu-node-0"] = GpuClass("NVIDIA-L4", 24 * GIB)

    def pool(self, name: str = "sd", workers: int = 1, max_jobs_per_gpu: int = 4) -> list[FakeWorker]:
        self.op.cache.remember_pool(
            self.kube.store("workerpools", pool_body(name, workers, max_jobs_per_gpu))
        )
        made = []
        for index in range(workers):
            worker = self.workers.add(
                FakeWorker(f"{name}-{index}", f"10.0.{len(self.workers.by_address)}.1", max_jobs_per_gpu)
            )
            self.kube.pods[worker.name] = pod_body(worker.name, name, worker.address)
            self.op.cache.remember_pod(self.kube.pods[worker.name])
            made.append(worker)
        return made

    def job(self, name: str, pool: str = "sd", **spec: Any) -> None:
        self.op.cache.remember_job(self.kube.store("generationjobs", job_body(name, pool, **spec)))

    def status(self, name: str) -> dict:
        return self.kube.objects[("generationjobs", NAMESPACE, name)].get("status") or {}

    async def round(self, pool: str = "sd") -> None:
        from gpufleet.controller.reconcile import reconcile_pool

        await reconcile_pool(self.op, NAMESPACE, pool)

    async def settle(self) -> None:
        """Lets followers and background writes run until none is left to do."""
        for _ in range(50):
            pending = [t for _, t in self.op.followers.tasks.values()] + list(self.op.background)
            if not pending:
                return
            await asyncio.wait(pending, timeout=5)

    async def close(self) -> None:
        await self.op.close()
