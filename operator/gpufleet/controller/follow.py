"""Dispatching a job attempt to a worker, and following it there until it ends.

Dispatch is idempotent per job attempt: the attempt number and worker are written to the
job's status (phase Dispatched) before the worker is asked, and the worker treats a repeat
of the same (job, attempt) as the same run. After an operator restart a Dispatched job is
submitted again to the same worker process (a no-op if it got there); a job that its worker
may have had and no longer knows was lost with the worker and goes back to the queue as a
new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

import gpufleet_worker.protocol as protocol
from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.api.inputs import progress_total
from gpufleet.api.models import GenerationJob
from gpufleet.core import breaker
from gpufleet.core import jobs as jobrules
from gpufleet.core.placement import Placement
from gpufleet.core.training import bounded_artifacts, training_status

from . import metrics
from .jobstatus import body_of, now_utc, set_outcome, set_phase, stamp, still_current
from .state import Operator
from .workers import WorkerClient, WorkerError

log = logging.getLogger("gpufleet.follow")
T = TypeVar("T")
LOST_AFTER_SECONDS = 15.0  # a worker unreachable this long has lost its runs

# Worker outcomes that another attempt cannot fix.
FINAL_REASONS = {
    protocol.Reason.INPUT_REFUSED: Reason.INVALID_INPUT,
    protocol.Reason.INPUT_FETCH_FAILED: Reason.INVALID_INPUT,
    # the same input and seed would make the same unusable artifact again
    protocol.Reason.INVALID_OUTPUT: Reason.WORKER_ERROR,
    # the model's source or load failed: the worker refuses it from now on
    protocol.Reason.MODEL_FAILED: Reason.MODEL_FAILED,
    # the model turned out, once loaded, not to do the task
    protocol.Reason.UNSUPPORTED_TASK: Reason.TASK_NOT_SERVED,
    # the same data, seed and learning rate would diverge again
    protocol.Reason.TRAINING_DIVERGED: Reason.TRAINING_DIVERGED,
}


# Worker refusals of a dispatch that another try cannot fix: the job fails with the worker's word.
FINAL_REFUSALS = {
    protocol.Reason.UNKNOWN_MODEL: Reason.MODEL_NOT_SERVED,
    protocol.Reason.MODEL_FAILED: Reason.MODEL_FAILED,
    protocol.Reason.UNSUPPORTED_TASK: Reason.TASK_NOT_SERVED,
    protocol.Reason.UNSUPPORTED_OUTPUT: Reason.INVALID_INPUT,
    protocol.Reason.INVALID_REQUEST: Reason.INVALID_INPUT,
}
REFUSED_BACKOFF_SECONDS = (1.0, 60.0)  # first and longest wait after a refused dispatch


def submit_request(job: GenerationJob) -> protocol.SubmitRequest:
    meta = job.metadata
    uri = job.spec.output.uri.rstrip("/") + f"/{meta['name']}/"
    return protocol.SubmitRequest(
        job_id=f"{meta['namespace']}/{meta['name']}",
        attempt=job.status.attempts,
        job_uid=meta.get("uid"),
        task=job.spec.task,
        model=job.spec.model,
        input=job.spec.input,
        vram_bytes=jobrules.working_vram(job.spec),
        output_uri=uri,
    )


def worker_client(op: Operator, pod: dict, token: str) -> WorkerClient:
    return WorkerClient(op.http, pod["status"]["podIP"], token, op.worker_port)


async def dispatch(
    op: Operator, job: GenerationJob, pod: dict, placement: Placement, token: str, instance: str | None
) -> bool:
    """Sends the next attempt of ``job`` to ``pod`` (worker process ``instance``, as its
    inventory named it this round); False when it did not start there.

    The Dispatched status is written before the worker is asked (the attempt is on record
    before it can run); the Event goes out in the background.
    """
    meta = job.metadata
    namespace, name = meta["namespace"], meta["name"]
    memory = op.job(namespace, name)
    attempt = job.status.attempts + 1
    node = pod["spec"].get("nodeName")
    pod_name = pod["metadata"]["name"]
    worker = {
        "pod": pod_name,
        **({"node": node} if node else {}),
        "gpu": placement.gpus[0],
        **({"instance": instance} if instance else {}),
    }
    message = f"attempt {attempt} sent to {pod_name} on {node}"
    memory.finished_attempt = attempt - 1
    memory.seen_on_worker = False
    job = await set_phase(
        op,
        job,
        JobPhase.DISPATCHED,
        Reason.DISPATCHED,
        message,
        attempts=attempt,
        worker=worker,
        queue_position=None,
        start_time=stamp(job.status.start_time) if job.status.start_time else stamp(),
        progress={
            "percent": 0,
            "step": 0,
            "totalSteps": progress_total(job.spec.task, job.spec.input),
            "text": None,
        },
        model_load=None,
    )
    if job.status.attempts != attempt:  # deleted meanwhile: nothing to send
        return False
    try:
        await worker_client(op, pod, token).submit(submit_request(job))
    except (WorkerError, httpx.HTTPError) as error:
        await refused(op, job, attempt, pod_name, error)
        return False
    memory.refusals = 0
    metrics.dispatched(job, now_utc())
    op.spawn(op.kube.event(body_of(job), Reason.DISPATCHED, message), f"event-{name}")
    start_follower(op, job, token, attempt, admitted=True)
    return True


async def refused(
    op: Operator, job: GenerationJob, attempt: int, pod: str, error: WorkerError | httpx.HTTPError
) -> None:
    """A worker did not take an attempt: fail the job when no worker of the pool ever will,
    else queue it again after a growing wait."""
    metrics.DISPATCH_ERRORS.inc()
    namespace, name = job.metadata["namespace"], job.metadata["name"]
    log.info("dispatch of %s/%s to %s refused: %s", namespace, name, pod, error)
    final = FINAL_REFUSALS.get(error.reason) if isinstance(error, WorkerError) else None  # type: ignore[call-overload]
    if final is not None:
        message = f"worker {pod} refused the job: {error}"
        if await set_outcome(
            op, job, attempt, JobPhase.FAILED, final, message, completion_time=stamp(), worker=None
        ):
            op.spawn(op.kube.event(body_of(job), final, message, warning=True), f"event-{name}")
            metrics.finished(job, "failed", now_utc())
        return
    memory = op.job(namespace, name)
    memory.refusals += 1
    first, longest = REFUSED_BACKOFF_SECONDS
    delay = min(longest, first * 2 ** (memory.refusals - 1))
    memory.not_before = op.clock() + delay
    if not isinstance(error, WorkerError):  # unreachable: count it against the worker
        record_run(op, job, pod, succeeded=False, cause=f"dispatch failed: {error}")
    # A refusal, or a connection that never opened, cannot have started the attempt: its number
    # is given back. After a request that may have reached the worker (no answer, a dropped
    # connection) the worker may be running it: the number is used up, so it never runs twice.
    delivered = not isinstance(error, WorkerError | httpx.ConnectError | httpx.ConnectTimeout)
    what = "got no answer for" if delivered else "refused"
    await set_outcome(
        op,
        job,
        attempt,
        JobPhase.QUEUED,
        Reason.QUEUED,
        f"worker {pod} {what} attempt {attempt}: {error}; trying again in {delay:.0f}s",
        attempts=attempt if delivered else attempt - 1,
        worker=None,
    )


def record_run(op: Operator, job: GenerationJob, pod: str, succeeded: bool, cause: str = "") -> None:
    """Feeds a run's outcome to its worker's circuit breaker."""
    namespace, pool = job.metadata["namespace"], job.spec.pool_ref.name
    memory = op.pool(namespace, pool)
    health = memory.workers.get(pod, breaker.WorkerHealth())
    memory.workers[pod] = after = breaker.record(health, succeeded, cause, op.clock(), op.breaker)
    body = op.cache.pools.get((namespace, pool))
    if health.opened_at is None and after.opened_at is not None and body is not None:
        message = f"{breaker.describe(pod, after)}: it gets no new jobs"
        op.spawn(op.kube.event(body, Reason.WORKERS_FAILING, message, warning=True), "event")
    op.cache.wake(namespace, pool)


def start_follower(
    op: Operator, job: GenerationJob, token: str, attempt: int, admitted: bool = False
) -> None:
    """Follows ``attempt`` of ``job`` unless it is being followed or has already ended.
    ``admitted``: its worker is known to have taken it (this replica's submit succeeded)."""
    key = (job.metadata["namespace"], job.metadata["name"])
    if op.job(*key).finished_attempt >= attempt:
        return
    op.followers.start(key, attempt, lambda: follow(op, job, token, attempt, admitted))


async def cancel_run(op: Operator, job: GenerationJob, token: str) -> None:
    worker = job.status.worker
    pod = op.cache.pod(job.metadata["namespace"], worker.pod) if worker else None
    if pod is None or not (pod.get("status") or {}).get("podIP"):
        return
    run = protocol.run_id(f"{job.metadata['namespace']}/{job.metadata['name']}", job.status.attempts)
    try:
        await worker_client(op, pod, token).cancel(run)
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


async def follow(op: Operator, job: GenerationJob, token: str, attempt: int, admitted: bool = False) -> None:
    """Streams the attempt's events from its worker into the job's status until it ends.

    The follower also keeps the job's deadline: the moment spec.timeoutSeconds runs out it
    cancels the run on its worker and fails the job, rather than at the next reconcile.
    """
    try:
        await follow_until_done(op, job, token, attempt, admitted)
    except DeadlineReached:
        await exceed_deadline(op, job, token, attempt)


async def exceed_deadline(op: Operator, job: GenerationJob, token: str, attempt: int) -> None:
    meta, spec = job.metadata, job.spec
    if still_current(op, job, attempt) is None:
        return
    await cancel_run(op, job, token)
    metrics.forget_training(meta["namespace"], meta["name"])
    message = jobrules.deadline_message(spec.timeout_seconds)
    if await set_outcome(
        op, job, attempt, JobPhase.FAILED, Reason.DEADLINE_EXCEEDED, message, completion_time=stamp()
    ):
        op.spawn(op.kube.event(body_of(job), Reason.DEADLINE_EXCEEDED, message, warning=True), "event")
        metrics.finished(job, "failed", now_utc())


def pod_alive(pod: dict | None) -> bool:
    return (
        pod is not None
        and not pod["metadata"].get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase") == "Running"
        and bool((pod.get("status") or {}).get("podIP"))
    )


async def follow_until_done(
    op: Operator, job: GenerationJob, token: str, attempt: int, admitted: bool = False
) -> None:
    """Raises DeadlineReached when the job's time runs out first.

    A worker that does not know the run lost it (it restarted) if it ever had it: the attempt
    was admitted or seen running, or the worker process it was sent to has been replaced since.
    Only an attempt that never arrived (a replica that wrote Dispatched and stopped before its
    submit, to a worker process still up) is submitted again under the same number; otherwise
    it would run twice."""
    meta = job.metadata
    namespace, name = meta["namespace"], meta["name"]
    run = protocol.run_id(f"{namespace}/{name}", attempt)
    ends = jobrules.deadline(job.status.start_time, job.spec.timeout_seconds)
    worker_pod = job.status.worker.pod if job.status.worker else None
    unreachable_since: float | None = None
    seen_running = admitted or job.status.phase == JobPhase.RUNNING
    last_event = 0
    memory = op.job(namespace, name)
    # The first progress write waits one interval: a run that ends sooner goes straight from
    # Dispatched to its outcome (three status writes in all).
    memory.last_progress_write = op.clock()
    while True:
        if still_current(op, job, attempt) is None:
            return  # finished, deleted or superseded while we waited
        pod = op.cache.pod(namespace, worker_pod) if worker_pod else None
        if not pod_alive(pod):
            unreachable_since = unreachable_since or op.clock()
            if (
                pod is None
                or pod["metadata"].get("deletionTimestamp")
                or op.clock() - unreachable_since > LOST_AFTER_SECONDS
            ):
                await lost(op, job, attempt, f"worker {worker_pod} is gone")
                return
            await until(ends, asyncio.sleep(1))
            continue
        assert pod is not None
        client = worker_client(op, pod, token)
        try:
            # Right after its own submit the follower knows the worker has the run; otherwise
            # it asks first, as the run may never have arrived.
            if not admitted and not ours(await until(ends, client.get(run)), job):
                if seen_running or await restarted_since_dispatch(client, job):
                    await lost(
                        op,
                        job,
                        attempt,
                        f"worker {worker_pod} no longer has attempt {attempt} (it restarted)",
                    )
                    return
                # never arrived: same attempt, same worker process
                await until(ends, client.submit(submit_request(job)))
                seen_running = True  # it has arrived now: a later loss is a loss
            admitted = False
            memory.seen_on_worker = True
            async with contextlib.aclosing(client.events(run, after=last_event)) as events:
                while (next_event := await until(ends, anext(events, None))) is not None:
                    event_id, event = next_event
                    last_event = event_id
                    unreachable_since = None
                    if event.event == protocol.EventName.PROGRESS and event.progress is not None:
                        seen_running = True
                        if op.clock() - memory.last_progress_write >= op.progress_interval:
                            memory.last_progress_write = op.clock()
                            job = await write_progress(op, job, attempt, event.progress)
                    elif event.event == protocol.EventName.STATE:
                        seen_running = True
                    elif event.event == protocol.EventName.RESULT and event.status is not None:
                        await finish(op, job, attempt, event.status)
                        return
        except WorkerError as error:
            if error.status == 404:  # the worker had the run (see above) and no longer does
                await lost(
                    op, job, attempt, f"worker {worker_pod} no longer has attempt {attempt} (it restarted)"
                )
                return
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
        unreachable_since = unreachable_since or op.clock()
        if op.clock() - unreachable_since > LOST_AFTER_SECONDS:
            await lost(op, job, attempt, f"worker {worker_pod} unreachable for {LOST_AFTER_SECONDS:.0f}s")
            return
        await until(ends, asyncio.sleep(1))


def ours(run: protocol.JobStatus | None, job: GenerationJob) -> bool:
    """Whether ``run`` is an attempt of ``job``, not of an earlier job of the same name."""
    return run is not None and run.job_uid in (None, job.metadata.get("uid"))


async def restarted_since_dispatch(client: WorkerClient, job: GenerationJob) -> bool:
    """Whether the worker process that an attempt was sent to has been replaced since: a
    Dispatched attempt it does not list may then have run there and been lost with it."""
    sent_to = job.status.worker.instance if job.status.worker else None
    return sent_to is not None and (await client.inventory()).instance != sent_to


async def write_progress(
    op: Operator, job: GenerationJob, attempt: int, progress: protocol.Progress
) -> GenerationJob:
    current = still_current(op, job, attempt)
    if current is None:
        return job
    worker = current.status.worker
    where = worker.pod if worker else "?"
    training: dict[str, Any] = {}
    if progress.training is not None:
        meta = job.metadata
        metrics.observe_training(meta["namespace"], meta["name"], progress.step, progress.training)
        training = {
            "training": training_status(progress.training),
            "artifacts": bounded_artifacts(progress.training.samples),
        }
    return await set_phase(
        op,
        current,
        JobPhase.RUNNING,
        Reason.RUNNING,
        f"loading model {current.spec.model} on {where}"
        if progress.stage == protocol.LOADING_MODEL_STAGE
        else f"step {progress.step}/{progress.total_steps} on {where}",
        progress={
            "percent": progress.percent,
            "step": progress.step,
            "totalSteps": progress.total_steps,
            "text": progress.text,  # None removes an earlier attempt's
        },
        **training,
    )


def model_load(run: protocol.JobStatus) -> dict[str, Any]:
    """The job status's modelLoad from the run's: whether it ran warm, how long it waited."""
    load = run.model_load
    if load is None:
        return {}
    return {
        "model_load": {"warm": load.warm, **({"seconds": load.seconds} if load.seconds is not None else {})}
    }


async def finish(op: Operator, job: GenerationJob, attempt: int, run: protocol.JobStatus) -> None:
    meta = job.metadata
    body = body_of(job)
    worker = job.status.worker
    trained: dict[str, Any] = {}
    if run.progress.training is not None:  # what a train run reached, however it ended
        metrics.forget_training(meta["namespace"], meta["name"])
        trained = {"training": training_status(run.progress.training, run.artifacts)}
    if run.phase == protocol.Phase.SUCCEEDED:
        started = job.status.start_time or run.created_at
        seconds = ((run.finished_at or dt.datetime.now(dt.UTC)) - started).total_seconds()
        message = f"{len(run.artifacts)} artifact(s) in {seconds:.0f}s on {worker.node if worker else '?'}"
        if await set_outcome(
            op,
            job,
            attempt,
            JobPhase.SUCCEEDED,
            Reason.COMPLETED,
            message,
            completion_time=stamp(),
            progress={
                "percent": 100,
                "step": run.progress.step,
                "totalSteps": run.progress.total_steps,
                "text": run.progress.text,
            },
            artifacts=bounded_artifacts(run.artifacts),
            **trained,
            **model_load(run),
            **(
                {"result": run.result.model_dump(mode="json", by_alias=True, exclude_none=True)}
                if run.result
                else {}
            ),
        ):
            if worker:
                record_run(op, job, worker.pod, succeeded=True)
            op.spawn(op.kube.event(body, Reason.COMPLETED, message), f"event-{meta['name']}")
            metrics.finished(job, "succeeded", now_utc())
        return
    if run.phase == protocol.Phase.CANCELLED:
        if await set_outcome(
            op,
            job,
            attempt,
            JobPhase.CANCELLED,
            Reason.CANCELLED,
            "stopped on its worker",
            completion_time=stamp(),
            **trained,
        ):
            op.spawn(op.kube.event(body, Reason.CANCELLED, "stopped on its worker"), f"event-{meta['name']}")
            metrics.finished(job, "cancelled", now_utc())
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
        if worker and reason is Reason.WORKER_ERROR:
            record_run(op, job, worker.pod, succeeded=False, cause=run.message)
        await retry_or_fail(op, job, attempt, reason, f"attempt {attempt} failed: {run.message}", ran=True)
        return
    if await set_outcome(
        op,
        job,
        attempt,
        JobPhase.FAILED,
        reason,
        run.message,
        completion_time=stamp(),
        **trained,
        **model_load(run),
    ):
        op.spawn(op.kube.event(body, reason, run.message, warning=True), f"event-{meta['name']}")
        metrics.finished(job, "failed", now_utc())


async def lost(op: Operator, job: GenerationJob, attempt: int, why: str, ran: bool = True) -> None:
    memory = op.job(job.metadata["namespace"], job.metadata["name"])
    metrics.forget_training(job.metadata["namespace"], job.metadata["name"])  # until the next attempt
    if job.status.worker is not None:
        memory.avoid.add(job.status.worker.pod)
        record_run(op, job, job.status.worker.pod, succeeded=False, cause=why)
    await retry_or_fail(op, job, attempt, Reason.WORKER_LOST, why, ran=ran)


async def retry_or_fail(
    op: Operator, job: GenerationJob, attempt: int, reason: Reason, why: str, ran: bool
) -> None:
    meta, spec = job.metadata, job.spec
    body = body_of(job)
    if not ran:  # give the attempt number back: it never ran
        await set_outcome(
            op, job, attempt, JobPhase.QUEUED, Reason.QUEUED, why, attempts=attempt - 1, worker=None
        )
        return
    delay = jobrules.retry_delay(attempt, spec.retry.max_attempts, spec.retry.backoff_seconds)
    if delay is None:
        message = f"{why}; all {spec.retry.max_attempts} attempts used"
        if await set_outcome(
            op,
            job,
            attempt,
            JobPhase.FAILED,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            message,
            completion_time=stamp(),
        ):
            op.spawn(op.kube.event(body, Reason.BACKOFF_LIMIT_EXCEEDED, message, warning=True), "event")
            metrics.finished(job, "failed", now_utc())
        return
    op.job(meta["namespace"], meta["name"]).not_before = op.clock() + delay
    message = f"{why}; attempt {attempt + 1} of {spec.retry.max_attempts} in {delay:.0f}s"
    if await set_outcome(op, job, attempt, JobPhase.QUEUED, Reason.RETRYING, message, worker=None):
        op.spawn(op.kube.event(body, Reason.RETRYING, message, warning=True), "event")
