"""Dispatching a job attempt to a worker, and following it there until it ends.

Dispatch is idempotent per job attempt: the attempt number and worker are written to the
job's status (phase Dispatched) before the worker is asked, and the worker treats a repeat
of the same (job, attempt) as the same run. After an operator restart a Dispatched job is
submitted again to the same worker (a no-op if it got there); a Running job that its
worker no longer knows was lost with the worker and goes back to the queue as a new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import httpx
from pydantic import ValidationError

import gpufleet_worker.protocol as protocol
from gpufleet import labels
from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.api.models import GenerationJob
from gpufleet.core import jobs as jobrules
from gpufleet.core.placement import Placement

from . import metrics
from .kube import JOBS
from .state import Operator
from .workers import WorkerClient, WorkerError

log = logging.getLogger("gpufleet.follow")
T = TypeVar("T")
LOST_AFTER_SECONDS = 15.0  # a worker unreachable this long has lost its runs

# Worker outcomes that another attempt cannot fix.
FINAL_REASONS = {
    protocol.Reason.INPUT_REFUSED: Reason.INVALID_INPUT,
    protocol.Reason.INPUT_FETCH_FAILED: Reason.INVALID_INPUT,
}


def _stamp(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def submit_request(job: GenerationJob) -> protocol.SubmitRequest:
    meta = job.metadata
    uri = job.spec.output.uri.rstrip("/") + f"/{meta['name']}/"
    return protocol.SubmitRequest(
        job_id=f"{meta['namespace']}/{meta['name']}",
        attempt=job.status.attempts,
        task=job.spec.task,
        model=job.spec.model,
        input=job.spec.input,
        vram_bytes=jobrules.working_vram(job.spec),
        output_uri=uri,
    )


async def dispatch(op: Operator, job: GenerationJob, pod: dict, placement: Placement, token: str) -> bool:
    """Sends the next attempt of ``job`` to ``pod``; False when the worker refused it."""
    from .reconcile import job_body_of, set_job_phase

    meta = job.metadata
    attempt = job.status.attempts + 1
    node = pod["spec"].get("nodeName")
    worker = {"pod": pod["metadata"]["name"], **({"node": node} if node else {}), "gpu": placement.gpus[0]}
    finalizers = meta.get("finalizers") or []
    if labels.FINALIZER not in finalizers:
        await op.kube.patch_metadata(
            JOBS, meta["namespace"], meta["name"], {"finalizers": [*finalizers, labels.FINALIZER]}
        )
    message = f"attempt {attempt} sent to {worker['pod']} on {node}"
    job = await set_job_phase(
        op,
        job,
        JobPhase.DISPATCHED,
        Reason.DISPATCHED,
        message,
        attempts=attempt,
        worker=worker,
        queue_position=None,
        start_time=_stamp(job.status.start_time) if job.status.start_time else _stamp(),
        progress={"percent": 0, "step": 0, "totalSteps": job.spec.input.steps},
    )
    client = WorkerClient(op.http, pod["status"]["podIP"], token, op.worker_port)
    try:
        await client.submit(submit_request(job))
    except (WorkerError, httpx.HTTPError) as error:
        metrics.DISPATCH_ERRORS.inc()
        log.info("dispatch of %s/%s to %s refused: %s", meta["namespace"], meta["name"], worker["pod"], error)
        # The attempt never ran: give its number back and queue the job again.
        await set_job_phase(
            op,
            job,
            JobPhase.QUEUED,
            Reason.QUEUED,
            f"worker {worker['pod']} refused: {error}",
            attempts=attempt - 1,
            worker=None,
        )
        return False
    await op.kube.event(job_body_of(job), Reason.DISPATCHED, message)
    start_follower(op, job, token, attempt)
    return True


def stop_follower(op: Operator, namespace: str, name: str) -> None:
    memory = op.jobs.get((namespace, name))
    if memory and memory.follower and not memory.follower.done():
        memory.follower.cancel()


def start_follower(op: Operator, job: GenerationJob, token: str, attempt: int) -> None:
    memory = op.job(job.metadata["namespace"], job.metadata["name"])
    if memory.follower and not memory.follower.done():
        if memory.follower_attempt == attempt:
            return
        memory.follower.cancel()
    memory.follower_attempt = attempt
    memory.follower = asyncio.create_task(
        follow(op, job, token, attempt), name=f"follow-{job.metadata['name']}-{attempt}"
    )


def ensure_follower(op: Operator, job: GenerationJob, token: str) -> None:
    """After a restart (or a lost task) a Dispatched/Running job gets its follower back."""
    start_follower(op, job, token, job.status.attempts)


async def cancel_run(op: Operator, job: GenerationJob, pods_by_name: dict[str, dict], token: str) -> None:
    worker = job.status.worker
    pod = pods_by_name.get(worker.pod) if worker else None
    if pod is None or not (pod.get("status") or {}).get("podIP"):
        return
    client = WorkerClient(op.http, pod["status"]["podIP"], token, op.worker_port)
    run = protocol.run_id(f"{job.metadata['namespace']}/{job.metadata['name']}", job.status.attempts)
    try:
        await client.cancel(run)
    except (WorkerError, httpx.HTTPError) as error:
        log.info("cancel of %s on %s: %s", run, pod["metadata"]["name"], error)


class DeadlineReached(Exception):
    """The attempt's job ran out of spec.timeoutSeconds while the follower waited on its worker."""


