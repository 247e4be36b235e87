"""One reconcile round of one WorkerPool: its pods, its jobs' queue, dispatch, status.

Inputs come from the watches (kopf indexes); outputs are API writes. The decisions are the
pure functions of gpufleet.core.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from typing import Any

import httpx
from pydantic import ValidationError

import gpufleet_worker.protocol as protocol
from gpufleet import labels
from gpufleet.api.conditions import TERMINAL_PHASES, JobPhase, Reason, job_conditions, merge_conditions
from gpufleet.api.models import GenerationJob, WorkerPool
from gpufleet.api.quantity import parse_quantity
from gpufleet.core import dispatch, queue, sizing
from gpufleet.core import jobs as jobrules
from gpufleet.core.placement import Demand, Gpu, Worker, observe
from gpufleet.core.poolstatus import pool_status
from gpufleet.core.workerpod import (
    TOKEN_KEY,
    min_memory_bytes,
    pod_labels,
    selector,
    token_secret_name,
    worker_pod,
)

from . import follow, metrics
from .kube import JOBS, POOLS
from .state import Operator, PoolMemory
from .workers import WorkerClient, WorkerError

log = logging.getLogger("gpufleet.pools")
DRAINING = f"{labels.GROUP}/draining"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pod_active(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def pod_unschedulable(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)


def job_key(job: dict[str, Any]) -> str:
    return f"{job['metadata']['namespace']}/{job['metadata']['name']}"


async def ensure_token_secret(op: Operator, pool: WorkerPool, memory: PoolMemory) -> str:
    meta = pool.metadata
    token = op.pool_token(meta["namespace"], meta["name"], meta["uid"])
    if memory.token_secret_for != meta["uid"]:
        await op.kube.create_secret(
            meta["namespace"],
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": token_secret_name(meta["name"]),
                    "labels": pod_labels(meta["name"]),
                    "ownerReferences": [
                        {
                            "apiVersion": pool.api_version,
                            "kind": "WorkerPool",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                        }
                    ],
                },
                "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
            },
        )
        memory.token_secret_for = meta["uid"]
    return token


async def fetch_inventories(op: Operator, pods: list[dict], token: str) -> dict[str, protocol.Inventory]:
    async def one(pod: dict) -> tuple[str, protocol.Inventory | None]:
        client = WorkerClient(op.http, pod["status"]["podIP"], token, op.worker_port)
        try:
            return pod["metadata"]["name"], await client.inventory()
        except (httpx.HTTPError, WorkerError, ValidationError) as error:
            log.debug("inventory of %s: %s", pod["metadata"]["name"], error)
            return pod["metadata"]["name"], None

    results = await asyncio.gather(*(one(p) for p in pods))
    return {name: inventory for name, inventory in results if inventory is not None}


async def reconcile_pool(
    op: Operator, body: dict, pods: list[dict], job_bodies: list[dict], gpu_classes: list[jobrules.GpuClass]
) -> None:
    pool = WorkerPool.model_validate(body)
    meta = pool.metadata
    namespace, name = meta["namespace"], meta["name"]
    memory = op.pool(namespace, name)
    token = await ensure_token_secret(op, pool, memory)

    # -- pods -----------------------------------------------------------------------------
    for pod in pods:
        if not pod["metadata"].get("deletionTimestamp") and not pod_active(pod):
            await op.kube.delete_pod(namespace, pod["metadata"]["name"], pod["metadata"]["uid"])
            await op.kube.event(
                body,
                "WorkerReplaced",
                f"worker {pod['metadata']['name']} {pod['status'].get('phase')}; replacing it",
                warning=True,
            )
    active = [p for p in pods if pod_active(p)]
    busy = {p["metadata"]["name"]: 0 for p in active}
    for listed in job_bodies:
        worker = ((listed.get("status") or {}).get("worker") or {}).get("pod")
        phase = (listed.get("status") or {}).get("phase")
        if worker in busy and phase in (JobPhase.DISPATCHED, JobPhase.RUNNING):
            busy[worker] += 1
    ready = [
        p
        for p in active
        if pod_ready(p)
        and (p.get("status") or {}).get("podIP")
        and not p["metadata"].get("labels", {}).get(DRAINING)
    ]
    inventories = await fetch_inventories(op, ready, token)

    # -- jobs -----------------------------------------------------------------------------
    now = now_utc()
    classes = jobrules.pool_gpu_classes(pool.spec, gpu_classes, min_memory_bytes(pool))
    waiting: list[tuple[queue.WaitingJob, GenerationJob]] = []
    pods_by_name = {p["metadata"]["name"]: p for p in pods}
    for job_body in job_bodies:
        try:
            job = GenerationJob.model_validate(job_body)
        except ValidationError as error:
            log.warning("job %s does not parse: %s", job_key(job_body), error)
            continue
        action = await handle_job(op, pool, job, job_body, now, classes, pods_by_name, token)
        if action is not None:
            waiting.append((action, job))
            if job_key(job_body) not in memory.observed:
                memory.observed.add(job_key(job_body))
                memory.mix = observe(
                    memory.mix, Demand(gpus=pool.spec.gpu.count, vram=jobrules.working_vram(job.spec))
                )

    decision = size_pool(
        pool, memory, active, ready, inventories, busy, [job for _, job in waiting], job_bodies
    )
    await scale(op, pool, body, active, decision, busy, gpu_classes)
    desired = decision.desired_replicas

    ordered = queue.order([w for w, _ in waiting], time.time())
    by_key = {w.key: job for w, job in waiting}
    dispatchable = [w for w in ordered if op.job(*w.key.split("/")).not_before <= time.monotonic()]
    plan = dispatch.plan(
        [
            dispatch.QueuedJob(
                w.key,
                by_key[w.key].spec.model,
                jobrules.working_vram(by_key[w.key].spec),
                gpus=pool.spec.gpu.count,
                avoid=frozenset(op.job(*w.key.split("/")).avoid),
            )
            for w in dispatchable
        ],
        fleet_workers(op, pool, ready, inventories, job_bodies),
        memory.mix,
    )
    dispatched = set()
    for assignment in plan.assignments:
        job = by_key[assignment.key]
        pod = pods_by_name[assignment.placement.worker]
        if await follow.dispatch(op, job, pod, assignment.placement, token):
            dispatched.add(assignment.key)
    positions = queue.positions([w for w in ordered if w.key not in dispatched])
    for w in ordered:
        if w.key in dispatched:
            continue
        job = by_key[w.key]
        position = positions[w.key] - 1
        if job.status.phase != JobPhase.QUEUED or job.status.queue_position != position:
            message = f"position {position} in pool {name}'s queue"
            if w.key in plan.waiting:
                message += f"; waiting for VRAM: {plan.waiting[w.key].reason}"
            await set_job_phase(op, job, JobPhase.QUEUED, Reason.QUEUED, message, queue_position=position)
            if job.status.phase in (None, JobPhase.PENDING):
                await op.kube.event(job_body_of(job), Reason.QUEUED, message)

    await write_pool_status(
        op,
        pool,
        memory,
        active,
        ready,
        inventories,
        job_bodies,
        desired,
        len(ordered) - len(dispatched),
        decision.cluster_full,
    )
    metrics.QUEUE_DEPTH.labels(namespace, name).set(len(ordered) - len(dispatched))


def job_body_of(job: GenerationJob) -> dict:
    return {"apiVersion": job.api_version, "kind": job.kind, "metadata": job.metadata}


async def set_job_phase(
    op: Operator, job: GenerationJob, phase: JobPhase, reason: str, message: str, **fields: Any
) -> GenerationJob:
    """Writes phase, reason, message, conditions and any extra status fields (camelCase)."""
    now = now_utc()
    generation = job.metadata.get("generation", 1)
    merged = merge_conditions(job.status.conditions, job_conditions(phase, reason, message, generation, now))
    status = {
        "phase": phase.value,
        "reason": str(reason),
        "message": message,
        "conditions": merged,
        "observedGeneration": generation,
    }
    status.update({_camel(k): v for k, v in fields.items()})
    meta = job.metadata
    stored = await op.kube.patch_status(JOBS, meta["namespace"], meta["name"], status)
    if stored is not None:
        from .handlers import JOB_BODIES, remember

        remember(JOB_BODIES, (meta["namespace"], meta["name"]), stored)
    metrics.count_transition(phase)
    return GenerationJob.model_validate(stored) if stored is not None else job


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


async def handle_job(
    op: Operator,
    pool: WorkerPool,
    job: GenerationJob,
    body: dict,
    now: dt.datetime,
    classes: list[jobrules.GpuClass],
    pods_by_name: dict[str, dict],
    token: str,
) -> queue.WaitingJob | None:
    """Acts on one job; returns it as a queue entry when it waits to be dispatched."""
    meta, status, spec = job.metadata, job.status, job.spec
    namespace, name = meta["namespace"], meta["name"]
    memory = op.job(namespace, name)
    phase = status.phase

    if meta.get("deletionTimestamp"):
        if phase in (JobPhase.DISPATCHED, JobPhase.RUNNING):
            await follow.cancel_run(op, job, pods_by_name, token)
        await release_finalizer(op, job)
        follow.stop_follower(op, namespace, name)
        op.jobs.pop((namespace, name), None)
        return None

    if phase in TERMINAL_PHASES:
        await release_finalizer(op, job)
        if jobrules.ttl_expired(status.completion_time, spec.ttl_seconds_after_finished, now):
            await op.kube.delete_job(namespace, name)
        return None

    if spec.cancel:
        if phase in (JobPhase.DISPATCHED, JobPhase.RUNNING):
            if not memory.cancel_sent:
                await follow.cancel_run(op, job, pods_by_name, token)
                memory.cancel_sent = True
            return None
        await set_job_phase(
            op,
            job,
            JobPhase.CANCELLED,
            Reason.CANCELLED,
            "cancelled before it ran",
            completion_time=stamp(now),
            queue_position=None,
        )
        await op.kube.event(body, Reason.CANCELLED, "cancelled before it ran")
        return None

    if phase in (JobPhase.DISPATCHED, JobPhase.RUNNING):
        follow.ensure_follower(op, job, token)  # which also keeps the job's deadline
        return None

    refused = jobrules.refusal(spec, pool.spec, classes)
    if refused is not None:
        if phase != JobPhase.PENDING or status.reason != refused.reason or status.message != refused.message:
            await set_job_phase(
                op, job, JobPhase.PENDING, refused.reason, refused.message, queue_position=None
            )
            await op.kube.event(body, refused.reason, refused.message, warning=True)
        return None
    if status.attempts and jobrules.past_deadline(status.start_time, spec.timeout_seconds, now):
        message = jobrules.deadline_message(spec.timeout_seconds)
        await set_job_phase(
            op,
            job,
            JobPhase.FAILED,
            Reason.DEADLINE_EXCEEDED,
            message,
            completion_time=stamp(now),
            queue_position=None,
        )
        return None
    created = dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")).timestamp()
    return queue.WaitingJob(key=f"{namespace}/{name}", priority=spec.priority, enqueued_at=created)


async def release_finalizer(op: Operator, job: GenerationJob) -> None:
    """Removes the operator's finalizer (guarded by resourceVersion: a newer object keeps it for now)."""
    meta = job.metadata
    finalizers = meta.get("finalizers") or []
    if labels.FINALIZER in finalizers:
        await op.kube.patch_metadata(
            JOBS,
            meta["namespace"],
            meta["name"],
            {
                "finalizers": [f for f in finalizers if f != labels.FINALIZER],
                "resourceVersion": meta["resourceVersion"],
            },
        )


