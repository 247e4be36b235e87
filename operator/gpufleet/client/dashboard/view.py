"""What the dashboard page shows, as plain data computed from pools, jobs and the time.

The page only lays this out; every figure, order and reason is decided here, so it is
tested without a browser or a cluster. The result is JSON: numbers in bytes and seconds,
texts as they appear.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from gpufleet.api.conditions import TERMINAL_PHASES, ConditionStatus, ConditionType, JobPhase, find_condition
from gpufleet.api.models import GenerationJob, GpuStatus, WorkerPool, WorkerStatus
from gpufleet.api.quantity import parse_quantity
from gpufleet.client.jobs import name_of, stalled
from gpufleet.client.render import parse_time

HISTORY_MINUTES = 60
MAX_JOBS_SHOWN = 200  # the newest finished ones beyond this are left out (active jobs always show)
ACTIVE_PHASES = frozenset({JobPhase.DISPATCHED, JobPhase.RUNNING})


@dataclass(frozen=True)
class Fleet:
    """What the dashboard last read from the API server, and what went wrong reading it."""

    pools: Sequence[WorkerPool] = ()
    jobs: Sequence[GenerationJob] = ()
    scope: str = ""  # "namespace studio" or "all namespaces"
    problems: dict[str, str] = field(default_factory=dict)  # resource -> why it cannot be read
    connected: bool = True


def _bytes(quantity: str | int | None) -> int | None:
    return None if quantity is None else parse_quantity(quantity).value()


def _seconds(start: object, end: object) -> float | None:
    begin, finish = parse_time(start), parse_time(end)
    if begin is None or finish is None:
        return None
    return max(0.0, (finish - begin).total_seconds())


def duration_text(seconds: float | None) -> str:
    """4s, 2m05s, 1h02m."""
    if seconds is None:
        return ""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def bytes_text(n: int) -> str:
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole > 0 else 0.0


def vram(gpu: GpuStatus, model_sizes: dict[str, int], loaded_models: Sequence[str]) -> dict[str, Any]:
    """One GPU's bar: a segment per resident model, one for the jobs' reservations, and free.

    The operator reports what models hold and jobs reserved; a status written before it did
    so gives only the total reserved, and the models are then the pool's loaded models at
    their declared size, the jobs the rest.
    """
    total = _bytes(gpu.memory_total) or 0
    reserved = min(_bytes(gpu.memory_reserved) or 0, total)
    names = list(gpu.models) if gpu.memory_models is not None else list(loaded_models)
    if gpu.memory_models is not None and gpu.memory_jobs is not None:
        models_bytes = min(_bytes(gpu.memory_models) or 0, total)
        jobs_bytes = min(_bytes(gpu.memory_jobs) or 0, total - models_bytes)
    else:
        models_bytes = min(sum(model_sizes.get(n, 0) for n in names), reserved)
        jobs_bytes = reserved - models_bytes
    free = max(0, total - models_bytes - jobs_bytes)
    segments = []
    left = models_bytes
    for name in names:
        size = min(model_sizes.get(name, 0), left)
        if size > 0:
            segments.append({"kind": "model", "name": name, "bytes": size, "percent": _percent(size, total)})
            left -= size
    if left > 0:  # models of unknown size, or larger than declared
        segments.append({"kind": "model", "name": "models", "bytes": left, "percent": _percent(left, total)})
    segments.append(
        {"kind": "jobs", "name": "jobs", "bytes": jobs_bytes, "percent": _percent(jobs_bytes, total)}
    )
    segments.append({"kind": "free", "name": "free", "bytes": free, "percent": _percent(free, total)})
    return {
        "id": gpu.id,
        "product": gpu.product,
        "totalBytes": total,
        "modelsBytes": models_bytes,
        "jobsBytes": jobs_bytes,
        "freeBytes": free,
        "models": names,
        "segments": segments,
        "label": (
            f"models {bytes_text(models_bytes)} · jobs {bytes_text(jobs_bytes)} · "
            f"free {bytes_text(free)} of {bytes_text(total)}"
        ),
    }


def _conditions(pool: WorkerPool, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "type": c.type,
            "status": c.status.value,
            "reason": c.reason,
            "message": c.message,
            "since": duration_text(_seconds(c.last_transition_time, now)),
        }
        for c in pool.status.conditions
    ]


def pool_health(pool: WorkerPool) -> str:
    """ok (Ready), error (Stalled), or busy (anything in between)."""
    conditions = pool.status.conditions
    if (c := find_condition(conditions, ConditionType.STALLED)) and c.status is ConditionStatus.TRUE:
        return "error"
    if (c := find_condition(conditions, ConditionType.READY)) and c.status is ConditionStatus.TRUE:
        return "ok"
    return "busy"


def _worker(worker: WorkerStatus, model_sizes: dict[str, int]) -> dict[str, Any]:
    return {
        "pod": worker.pod,
        "node": worker.node or "",
        "ready": worker.ready,
        "jobs": list(worker.jobs),
        "gpus": [vram(gpu, model_sizes, worker.loaded_models) for gpu in worker.gpus],
    }


def pools_view(pools: Iterable[WorkerPool], now: datetime) -> list[dict[str, Any]]:
    shown = []
    for pool in sorted(pools, key=lambda p: (p.metadata.get("namespace", ""), p.metadata.get("name", ""))):
        status = pool.status
        sizes = {m.name: _bytes(m.vram) or 0 for m in pool.spec.models}
        ready = find_condition(status.conditions, ConditionType.READY)
        shown.append(
            {
                "namespace": str(pool.metadata.get("namespace", "")),
                "name": str(pool.metadata.get("name", "")),
                "ready": status.ready_replicas,
                "desired": status.desired_replicas
                if status.desired_replicas is not None
                else pool.spec.replicas,
                "replicas": status.replicas,
                "queue": status.queue_depth,
                "running": status.running_jobs,
                "health": pool_health(pool),
                "summary": (ready.message if ready else "") or "no status from the operator yet",
                "conditions": _conditions(pool, now),
                "workers": [_worker(w, sizes) for w in status.workers],
            }
        )
    return shown


def models_view(pools: Iterable[WorkerPool]) -> list[dict[str, Any]]:
    """Each served model and the GPUs it is resident on."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for pool in pools:
        namespace, pool_name = str(pool.metadata.get("namespace", "")), str(pool.metadata.get("name", ""))
        for model in pool.spec.models:
            found[(namespace, pool_name, model.name)] = {
                "namespace": namespace,
                "pool": pool_name,
                "name": model.name,
                "vramBytes": _bytes(model.vram) or 0,
                "where": [],
            }
        for worker in pool.status.workers:
            for index, gpu in enumerate(worker.gpus):
                names = gpu.models if gpu.memory_models is not None else worker.loaded_models
                for name in names:
                    entry = found.setdefault(
                        (namespace, pool_name, name),
                        {
                            "namespace": namespace,
                            "pool": pool_name,
                            "name": name,
                            "vramBytes": 0,
                            "where": [],
                        },
                    )
                    entry["where"].append(f"{worker.pod} gpu {index}")
    return [found[key] for key in sorted(found)]