async def until(ends: dt.datetime | None, awaitable: Awaitable[T]) -> T:
    """Awaits ``awaitable`` (a wait on the worker, never a status write) no later than ``ends``."""
    if ends is None:
        return await awaitable
    try:
        async with asyncio.timeout((ends - dt.datetime.now(dt.UTC)).total_seconds()):
            return await awaitable
    except TimeoutError:
        raise DeadlineReached from None


async def follow(op: Operator, job: GenerationJob, token: str, attempt: int) -> None:
    """Streams the attempt's events from its worker into the job's status until it ends.

    The follower also keeps the job's deadline: the moment spec.timeoutSeconds runs out it
    cancels the run on its worker and fails the job, rather than at the next reconcile.
    """
    try:
        await follow_until_done(op, job, token, attempt)
    except DeadlineReached:
        await exceed_deadline(op, job, token)


async def exceed_deadline(op: Operator, job: GenerationJob, token: str) -> None:
    from .handlers import pod_of
    from .reconcile import job_body_of, set_job_phase

    meta, spec, worker = job.metadata, job.spec, job.status.worker
    pod = pod_of(meta["namespace"], worker.pod) if worker else None
    await cancel_run(op, job, {worker.pod: pod} if worker and pod else {}, token)
    message = jobrules.deadline_message(spec.timeout_seconds)
    await set_job_phase(op, job, JobPhase.FAILED, Reason.DEADLINE_EXCEEDED, message, completion_time=_stamp())
    await op.kube.event(job_body_of(job), Reason.DEADLINE_EXCEEDED, message, warning=True)
    metrics.finished(meta["namespace"], spec.pool_ref.name, "failed", float(spec.timeout_seconds))


async def follow_until_done(op: Operator, job: GenerationJob, token: str, attempt: int) -> None:
    """Raises DeadlineReached when the job's time runs out first."""
    from .handlers import pod_of

    meta = job.metadata
    namespace, name = meta["namespace"], meta["name"]
    run = protocol.run_id(f"{namespace}/{name}", attempt)
    ends = jobrules.deadline(job.status.start_time, job.spec.timeout_seconds)
    worker_pod = job.status.worker.pod if job.status.worker else None
    unreachable_since: float | None = None
    seen_running = job.status.phase == JobPhase.RUNNING
    last_event = 0
    memory = op.job(namespace, name)
    while True:
        pod = pod_of(namespace, worker_pod) if worker_pod else None
        alive = (
            pod is not None
            and not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") == "Running"
            and (pod.get("status") or {}).get("podIP")
        )
        if not alive:
            unreachable_since = unreachable_since or time.monotonic()
            if (
                pod is None
                or pod["metadata"].get("deletionTimestamp")
                or time.monotonic() - unreachable_since > LOST_AFTER_SECONDS
            ):
                await lost(op, job, attempt, f"worker {worker_pod} is gone")
                return
            await until(ends, asyncio.sleep(1))
            continue
        assert pod is not None
        client = WorkerClient(op.http, pod["status"]["podIP"], token, op.worker_port)
        try:
            current = await until(ends, client.get(run))
            if current is None:
                if seen_running:
                    await lost(
                        op,
                        job,
                        attempt,
                        f"worker {worker_pod} no longer has attempt {attempt} (it restarted)",
                    )
                    return
                # never arrived: same attempt, same worker
                await until(ends, client.submit(submit_request(job)))
            async with contextlib.aclosing(client.events(run, after=last_event)) as events:
                while (next_event := await until(ends, anext(events, None))) is not None:
                    event_id, event = next_event
                    last_event = event_id
                    unreachable_since = None
                    if event.event == protocol.EventName.PROGRESS and event.progress is not None:
                        seen_running = True
                        if time.monotonic() - memory.last_progress_write >= op.progress_interval:
                            memory.last_progress_write = time.monotonic()
                            await write_progress(op, job, event.progress)
                    elif event.event == protocol.EventName.STATE:
                        seen_running = True
                    elif event.event == protocol.EventName.RESULT and event.status is not None:
                        await finish(op, job, attempt, event.status)
                        return
        except WorkerError as error:
            if error.status == 409 and not seen_running:  # resubmission refused: never ran here
                await lost(
                    op,
                    job,
                    attempt,
                    f"worker {worker_pod} refused attempt {attempt}: {error.message}",
                    ran=False,
                )
                return
            log.info("following %s on %s: %s", run, worker_pod, error)
        except (httpx.HTTPError, ValidationError) as error:
            log.debug("following %s on %s: %s", run, worker_pod, error)
        unreachable_since = unreachable_since or time.monotonic()
        if time.monotonic() - unreachable_since > LOST_AFTER_SECONDS:
            await lost(op, job, attempt, f"worker {worker_pod} unreachable for {LOST_AFTER_SECONDS:.0f}s")
            return
        await until(ends, asyncio.sleep(1))


