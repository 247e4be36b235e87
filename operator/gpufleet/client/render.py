"""What the CLI prints, as plain functions of jobs, pools and the time: tables, progress
bars, the final line of a job, ``describe`` and ``top``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from gpufleet.api.conditions import TERMINAL_PHASES, JobPhase
from gpufleet.api.models import GenerationJob, GpuStatus, WorkerPool, WorkerStatus
from gpufleet.api.quantity import parse_quantity
from gpufleet.client.jobs import Event, name_of, stalled

BAR_WIDTH = 24
VRAM_BAR_WIDTH = 30
GIB = 1024**3


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as kubectl aligns them: three spaces apart, no trailing blanks."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def age(since: object, now: datetime) -> str:
    """kubectl's short ages: 42s, 5m, 3h, 2d."""
    start = parse_time(since)
    if start is None:
        return "<unknown>"
    seconds = max(0, int((now - start).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def phase_text(job: GenerationJob) -> str:
    phase = job.status.phase.value if job.status.phase else "New"
    # Only a waiting job needs the mark: a failed one is always Stalled.
    return f"{phase} (Stalled)" if stalled(job) and job.status.phase not in TERMINAL_PHASES else phase


def job_rows(jobs: Sequence[GenerationJob], now: datetime, all_namespaces: bool, wide: bool) -> str:
    headers = ["NAME", "PHASE", "POOL", "PROGRESS", "REASON", "QUEUE", "WORKER", "AGE"]
    if wide:
        headers += ["GPU", "MODEL", "ARTIFACTS"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for job in jobs:
        status = job.status
        row = [
            name_of(job),
            phase_text(job),
            job.spec.pool_ref.name,
            f"{status.progress.percent}%" if status.progress else "",
            status.reason or "",
            "" if status.queue_position is None else str(status.queue_position),
            status.worker.pod if status.worker else "",
            age(job.metadata.get("creationTimestamp"), now),
        ]
        if wide:
            row += [
                (status.worker.gpu or "") if status.worker else "",
                job.spec.model,
                str(len(status.artifacts)),
            ]
        if all_namespaces:
            row.insert(0, str(job.metadata.get("namespace", "")))
        rows.append(row)
    return table(headers, rows)


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(job: GenerationJob) -> str:
    """One job's live line: name, phase, bar, percent, steps, queue place or worker and GPU."""
    status = job.status
    percent = status.progress.percent if status.progress else 0
    if status.phase is JobPhase.SUCCEEDED:
        percent = 100
    parts = [f"gj/{name_of(job)}", phase_text(job).ljust(10), bar(percent / 100), f"{percent:3d}%"]
    if status.progress and status.progress.total_steps:
        parts.append(f"step {status.progress.step}/{status.progress.total_steps}")
    if status.phase is JobPhase.QUEUED and status.queue_position is not None:
        parts.append(f"queue position {status.queue_position}")
    if status.worker:
        where = f"on {status.worker.pod}"
        if status.worker.gpu:
            where += f" gpu {status.worker.gpu}"
        parts.append(where)
    if status.reason and status.reason != phase_text(job) and status.phase is not JobPhase.SUCCEEDED:
        parts.append(f"({status.reason})")
    return "  ".join(parts)


def outcome_line(job: GenerationJob) -> str:
    """What became of a finished job: its artifacts, or why it did not succeed."""
    status = job.status
    name = f"gj/{name_of(job)}"
    if status.phase is JobPhase.SUCCEEDED:
        took = ""
        start, end = parse_time(status.start_time), parse_time(status.completion_time)
        if start and end:
            took = f" in {max(0, int((end - start).total_seconds()))}s"
        urls = " ".join(a.url for a in status.artifacts)
        count = len(status.artifacts)
        return f"{name} Succeeded{took}: {count} artifact{'s' if count != 1 else ''}: {urls}"
    phase = phase_text(job)
    return f"{name} {phase}: {status.reason or 'no reason given'}: {status.message or ''}".rstrip(": ")


def describe(job: GenerationJob, events: Sequence[Event], now: datetime) -> str:
    status = job.status
    created = job.metadata.get("creationTimestamp", "")
    fields = [
        ("Name", name_of(job)),
        ("Namespace", str(job.metadata.get("namespace", ""))),
        (
            "Created",
            f"{created} ({age(created, now)} ago)",
        ),
        ("Pool", job.spec.pool_ref.name),
        ("Task", job.spec.task.value),
        ("Model", job.spec.model),
        ("Priority", str(job.spec.priority)),
        ("Output", job.spec.output.uri),
        ("Phase", phase_text(job)),
        ("Reason", status.reason or ""),
        ("Message", status.message or ""),
        ("Queue position", "" if status.queue_position is None else str(status.queue_position)),
        ("Attempts", f"{status.attempts} of {job.spec.retry.max_attempts}"),
        (
            "Worker",
            f"{status.worker.pod} node {status.worker.node or '?'} gpu {status.worker.gpu or '?'}"
            if status.worker
            else "",
        ),
        (
            "Progress",
            f"{status.progress.percent}% (step {status.progress.step}/{status.progress.total_steps})"
            if status.progress
            else "",
        ),
        ("Started", str(status.start_time or "")),
        ("Completed", str(status.completion_time or "")),
        ("Cancel", "requested" if job.spec.cancel else "no"),
    ]
    width = max(len(k) for k, _ in fields) + 2
    out = [f"{(k + ':').ljust(width)}{v}" for k, v in fields]
    out.append("Conditions:")
    if status.conditions:
        rows = [
            [c.type, c.status.value, c.reason, age(c.last_transition_time, now), c.message]
            for c in status.conditions
        ]
        out += [
            "  " + line for line in table(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], rows).splitlines()
        ]
    else:
        out.append("  <none>")
    out.append("Artifacts:")
    if status.artifacts:
        rows = [[a.name, a.media_type, str(a.size_bytes), a.sha256[:16], a.url] for a in status.artifacts]
        out += ["  " + line for line in table(["NAME", "TYPE", "BYTES", "SHA256", "URL"], rows).splitlines()]
    else:
        out.append("  <none>")
    out.append("Events:")
    if events:
        rows = [[e.type, e.reason, str(e.count), e.message] for e in events]
        out += ["  " + line for line in table(["TYPE", "REASON", "COUNT", "MESSAGE"], rows).splitlines()]
    else:
        out.append("  <none>")
    return "\n".join(out)


def _bytes(quantity: str | int | None) -> int:
    return 0 if quantity is None else parse_quantity(quantity).value()


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}Gi"


def vram_bar(gpu: GpuStatus, models_bytes: int) -> str:
    """``[##==....]`` jobs (#), loaded models (=), free (.) of one GPU, with the figures.

    ``models_bytes`` is the estimate for a status that does not split the GPU's reserved
    memory into models and jobs (written before the operator did)."""
    total = _bytes(gpu.memory_total)
    if total <= 0:
        return "[" + "?" * VRAM_BAR_WIDTH + "]"
    if gpu.memory_models is not None and gpu.memory_jobs is not None:
        jobs = min(_bytes(gpu.memory_jobs), total)
        models = min(_bytes(gpu.memory_models), total - jobs)
    else:
        jobs = min(_bytes(gpu.memory_reserved), total)
        models = min(models_bytes, total - jobs)
    free = total - jobs - models
    cells_jobs = round(jobs / total * VRAM_BAR_WIDTH)
    cells_models = min(VRAM_BAR_WIDTH - cells_jobs, round(models / total * VRAM_BAR_WIDTH))
    cells = "#" * cells_jobs + "=" * cells_models
    return (
        f"[{cells.ljust(VRAM_BAR_WIDTH, '.')}] jobs {_gib(jobs)} models {_gib(models)} "
        f"free {_gib(free)} of {_gib(total)}"
    )


def _models_per_gpu(pool: WorkerPool, worker: WorkerStatus) -> int:
    sizes = {m.name: _bytes(m.vram) for m in pool.spec.models}
    loaded = sum(sizes.get(name, 0) for name in worker.loaded_models)
    return loaded // max(1, len(worker.gpus))


def top(pools: Sequence[WorkerPool], jobs: Sequence[GenerationJob], now: datetime) -> str:
    """The fleet at a glance: per pool its size and queue, per worker its GPUs' VRAM."""
    if not pools:
        return "no WorkerPools here"
    out = [f"gpufleet top  {now:%Y-%m-%d %H:%M:%S}Z   VRAM: # jobs  = models  . free"]
    for pool in pools:
        status = pool.status
        pool_name = str(pool.metadata.get("name", ""))
        queued = sorted(
            (j for j in jobs if j.spec.pool_ref.name == pool_name and j.status.phase is JobPhase.QUEUED),
            key=lambda j: j.status.queue_position if j.status.queue_position is not None else 1 << 30,
        )
        ready_reason = next(
            (c.reason for c in status.conditions if c.type == "Ready" and c.status.value != "True"), ""
        )
        out.append("")
        desired = status.desired_replicas if status.desired_replicas is not None else pool.spec.replicas
        out.append(
            f"pool {pool_name}  workers {status.ready_replicas}/{desired} ready  "
            f"queue {status.queue_depth}  running {status.running_jobs}"
            + (f"  not ready: {ready_reason}" if ready_reason else "")
        )
        if queued:
            out.append(
                "  queue: "
                + " ".join(f"{j.status.queue_position}:{name_of(j)}" for j in queued[:10])
                + (f" (+{len(queued) - 10})" if len(queued) > 10 else "")
            )
        for worker in status.workers:
            state = "ready" if worker.ready else "not ready"
            out.append(
                f"  {worker.pod}  {state}  node {worker.node or '?'}  jobs {len(worker.jobs)}  "
                f"models {','.join(worker.loaded_models) or '-'}"
            )
            models_bytes = _models_per_gpu(pool, worker)
            for gpu in worker.gpus:
                out.append(f"    {gpu.product[:24]:<24} {vram_bar(gpu, models_bytes)}")
    return "\n".join(out)