def _created(job: GenerationJob) -> datetime | None:
    return parse_time(job.metadata.get("creationTimestamp"))


def waiting_reason(job: GenerationJob) -> tuple[str, str, bool]:
    """(reason, message, blocked): why a job that has not started is where it is; blocked when
    it cannot run until someone changes something."""
    if stalled(job):
        condition = find_condition(job.status.conditions, ConditionType.STALLED)
        assert condition is not None
        return condition.reason, condition.message or job.status.message or "", True
    status = job.status
    if status.phase is JobPhase.QUEUED:
        where = f"position {status.queue_position} in pool {job.spec.pool_ref.name}"
        return status.reason or "Queued", status.message or where, False
    return status.reason or "Pending", status.message or "not yet admitted to its pool's queue", False


def queue_view(jobs: Iterable[GenerationJob], now: datetime) -> list[dict[str, Any]]:
    """Jobs not yet started: per pool in queue order, the ones that cannot run with why."""
    waiting = [j for j in jobs if j.status.phase in (None, JobPhase.PENDING, JobPhase.QUEUED)]

    def order(job: GenerationJob) -> tuple:
        position = job.status.queue_position
        return (
            str(job.metadata.get("namespace", "")),
            job.spec.pool_ref.name,
            position is None,
            position if position is not None else 0,
            _created(job) or now,
            name_of(job),
        )

    rows = []
    for job in sorted(waiting, key=order):
        reason, message, blocked = waiting_reason(job)
        rows.append(
            {
                "namespace": str(job.metadata.get("namespace", "")),
                "name": name_of(job),
                "pool": job.spec.pool_ref.name,
                "position": job.status.queue_position,
                "phase": (job.status.phase or JobPhase.PENDING).value,
                "priority": job.spec.priority,
                "waiting": duration_text(_seconds(_created(job), now)),
                "reason": reason,
                "message": message,
                "blocked": blocked,
            }
        )
    return rows


def artifact_kind(media_type: str) -> str:
    """How the page previews an artifact: image (a thumbnail; SVG too, inside <img> where its
    scripts never run), text, or file (a link)."""
    if media_type.startswith("image/"):
        return "image"
    if media_type.startswith("text/") or media_type == "application/json":
        return "text"
    return "file"


def artifact_href(job: GenerationJob, name: str) -> str:
    """The dashboard's own path that redirects to a presigned URL of the artifact."""
    parts = (str(job.metadata.get("namespace", "")), name_of(job), name)
    return "/artifacts/" + "/".join(quote(p, safe="") for p in parts)