def fleet_workers(
    op: Operator,
    pool: WorkerPool,
    ready: list[dict],
    inventories: dict[str, protocol.Inventory],
    job_bodies: list[dict],
) -> list[Worker]:
    """The placer's view: each worker's GPUs as reported, less reservations it has not reported yet."""
    # Jobs the operator dispatched that a worker's inventory does not list yet still hold VRAM.
    pending: dict[str, list[tuple[str, str | None, dict]]] = {}
    for body in job_bodies:
        status = body.get("status") or {}
        worker = status.get("worker") or {}
        if status.get("phase") in (JobPhase.DISPATCHED, JobPhase.RUNNING) and worker.get("pod"):
            pending.setdefault(worker["pod"], []).append((job_key(body), worker.get("gpu"), body))
    workers = []
    for pod in ready:
        name = pod["metadata"]["name"]
        inventory = inventories.get(name)
        if inventory is None or not inventory.ready:
            continue
        known = {run.job_id for run in inventory.jobs}
        free = {g.uuid: g.admittable_bytes for g in inventory.gpus}
        counts = {g.uuid: g.running_jobs for g in inventory.gpus}
        for key, gpu, body in pending.get(name, []):
            if key not in known and gpu in free:
                free[gpu] -= jobrules.working_vram(GenerationJob.model_validate(body).spec)
                counts[gpu] += 1
        workers.append(
            Worker(
                name=name,
                gpus=tuple(
                    Gpu(
                        uuid=g.uuid,
                        product=g.product,
                        vram_total=g.memory_total_bytes,
                        vram_free=max(0, min(free[g.uuid], g.memory_total_bytes)),
                        jobs=counts[g.uuid],
                        max_jobs=inventory.max_jobs_per_gpu,
                    )
                    for g in inventory.gpus
                ),
                models=frozenset(m.name for m in inventory.models if m.state == protocol.ModelState.LOADED),
            )
        )
    return workers


