"""One reconcile round of one WorkerPool: its pods, its jobs' queue, dispatch, status.

Inputs come from the cache (the watches and the operator's own writes) and the workers'
inventories; outputs are API writes and worker calls. The decisions are the pure functions
of gpufleet.core; `reconcile_pool` states the round's steps in order.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import httpx
from pydantic import ValidationError

import gpufleet_worker.protocol as protocol
from gpufleet import labels
from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.api.models import GenerationJob, WorkerPool
from gpufleet.api.quantity import parse_quantity
from gpufleet.core import breaker, dispatch, queue, sizing
from gpufleet.core import jobs as jobrules
from gpufleet.core.fleetmetrics import PoolSeen, workers_seen
from gpufleet.core.placement import Demand, Gpu, Worker, observe
from gpufleet.core.poolstatus import missing_s3_credentials, pool_status
from gpufleet.core.workerpod import (
    TOKEN_KEY,
    min_memory_bytes,
    pod_labels,
    selector,
    token_secret_name,
    worker_pod,
)
from gpufleet_worker.modelcache import CachedModel

from . import follow, metrics
from .cache import Cache, Key
from .jobstatus import now_utc, set_phase, stamp
from .kube import POOLS, PodRefused
from .state import JobDecision, JobMemory, Operator, PoolMemory, QueueView
from .workers import WorkerError

log = logging.getLogger("gpufleet.pools")
DRAINING = f"{labels.GROUP}/draining"
ACTIVE = (JobPhase.DISPATCHED, JobPhase.RUNNING)
POSITION_WRITES_PER_ROUND = 32  # queue positions refreshed per round (new jobs' first status: all)
# Jobs a round offers to placement, from the head of the queue: the ones behind wait their turn
# without a placement try each round (Kueue's scheduling cycle likewise takes queue heads only).
# Deep enough for smaller jobs to fill GPUs around a large one at the head.
PLACEMENT_WINDOW = 1024


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


def job_id(key: str) -> Key:
    """The cache's key of the job a round calls ``key`` (namespace/name)."""
    namespace, _, name = key.partition("/")
    return namespace, name


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
        try:
            return pod["metadata"]["name"], await follow.worker_client(op, pod, token).inventory()
        except (httpx.HTTPError, WorkerError, ValidationError) as error:
            log.debug("inventory of %s: %s", pod["metadata"]["name"], error)
            return pod["metadata"]["name"], None

    results = await asyncio.gather(*(one(p) for p in pods))
    return {name: inventory for name, inventory in results if inventory is not None}