def job_view(job: GenerationJob, now: datetime) -> dict[str, Any]:
    status = job.status
    phase = status.phase or JobPhase.PENDING
    progress = status.progress
    percent = 100 if phase is JobPhase.SUCCEEDED else (progress.percent if progress else 0)
    started = parse_time(status.start_time)
    ended = parse_time(status.completion_time)
    running_for = _seconds(started, ended or now) if started else None
    reason = status.reason or ""
    if stalled(job) and phase not in TERMINAL_PHASES:
        reason = waiting_reason(job)[0]
    return {
        "namespace": str(job.metadata.get("namespace", "")),
        "name": name_of(job),
        "pool": job.spec.pool_ref.name,
        "task": job.spec.task.value,
        "model": job.spec.model,
        "phase": phase.value,
        "finished": phase in TERMINAL_PHASES,
        "stalled": stalled(job),
        "percent": percent,
        "step": progress.step if progress else 0,
        "totalSteps": progress.total_steps if progress else 0,
        "age": duration_text(_seconds(_created(job), now)),
        "waited": duration_text(_seconds(_created(job), started)) if started else "",
        "ran": duration_text(running_for),
        "worker": status.worker.pod if status.worker else "",
        "gpu": (status.worker.gpu or "") if status.worker else "",
        "reason": reason,
        "message": status.message or "",
        "result": status.result.text if status.result and status.result.text else "",
        "artifacts": [
            {
                "name": a.name,
                "mediaType": a.media_type,
                "sizeBytes": a.size_bytes,
                "kind": artifact_kind(a.media_type),
                "href": artifact_href(job, a.name),
            }
            for a in status.artifacts
        ],
    }


def jobs_view(jobs: Iterable[GenerationJob], now: datetime) -> list[dict[str, Any]]:
    """Running jobs first, then the rest newest first, bounded."""

    def order(job: GenerationJob) -> tuple:
        last = parse_time(job.status.completion_time) or _created(job) or now
        return (job.status.phase not in ACTIVE_PHASES, -last.timestamp(), name_of(job))

    ordered = sorted(jobs, key=order)
    active = [j for j in ordered if j.status.phase in ACTIVE_PHASES]
    rest = [j for j in ordered if j.status.phase not in ACTIVE_PHASES]
    shown = active + rest[: max(0, MAX_JOBS_SHOWN - len(active))]
    return [job_view(job, now) for job in shown]


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def history_view(jobs: Iterable[GenerationJob], now: datetime) -> dict[str, Any]:
    """The last hour per minute: jobs finished (succeeded / not) and the mean wait of the jobs
    that started, from the jobs' timestamps (jobs already deleted are not counted)."""
    start = now - timedelta(minutes=HISTORY_MINUTES)
    succeeded = [0] * HISTORY_MINUTES
    unsuccessful = [0] * HISTORY_MINUTES
    waits: list[list[float]] = [[] for _ in range(HISTORY_MINUTES)]

    def minute(at: datetime) -> int | None:
        if not start < at <= now:
            return None
        return min(HISTORY_MINUTES - 1, int((at - start).total_seconds() // 60))

    for job in jobs:
        ended = parse_time(job.status.completion_time)
        if ended is not None and job.status.phase in TERMINAL_PHASES and (m := minute(ended)) is not None:
            (succeeded if job.status.phase is JobPhase.SUCCEEDED else unsuccessful)[m] += 1
        began, created = parse_time(job.status.start_time), _created(job)
        if began is not None and created is not None and (m := minute(began)) is not None:
            waits[m].append(max(0.0, (began - created).total_seconds()))
    all_waits = [w for bucket in waits for w in bucket]
    finished = sum(succeeded) + sum(unsuccessful)
    return {
        "minutes": HISTORY_MINUTES,
        "succeeded": succeeded,
        "unsuccessful": unsuccessful,
        "meanWaitSeconds": [round(sum(b) / len(b), 2) if b else None for b in waits],
        "finished": finished,
        "jobsPerMinute": round(finished / HISTORY_MINUTES, 2),
        "started": len(all_waits),
        "waitP50": duration_text(_quantile(all_waits, 0.5)),
        "waitP95": duration_text(_quantile(all_waits, 0.95)),
    }


def page(fleet: Fleet, now: datetime) -> dict[str, Any]:
    """Everything the page shows."""
    return {
        "now": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scope": fleet.scope,
        "connected": fleet.connected,
        "problems": [{"resource": r, "message": m} for r, m in sorted(fleet.problems.items())],
        "pools": pools_view(fleet.pools, now),
        "models": models_view(fleet.pools),
        "queue": queue_view(fleet.jobs, now),
        "jobs": jobs_view(fleet.jobs, now),
        "history": history_view(fleet.jobs, now),
    }