def size_pool(
    pool: WorkerPool,
    memory: PoolMemory,
    active: list[dict],
    ready: list[dict],
    inventories: dict[str, protocol.Inventory],
    busy: dict[str, int],
    queued: list[GenerationJob],
    job_bodies: list[dict],
) -> sizing.Decision:
    """The pool's size from its queue (or spec.replicas), via gpufleet.core.sizing."""
    autoscaling = pool.spec.autoscaling
    policy = (
        None
        if autoscaling is None
        else sizing.Policy(
            min_replicas=autoscaling.min_replicas,
            max_replicas=autoscaling.max_replicas,
            target_jobs_per_worker=autoscaling.target_jobs_per_worker,
            scale_up_stabilization_seconds=autoscaling.scale_up_stabilization_seconds,
            scale_down_stabilization_seconds=autoscaling.scale_down_stabilization_seconds,
            idle_seconds_before_zero=autoscaling.idle_seconds_before_zero,
        )
    )
    ready_names = {p["metadata"]["name"] for p in ready}
    views = []
    for pod in active:
        name = pod["metadata"]["name"]
        inventory = inventories.get(name)
        created = dt.datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        views.append(
            sizing.WorkerView(
                name=name,
                ready=name in ready_names and inventory is not None,
                schedulable=not pod_unschedulable(pod),
                draining=bool(pod["metadata"].get("labels", {}).get(DRAINING)),
                busy_jobs=busy.get(name, 0),
                gpu_vram_total=tuple(g.memory_total_bytes for g in inventory.gpus) if inventory else (),
                loaded_models=frozenset(m.name for m in inventory.models) if inventory else frozenset(),
                started_at=created.timestamp(),
            )
        )
    model_vram = {m.name: parse_quantity(m.vram).value() for m in pool.spec.models}

    def as_job(job: GenerationJob) -> sizing.Job:
        # What one job holds on a GPU: its model's weights and its working memory.
        return sizing.Job(
            name=job.metadata["name"],
            model=job.spec.model,
            priority=job.spec.priority,
            vram=model_vram.get(job.spec.model, 0) + jobrules.working_vram(job.spec),
        )

    running = []
    for body in job_bodies:
        if (body.get("status") or {}).get("phase") in (JobPhase.DISPATCHED, JobPhase.RUNNING):
            try:
                running.append(as_job(GenerationJob.model_validate(body)))
            except ValidationError:
                continue
    shape = sizing.worker_shape(
        min_memory_bytes(pool), pool.spec.gpu.count, pool.spec.gpu.max_jobs_per_gpu, views
    )
    decision = sizing.decide(
        policy,
        replicas=pool.spec.replicas,
        shape=shape,
        queued=[as_job(j) for j in queued],
        running=running,
        workers=views,
        state=memory.sizing,
        now=time.time(),
    )
    memory.sizing = decision.state
    return decision