async def bounded(limit: int, coroutines: Iterable[Awaitable[Any]]) -> list[Any]:
    """Runs independent writes and worker calls concurrently, at most ``limit`` at once, and
    returns their results once all have ended; then raises the first one's error, if any (a
    write that failed does not leave the others running past the round that holds them)."""
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with gate:
            return await coroutine

    results = await asyncio.gather(*(one(c) for c in coroutines), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def reconcile_pool(op: Operator, namespace: str, name: str) -> None:
    """One round of one pool, in numbered steps; writes of a step run concurrently."""
    cache = op.cache
    body = cache.pools.get((namespace, name))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    # 1. Snapshot: the pool, its pods and jobs as the cache holds them now, parsed once.
    pool = WorkerPool.model_validate(body)
    memory = op.pool(namespace, name)
    arrived_before = len(memory.arrived)  # jobs queued after this are not in the snapshot
    pods = cache.pool_pods(namespace, name)
    gpu_classes = cache.gpu_classes()
    classes = jobrules.pool_gpu_classes(pool.spec, gpu_classes, min_memory_bytes(pool))
    # A job whose body is the one last decided on is not even looked up in the parse cache; a
    # finished one the last round held compact has no parsed form (None) until it is needed.
    seen: list[tuple[str, dict, GenerationJob | None, JobDecision | None]] = []
    for b in cache.pool_jobs(namespace, name):
        key = job_key(b)
        held = memory.decisions.get(key)
        if held is not None and held.body is b:
            seen.append((key, b, held.job, held))
        elif (j := cache.parsed(b)) is not None:
            seen.append((key, b, j, held))
    jobs = [(b, j) for _, b, j, _ in seen if j is not None]
    memory.observed.intersection_update(key for key, *_ in seen)  # not the deleted jobs' keys
    running = [(b, j) for b, j in jobs if j.status.phase in ACTIVE]
    metrics.pool_seen(namespace, name, pool.spec.tasks)
    token = await ensure_token_secret(op, pool, memory)

    # 2. Pods: replace the ones that ended and the ones their circuit breaker condemned.
    await replace_pods(op, pool, body, pods, memory)
    active = [p for p in pods if pod_active(p)]
    busy = {p["metadata"]["name"]: 0 for p in active}
    for _, job in running:
        if job.status.worker and job.status.worker.pod in busy:
            busy[job.status.worker.pod] += 1
    ready = [
        p
        for p in active
        if pod_ready(p)
        and (p.get("status") or {}).get("podIP")
        and not p["metadata"].get("labels", {}).get(DRAINING)
    ]
    inventories = await fetch_inventories(op, ready, token)

    # 3. Per-job decisions (core.jobs.next_step); their writes run concurrently.
    now = now_utc()
    model_vram = {m.name: parse_quantity(m.vram).value() for m in pool.spec.models}
    waiting: list[queue.WaitingJob] = []
    writes: list[Awaitable[Any]] = []
    # The pool's spec (its generation: its status writes do not count) and the GPUs it can get.
    basis = (body["metadata"].get("uid"), body["metadata"].get("generation"), tuple(classes))
    memory.decisions = {}
    claimed: set[Key] = set()  # jobs this step writes: held from the first-status writer
    try:  # released however the step ends
        for key, job_body, maybe_job, held in seen:
            ident = job_id(key)
            if ident in op.writing:  # its first status is being written: the next round decides it
                continue
            # The last decision stands while the job and the pool's basis are the same.
            stands = held if held is not None and held.job is maybe_job and held.basis == basis else None
            if stands is not None:
                memory.decisions[key] = stands
                if stands.queued is not None:  # still waiting, as it was
                    waiting.append(stands.queued)
                    continue
                if stands.quiet_until is not None and now < stands.quiet_until:  # finished, kept
                    continue
            # A job held compact whose time came, or whose pool changed, is parsed again.
            if (parsed := maybe_job or cache.parsed(job_body)) is None:
                continue
            job = parsed
            if stands is not None:
                refused, holds = stands.refused, stands.held
            else:
                refused = jobrules.refusal(job.spec, pool.spec, classes)
                holds = sizing_job(job, model_vram)
            view = job_view(job, op.jobs.get(ident))
            before = len(writes)
            action = job_step(op, job, view, job_body, refused, now, token, writes)
            if len(writes) > before and op.claim(ident):
                claimed.add(ident)
            quiet_until = jobrules.quiet_until(view)
            waits = action if not job.status.attempts else None
            compact = quiet_until is not None or waits is not None  # see JobDecision
            memory.decisions[key] = JobDecision(
                job_body, None if compact else job, basis, refused, waits, holds, quiet_until
            )
            if compact:
                cache.forget_parsed(*ident)
            if action is not None:
                waiting.append(action)
                if key not in memory.observed:
                    memory.observed.add(key)
                    memory.mix = observe(
                        memory.mix, Demand(gpus=pool.spec.gpu.count, vram=jobrules.working_vram(job.spec))
                    )
        live = {job_key(b): (j.status.attempts, b["metadata"].get("uid", "")) for b, j in running}
        runs = (
            jobrules.WorkerRun(worker, run.run_id, run.job_id, run.attempt, run.job_uid)
            for worker, inventory in inventories.items()
            for run in inventory.jobs
        )
        pods_by_name = {p["metadata"]["name"]: p for p in pods}
        writes.extend(
            stop_run(op, pods_by_name[run.worker], token, run) for run in jobrules.stray_runs(runs, live)
        )
        await bounded(op.concurrency, writes)
    except BaseException:
        for write in writes:
            if asyncio.iscoroutine(write):
                write.close()  # the ones never run (a no-op for the others)
        raise
    finally:
        op.writing -= claimed

    # 4. Sizing: how many workers, and apply it.
    queued = [memory.decisions[w.key].held for w in waiting]
    decision = size_pool(pool, memory, active, ready, inventories, busy, queued, running, model_vram)
    await scale(op, pool, body, active, decision, busy, gpu_classes)

    # 5. Placement: the queue in order onto the workers that take jobs now.
    ordered_at = time.time()
    ordered = queue.order(waiting, ordered_at)
    clock = op.clock()
    due = (w.key for w in ordered if op.job(*job_id(w.key)).not_before <= clock)
    # The window's jobs as decided (parsed again where held compact: the head of the queue only).
    window: dict[str, GenerationJob] = {}
    for key in itertools.islice(due, PLACEMENT_WINDOW):
        if (head := decided_job(cache, memory.decisions[key])) is not None:
            window[key] = head
    workers = [
        w
        for w in fleet_workers(op, ready, inventories, running)
        if breaker.takes_jobs(memory.workers.get(w.name, breaker.WorkerHealth()), clock, op.breaker)
    ]
    failed = failed_models(inventories)
    plan = dispatch.plan(
        [
            dispatch.QueuedJob(
                key,
                head.spec.model,
                jobrules.working_vram(head.spec),
                model_vram=model_vram.get(head.spec.model, 0),
                gpus=pool.spec.gpu.count,
                avoid=frozenset(op.job(*job_id(key)).avoid) | failed.get(head.spec.model, set()),
            )
            for key, head in window.items()
        ],
        workers,
        memory.mix,
    )

    # 6. Apply: dispatch the placed jobs, and tell the others where they stand. A job whose
    # first status the first-status writer took up since the snapshot waits for the next round.
    claimed = set()

    def hold(key: str) -> bool:
        """Claims job ``key`` for a write of this step, unless it changed since the snapshot."""
        ident = job_id(key)
        if op.cache.jobs.get(ident) is not memory.decisions[key].body or not op.claim(ident):
            return False
        claimed.add(ident)
        return True

    assignments = [a for a in plan.assignments if hold(a.key)]
    for assignment in assignments:
        pod_name = assignment.placement.worker
        memory.workers[pod_name] = breaker.probe_sent(
            memory.workers.get(pod_name, breaker.WorkerHealth()), clock, op.breaker
        )
    # Dispatches and the other jobs' status writes go out together: a new job's first status
    # does not wait for this round's dispatches. Positions count the placed jobs as gone.
    attempted = {a.key for a in plan.assignments}
    unplaced = [w for w in ordered if w.key not in attempted]
    dispatches = [
        follow.dispatch(
            op,
            window[a.key],
            pods_by_name[a.placement.worker],
            a.placement,
            token,
            inventories[a.placement.worker].instance,
        )
        for a in assignments
    ]
    positions = queued_writes(op, name, unplaced, memory.decisions, plan.waiting, hold)
    try:
        outcomes = await bounded(op.concurrency, [*dispatches, *positions])
    finally:
        op.writing -= claimed
    dispatched = {a.key for a, ok in zip(assignments, outcomes, strict=False) if ok}
    remaining = [w for w in ordered if w.key not in dispatched]

    # 7. Status of the pool.
    problems = [(Reason.MODEL_TOO_LARGE, m) for m in jobrules.models_too_large(pool.spec, classes)]
    if missing := missing_s3_credentials(pool, op.worker_env.s3_credentials_secret):
        problems.insert(0, (Reason.S3_CREDENTIALS_MISSING, missing))
    for reason, message in problems:
        if (reason, message) not in memory.model_problems:
            await op.kube.event(body, reason, message, warning=True)
    memory.model_problems = problems
    await write_pool_status(
        op,
        pool,
        memory,
        active,
        ready,
        inventories,
        running,
        decision.desired_replicas,
        len(remaining),
        decision.cluster_full,
    )
    memory.queue = QueueView(pool.spec, classes, queue.ranks(remaining, ordered_at))
    memory.arrived = memory.arrived[arrived_before:]
    memory.seen = PoolSeen(
        namespace,
        name,
        desired_workers=decision.desired_replicas,
        ready_workers=len(ready),
        queue_depth=len(remaining),
        workers=workers_seen(ready, inventories),
    )


def decided_job(cache: Cache, decision: JobDecision) -> GenerationJob | None:
    """The job ``decision`` was made on: held, or parsed again from its body where held compact."""
    return decision.job or cache.parsed(decision.body)


def queued_writes(
    op: Operator,
    pool: str,
    remaining: list[queue.WaitingJob],
    decisions: Mapping[str, JobDecision],
    waiting: dict[str, Any],
    hold: Callable[[str], bool],
) -> Iterator[Awaitable[Any]]:
    """Status writes for jobs still queued: a job's first (right away), and a new position
    only when `queue.position_due` says so, at most POSITION_WRITES_PER_ROUND a round; each
    for a job ``hold`` claims for it."""
    budget = POSITION_WRITES_PER_ROUND
    for position, w in enumerate(remaining):
        decision = decisions[w.key]
        status = decision.body.get("status") or {}  # a queued job is held compact: read its body
        first = status.get("phase") != JobPhase.QUEUED
        if not first and (budget <= 0 or not queue.position_due(status.get("queuePosition"), position)):
            continue
        if (job := decided_job(op.cache, decision)) is None or not hold(w.key):
            continue
        if not first:
            budget -= 1
        message = f"position {position} in pool {pool}'s queue"
        if w.key in waiting:
            message += f"; waiting for VRAM: {waiting[w.key].reason}"
        yield queue_job(op, job, message, position)


async def queue_job(op: Operator, job: GenerationJob, message: str, position: int) -> None:
    """Queued is said in status only: an Event per queued job would double the writes a burst
    of thousands costs (Dispatched and the outcome have theirs)."""
    current = op.cache.current(job)
    if current is None or current.status.phase not in (None, JobPhase.PENDING, JobPhase.QUEUED):
        return  # it moved on while the round ran
    await set_phase(op, current, JobPhase.QUEUED, Reason.QUEUED, message, queue_position=position)


async def replace_pods(
    op: Operator, pool: WorkerPool, body: dict, pods: list[dict], memory: PoolMemory
) -> None:
    """Deletes pods that ended (the pool creates new ones) and workers whose circuit breaker
    says their probe failed too; forgets the breakers of pods that are gone."""
    namespace = pool.metadata["namespace"]
    names = {p["metadata"]["name"] for p in pods}
    for gone in set(memory.workers) - names:
        del memory.workers[gone]
    clock = op.clock()
    removals = []
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        if pod["metadata"].get("deletionTimestamp"):
            continue
        health = memory.workers.get(pod_name, breaker.WorkerHealth())
        if not pod_active(pod):
            why = f"worker {pod_name} {pod['status'].get('phase')}; replacing it"
        elif breaker.state(health, clock, op.breaker) is breaker.BreakerState.REPLACE:
            why = f"{breaker.describe(pod_name, health)}, also after a pause; replacing it"
        else:
            continue
        removals.append(replace_pod(op, body, namespace, pod, why))
    await bounded(op.concurrency, removals)


async def replace_pod(op: Operator, body: dict, namespace: str, pod: dict, why: str) -> None:
    await op.kube.delete_pod(namespace, pod["metadata"]["name"], pod["metadata"]["uid"])
    await op.kube.event(body, "WorkerReplaced", why, warning=True)


def job_view(job: GenerationJob, memory: JobMemory | None) -> jobrules.JobView:
    """What core.jobs decides one job from: its resource and what the operator remembers of it
    (None: nothing yet; a queue's jobs get no memory before they need one)."""
    meta, status, spec = job.metadata, job.status, job.spec
    return jobrules.JobView(
        phase=status.phase,
        deleting=bool(meta.get("deletionTimestamp")),
        cancel=spec.cancel,
        cancel_sent=memory is not None and memory.cancel_sent,
        attempts=status.attempts,
        start_time=status.start_time,
        completion_time=status.completion_time,
        timeout_seconds=spec.timeout_seconds,
        ttl_seconds=spec.ttl_seconds_after_finished,
    )


def job_step(
    op: Operator,
    job: GenerationJob,
    view: jobrules.JobView,
    body: dict,
    refused: jobrules.Refusal | None,
    now: dt.datetime,
    token: str,
    writes: list[Awaitable[Any]],
) -> queue.WaitingJob | None:
    """Decides one job (core.jobs.next_step on ``view``, its job_view), adds its writes; returns
    it when it waits in the queue. ``refused``: why its pool cannot take it (core.jobs.refusal)."""
    meta, status, spec = job.metadata, job.status, job.spec
    namespace, name = meta["namespace"], meta["name"]
    step = jobrules.next_step(view, refused, now)
    Step = jobrules.Step
    if step is Step.FORGET:
        writes.append(forget_job(op, job, token))
    elif step is Step.EXPIRE:
        writes.append(op.kube.delete_job(namespace, name))
    elif step is Step.CANCEL_RUN:
        op.job(namespace, name).cancel_sent = True
        writes.append(follow.cancel_run(op, job, token))
    elif step is Step.CANCEL:
        writes.append(cancel_before_run(op, job, body, now))
    elif step is Step.FOLLOW:
        follow.start_follower(op, job, token, status.attempts)  # which also keeps the deadline
    elif step is Step.REFUSE:
        assert refused is not None
        if (
            status.phase != JobPhase.PENDING
            or status.reason != refused.reason
            or status.message != refused.message
        ):
            writes.append(refuse(op, job, body, refused))
    elif step is Step.TIME_OUT:
        writes.append(time_out(op, job, now))
    elif step is Step.QUEUE:
        created = dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")).timestamp()
        return queue.WaitingJob(key=f"{namespace}/{name}", priority=spec.priority, enqueued_at=created)
    return None


async def stop_run(op: Operator, pod: dict, token: str, run: jobrules.WorkerRun) -> None:
    """Cancels a run no job wants (see core.jobs.stray_runs) on its worker."""
    log.info("stopping %s on %s: no job wants it", run.run_id, run.worker)
    try:
        await follow.worker_client(op, pod, token).cancel(run.run_id)
    except (WorkerError, httpx.HTTPError) as error:
        log.info("cancel of %s on %s: %s", run.run_id, run.worker, error)


async def forget_job(op: Operator, job: GenerationJob, token: str) -> None:
    meta = job.metadata
    if job.status.phase in ACTIVE:
        await follow.cancel_run(op, job, token)
    op.followers.stop((meta["namespace"], meta["name"]))
    op.jobs.pop((meta["namespace"], meta["name"]), None)


async def cancel_before_run(op: Operator, job: GenerationJob, body: dict, now: dt.datetime) -> None:
    await set_phase(
        op,
        job,
        JobPhase.CANCELLED,
        Reason.CANCELLED,
        "cancelled before it ran",
        completion_time=stamp(now),
        queue_position=None,
    )
    await op.kube.event(body, Reason.CANCELLED, "cancelled before it ran")


async def refuse(op: Operator, job: GenerationJob, body: dict, refused: jobrules.Refusal) -> None:
    await set_phase(op, job, JobPhase.PENDING, refused.reason, refused.message, queue_position=None)
    await op.kube.event(body, refused.reason, refused.message, warning=True)


async def time_out(op: Operator, job: GenerationJob, now: dt.datetime) -> None:
    await set_phase(
        op,
        job,
        JobPhase.FAILED,
        Reason.DEADLINE_EXCEEDED,
        jobrules.deadline_message(job.spec.timeout_seconds),
        completion_time=stamp(now),
        queue_position=None,
    )


def failed_models(inventories: dict[str, protocol.Inventory]) -> dict[str, set[str]]:
    """Model -> the workers where it has failed: a job for it keeps away from them while
    another worker could take it (where none could, the worker's refusal fails the job)."""
    failed: dict[str, set[str]] = {}
    for name, inventory in inventories.items():
        for model in inventory.models:
            if model.state == protocol.ModelState.FAILED:
                failed.setdefault(model.name, set()).add(name)
    return failed


def fleet_workers(
    op: Operator,
    ready: list[dict],
    inventories: dict[str, protocol.Inventory],
    running: list[tuple[dict, GenerationJob]],
) -> list[Worker]:
    """The placer's view: each worker's GPUs as reported, less reservations it has not reported yet.

    A dispatched job that its worker's inventory does not list holds its VRAM only until its
    worker has been seen running it: after that, absent from the inventory means ended, so a
    reservation never outlives its run. Until then its model counts as resident and in use on
    its GPU, and a model it loads holds its VRAM.
    """
    pending: dict[str, list[tuple[str, str | None, GenerationJob]]] = {}
    for body, job in running:
        worker = job.status.worker
        seen = op.job(job.metadata["namespace"], job.metadata["name"]).seen_on_worker
        if worker and worker.pod and not seen:
            pending.setdefault(worker.pod, []).append((job_key(body), worker.gpu, job))
    workers = []
    for pod in ready:
        name = pod["metadata"]["name"]
        inventory = inventories.get(name)
        if inventory is None or not inventory.ready:
            continue
        known = {run.job_id for run in inventory.jobs}
        # Idle models' VRAM is not free here: placement counts it through idle_models, which
        # it may evict (by the worker's own rule) to fit a job.
        free = {g.uuid: g.admittable_bytes for g in inventory.gpus}
        counts = {g.uuid: g.running_jobs for g in inventory.gpus}
        resident, idle = gpu_models(inventory)
        model_vram = {m.name: m.vram_bytes for m in inventory.models}
        for key, gpu, job in pending.get(name, []):
            if key not in known and gpu in free:
                model = job.spec.model
                free[gpu] -= jobrules.working_vram(job.spec)
                free[gpu] -= 0 if model in resident[gpu] else model_vram.get(model, 0)
                counts[gpu] += 1
                resident[gpu] |= {model}
                idle[gpu].pop(model, None)
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
                        models=frozenset(resident[g.uuid]),
                        # Only what the VRAM reported free leaves room for (a stale report).
                        idle_models=_within(idle[g.uuid], g.memory_total_bytes - max(0, free[g.uuid])),
                    )
                    for g in inventory.gpus
                ),
                on_disk=frozenset(m.name for m in inventory.models if m.on_disk),
            )
        )
    return workers