async def write_progress(op: Operator, job: GenerationJob, progress: protocol.Progress) -> None:
    from .reconcile import set_job_phase

    worker = job.status.worker
    await set_job_phase(
        op,
        job,
        JobPhase.RUNNING,
        Reason.RUNNING,
        f"step {progress.step}/{progress.total_steps} on {worker.pod if worker else '?'}",
        progress={"percent": progress.percent, "step": progress.step, "totalSteps": progress.total_steps},
    )


async def finish(op: Operator, job: GenerationJob, attempt: int, run: protocol.JobStatus) -> None:
    from .reconcile import job_body_of, set_job_phase

    meta = job.metadata
    body = job_body_of(job)
    if run.phase == protocol.Phase.SUCCEEDED:
        started = job.status.start_time or run.created_at
        seconds = ((run.finished_at or dt.datetime.now(dt.UTC)) - started).total_seconds()
        worker = job.status.worker
        message = f"{len(run.artifacts)} image(s) in {seconds:.0f}s on {worker.node if worker else '?'}"
        await set_job_phase(
            op,
            job,
            JobPhase.SUCCEEDED,
            Reason.COMPLETED,
            message,
            completion_time=_stamp(),
            progress={"percent": 100, "step": run.progress.step, "totalSteps": run.progress.total_steps},
            artifacts=[a.model_dump(mode="json", by_alias=True) for a in run.artifacts],
        )
        await op.kube.event(body, Reason.COMPLETED, message)
        metrics.finished(meta["namespace"], job.spec.pool_ref.name, "succeeded", seconds)
        return
    if run.phase == protocol.Phase.CANCELLED:
        await set_job_phase(
            op, job, JobPhase.CANCELLED, Reason.CANCELLED, "stopped on its worker", completion_time=_stamp()
        )
        await op.kube.event(body, Reason.CANCELLED, "stopped on its worker")
        metrics.finished(meta["namespace"], job.spec.pool_ref.name, "cancelled", 0)
        return
    reason = FINAL_REASONS.get(run.reason) if run.reason else None
    if reason is None:
        reason = (
            Reason.OUT_OF_MEMORY
            if run.reason == protocol.Reason.OUT_OF_MEMORY
            else Reason.UPLOAD_FAILED
            if run.reason == protocol.Reason.UPLOAD_FAILED
            else Reason.WORKER_ERROR
        )
        await retry_or_fail(op, job, attempt, reason, f"attempt {attempt} failed: {run.message}", ran=True)
        return
    await set_job_phase(op, job, JobPhase.FAILED, reason, run.message, completion_time=_stamp())
    await op.kube.event(body, reason, run.message, warning=True)
    metrics.finished(meta["namespace"], job.spec.pool_ref.name, "failed", 0)


async def lost(op: Operator, job: GenerationJob, attempt: int, why: str, ran: bool = True) -> None:
    memory = op.job(job.metadata["namespace"], job.metadata["name"])
    if job.status.worker is not None:
        memory.avoid.add(job.status.worker.pod)
    await retry_or_fail(op, job, attempt, Reason.WORKER_LOST, why, ran=ran)


async def retry_or_fail(
    op: Operator, job: GenerationJob, attempt: int, reason: Reason, why: str, ran: bool
) -> None:
    from .reconcile import job_body_of, set_job_phase

    meta, spec = job.metadata, job.spec
    body = job_body_of(job)
    if not ran:  # give the attempt number back: it never ran
        await set_job_phase(op, job, JobPhase.QUEUED, Reason.QUEUED, why, attempts=attempt - 1, worker=None)
        return
    delay = jobrules.retry_delay(attempt, spec.retry.max_attempts, spec.retry.backoff_seconds)
    if delay is None:
        message = f"{why}; all {spec.retry.max_attempts} attempts used"
        await set_job_phase(
            op, job, JobPhase.FAILED, Reason.BACKOFF_LIMIT_EXCEEDED, message, completion_time=_stamp()
        )
        await op.kube.event(body, Reason.BACKOFF_LIMIT_EXCEEDED, message, warning=True)
        metrics.finished(meta["namespace"], spec.pool_ref.name, "failed", 0)
        return
    op.job(meta["namespace"], meta["name"]).not_before = time.monotonic() + delay
    message = f"{why}; attempt {attempt + 1} of {spec.retry.max_attempts} in {delay:.0f}s"
    await set_job_phase(op, job, JobPhase.QUEUED, Reason.RETRYING, message, worker=None)
    await op.kube.event(body, Reason.RETRYING, message, warning=True)