async def scale(
    op: Operator,
    pool: WorkerPool,
    body: dict,
    active: list[dict],
    decision: sizing.Decision,
    busy: dict[str, int],
    gpu_classes: list[jobrules.GpuClass],
) -> None:
    """Applies a sizing decision: resume or drain workers, create missing ones, remove drained idle ones.

    A busy worker is never removed: it is marked draining (no new jobs) and deleted once idle.
    """
    namespace, name = pool.metadata["namespace"], pool.metadata["name"]
    metrics.DESIRED_WORKERS.labels(namespace, name).set(decision.desired_replicas)
    if decision.desired_replicas != memory_desired(op, pool):
        await op.kube.event(body, decision.reason.value, decision.message())
    for pod_name in decision.resume:
        await op.kube.patch_pod_labels(namespace, pod_name, {DRAINING: None})
    for pod_name in decision.drain:
        await op.kube.patch_pod_labels(namespace, pod_name, {DRAINING: "true"})
    draining = (
        {p["metadata"]["name"] for p in active if p["metadata"].get("labels", {}).get(DRAINING)}
        - set(decision.resume)
    ) | set(decision.drain)
    serving = [p for p in active if p["metadata"]["name"] not in draining]
    names = {p["metadata"]["name"] for p in active}
    index = 0
    classes_mib = sorted({c.memory_bytes // 2**20 for c in gpu_classes})
    for _ in range(decision.desired_replicas - len(serving)):
        while f"{name}-{index}" in names:
            index += 1
        pod_name = f"{name}-{index}"
        names.add(pod_name)
        if await op.kube.create_pod(namespace, worker_pod(pool, pod_name, classes_mib, op.worker_env)):
            await op.kube.event(body, "WorkerCreated", f"created worker {pod_name}")
    for pod in active:
        pod_name = pod["metadata"]["name"]
        if pod_name in draining and busy.get(pod_name, 0) == 0:
            await op.kube.delete_pod(namespace, pod_name, pod["metadata"]["uid"])
            await op.kube.event(body, "WorkerRemoved", f"removed drained worker {pod_name} (idle)")


def memory_desired(op: Operator, pool: WorkerPool) -> int | None:
    return (op.pool(pool.metadata["namespace"], pool.metadata["name"]).last_status or {}).get(
        "desiredReplicas"
    )


async def write_pool_status(
    op: Operator,
    pool: WorkerPool,
    memory: PoolMemory,
    active: list[dict],
    ready: list[dict],
    inventories: dict[str, protocol.Inventory],
    job_bodies: list[dict],
    desired: int,
    queue_depth: int,
    cluster_full: bool,
) -> None:
    status = pool_status(
        pool,
        active,
        ready,
        inventories,
        job_bodies,
        desired,
        queue_depth,
        selector(pool.metadata["name"]),
        now_utc(),
        cluster_full,
    )
    if status != memory.last_status:
        await op.kube.patch_status(POOLS, pool.metadata["namespace"], pool.metadata["name"], status)
        memory.last_status = status
    metrics.READY_WORKERS.labels(pool.metadata["namespace"], pool.metadata["name"]).set(len(ready))