def gpu_models(inventory: protocol.Inventory) -> tuple[dict[str, set[str]], dict[str, dict[str, int]]]:
    """Per GPU of the inventory: the models resident or loading on it, and its idle ones (that
    a load may evict, by the worker's cache rule) with their VRAM. A worker that reports no
    model per GPU holds each loaded model on all its GPUs."""
    resident: dict[str, set[str]] = {g.uuid: {m.name for m in g.models} for g in inventory.gpus}
    idle = {
        g.uuid: {
            m.name: m.vram_bytes
            for m in sorted(g.models, key=_last_used)
            if CachedModel(
                m.name,
                m.vram_bytes,
                0.0,
                in_use=m.running_jobs + (m.state == protocol.ModelState.LOADING),
                pinned=m.pinned,
            ).evictable
        }
        for g in inventory.gpus
    }
    for m in inventory.models:
        if m.state == protocol.ModelState.LOADED and not m.resident_gpus:
            for models in resident.values():
                models.add(m.name)
    return resident, idle


def _last_used(model: protocol.ResidentModel) -> tuple[float, str]:
    return (model.last_used_at.timestamp() if model.last_used_at else 0.0, model.name)


def _within(idle: dict[str, int], room: int) -> tuple[tuple[str, int], ...]:
    """The idle models (least recently used first) whose VRAM fits within `room` bytes together:
    an inventory whose numbers disagree never shows more VRAM than the GPU has."""
    kept: list[tuple[str, int]] = []
    for model, size in idle.items():
        if size <= room:
            kept.append((model, size))
            room -= size
    return tuple(kept)


def size_pool(
    pool: WorkerPool,
    memory: PoolMemory,
    active: list[dict],
    ready: list[dict],
    inventories: dict[str, protocol.Inventory],
    busy: dict[str, int],
    queued: list[sizing.Job],
    running: list[tuple[dict, GenerationJob]],
    model_vram: dict[str, int],
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
                loaded_models=frozenset().union(*gpu_models(inventory)[0].values())
                if inventory
                else frozenset(),
                started_at=created.timestamp(),
            )
        )
    shape = sizing.worker_shape(
        min_memory_bytes(pool), pool.spec.gpu.count, pool.spec.gpu.max_jobs_per_gpu, views
    )
    decision = sizing.decide(
        policy,
        replicas=pool.spec.replicas,
        shape=shape,
        queued=queued,
        running=[sizing_job(job, model_vram) for _, job in running],
        workers=views,
        state=memory.sizing,
        now=time.time(),
        models=[sizing.Model(m.name, model_vram[m.name], m.min_warm) for m in pool.spec.models],
    )
    memory.sizing = decision.state
    return decision


def sizing_job(job: GenerationJob, model_vram: dict[str, int]) -> sizing.Job:
    """What one job holds on a GPU: its model's weights and its working memory."""
    return sizing.Job(
        name=job.metadata["name"],
        model=job.spec.model,
        priority=job.spec.priority,
        vram=model_vram.get(job.spec.model, 0) + jobrules.working_vram(job.spec),
    )


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
        memory = op.pool(namespace, name)
        try:
            created = await op.kube.create_pod(
                namespace, worker_pod(pool, pod_name, classes_mib, op.worker_env)
            )
        except PodRefused as refused:
            if memory.pod_refused != str(refused):  # one Event per new refusal, not one a round
                await op.kube.event(
                    body, Reason.WORKER_POD_REFUSED, f"worker {pod_name}: {refused}", warning=True
                )
            memory.pod_refused = str(refused)
            break
        memory.pod_refused = None
        if created:
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
    jobs: list[tuple[dict, GenerationJob]],
    desired: int,
    queue_depth: int,
    cluster_full: bool,
) -> None:
    clock = op.clock()
    failing = {
        pod: breaker.describe(pod, health)
        for pod, health in memory.workers.items()
        if breaker.state(health, clock, op.breaker) is not breaker.BreakerState.CLOSED
    }
    status = pool_status(
        pool,
        active,
        ready,
        inventories,
        [b for b, _ in jobs],
        desired,
        queue_depth,
        selector(pool.metadata["name"]),
        now_utc(),
        cluster_full,
        failing,
        memory.pod_refused,
        memory.model_problems,
    )
    if status != memory.last_status:
        await op.kube.patch_status(POOLS, pool.metadata["namespace"], pool.metadata["name"], status)
        memory.last_status = status
