"""Condition types, reasons and job phases, and pure helpers to keep conditions right.

Conditions follow ``metav1.Condition`` and the kstatus convention that Flux and Argo CD
read: ``Ready`` says the object is done reconciling and healthy, ``Reconciling`` that work
is in progress, ``Stalled`` that it cannot progress without a change (a failed job, a pool
that cannot get GPUs). Only those three have a meaning fixed by kstatus; ``Scaling`` and
``Degraded`` add detail for pools.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from gpufleet.api.fields import QUALIFIED_NAME_PATTERN, Timestamp
from gpufleet.api.inputs import CamelModel

MAX_CONDITIONS = 16
MAX_CONDITION_MESSAGE_CHARS = 32768
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    SCALING = "Scaling"  # pools: the pool is changing size
    DEGRADED = "Degraded"  # pools: serving, but with fewer ready workers than desired


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class JobPhase(StrEnum):
    """Pending -> Queued -> Dispatched -> Running -> Succeeded | Failed | Cancelled."""

    PENDING = "Pending"  # accepted, not yet admitted to its pool's queue (or cannot be)
    QUEUED = "Queued"
    DISPATCHED = "Dispatched"  # sent to a worker, not yet running there
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED})


class Reason(StrEnum):
    """Machine-readable reasons for conditions, ``status.reason`` and events."""

    # jobs: waiting
    QUEUED = "Queued"
    DISPATCHED = "Dispatched"
    RUNNING = "Running"
    RETRYING = "Retrying"
    UNSCHEDULABLE = "Unschedulable"
    POOL_NOT_FOUND = "PoolNotFound"
    MODEL_NOT_SERVED = "ModelNotServed"
    TASK_NOT_SERVED = "TaskNotServed"
    # jobs: finished
    COMPLETED = "Completed"
    OUT_OF_MEMORY = "OutOfMemory"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    CANCELLED = "Cancelled"
    WORKER_LOST = "WorkerLost"
    WORKER_ERROR = "WorkerError"
    INVALID_INPUT = "InvalidInput"
    UPLOAD_FAILED = "UploadFailed"
    MODEL_FAILED = "ModelFailed"
    TRAINING_DIVERGED = "TrainingDiverged"
    # pools
    RECONCILED = "Reconciled"
    WORKERS_READY = "WorkersReady"
    WORKERS_STARTING = "WorkersStarting"
    SCALING_UP = "ScalingUp"
    SCALING_DOWN = "ScalingDown"
    SCALED_TO_ZERO = "ScaledToZero"
    INSUFFICIENT_GPUS = "InsufficientGPUs"
    WORKERS_FAILING = "WorkersFailing"
    WORKER_POD_REFUSED = "WorkerPodRefused"
    S3_CREDENTIALS_MISSING = "S3CredentialsMissing"
    MODEL_TOO_LARGE = "ModelTooLarge"


# What each reason tells a user; docs/api.md lists these, and every reason must have one.
REASON_MEANINGS: dict[Reason, str] = {
    Reason.QUEUED: "The job waits in its pool's queue (status.queuePosition says where).",
    Reason.DISPATCHED: "The job was sent to a worker and has not started there yet.",
    Reason.RUNNING: "The job runs on status.worker.",
    Reason.RETRYING: "An attempt failed; the job is back in the queue for another attempt.",
    Reason.UNSCHEDULABLE: "No GPU the pool can get has the VRAM the job needs; the message has the numbers.",
    Reason.POOL_NOT_FOUND: "spec.poolRef names no WorkerPool in the job's namespace.",
    Reason.MODEL_NOT_SERVED: "The pool does not serve spec.model.",
    Reason.TASK_NOT_SERVED: "The pool does not accept spec.task.",
    Reason.COMPLETED: "The job succeeded; status.artifacts lists its outputs.",
    Reason.OUT_OF_MEMORY: "The GPU ran out of memory running the job.",
    Reason.DEADLINE_EXCEEDED: "The job ran longer than spec.timeoutSeconds.",
    Reason.BACKOFF_LIMIT_EXCEEDED: "Every attempt allowed by spec.retry.maxAttempts failed.",
    Reason.CANCELLED: "spec.cancel was set; the job was stopped.",
    Reason.WORKER_LOST: "The worker died or was deleted while running the job.",
    Reason.WORKER_ERROR: "The worker reported that the run failed.",
    Reason.INVALID_INPUT: "The worker refused the job's input (for example an image it could not fetch).",
    Reason.UPLOAD_FAILED: "The artifacts could not be written to spec.output.uri.",
    Reason.MODEL_FAILED: "The job's model could not be loaded on its worker (its source is missing, "
    "unreachable or fails its digest, or the load failed); the message says why.",
    Reason.TRAINING_DIVERGED: (
        "A train job's loss became NaN or infinite; its checkpoints are kept (try a lower learningRate)."
    ),
    Reason.RECONCILED: "The pool matches its spec.",
    Reason.WORKERS_READY: "Every desired worker is ready.",
    Reason.WORKERS_STARTING: "Workers are starting and not all are ready yet.",
    Reason.SCALING_UP: "The pool is adding workers.",
    Reason.SCALING_DOWN: "The pool is draining and removing workers.",
    Reason.SCALED_TO_ZERO: "The pool was idle and has no workers; new jobs bring it back.",
    Reason.INSUFFICIENT_GPUS: "Worker pods cannot be scheduled: no node has GPUs matching spec.gpu.",
    Reason.WORKERS_FAILING: (
        "Workers crash, cannot start (a missing ConfigMap, an image that cannot be pulled) "
        "or keep failing runs; the message names each worker and why."
    ),
    Reason.WORKER_POD_REFUSED: (
        "The API server refuses the pool's worker pods (for example a missing PriorityClass "
        "or RuntimeClass); the message quotes it."
    ),
    Reason.S3_CREDENTIALS_MISSING: (
        "The pool has s3:// models but the operator gives its workers no S3 credentials Secret "
        "(--worker-s3-secret, Helm artifacts.s3.credentialsSecret); the message names the models."
    ),
    Reason.MODEL_TOO_LARGE: (
        "A model's weights plus the smallest job it serves fit on no GPU the pool can get; its "
        "jobs wait as Unschedulable. The message has the numbers."
    ),
}


class Condition(CamelModel):
    """One aspect of the object's state, in the shape of metav1.Condition."""

    type: str = Field(
        max_length=316, pattern=QUALIFIED_NAME_PATTERN, description="Ready, Reconciling, Stalled, ..."
    )
    status: ConditionStatus
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )
    last_transition_time: Timestamp = Field(description="When status last changed.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=REASON_PATTERN,
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(
        max_length=MAX_CONDITION_MESSAGE_CHARS, description="Details for humans; may be empty."
    )


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of ``type_``, or None."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(conditions: Iterable[Condition], new: Condition) -> list[Condition]:
    """``conditions`` with ``new`` in place of its type, like ``meta.SetStatusCondition``.

    ``lastTransitionTime`` only moves when the status changes, so a condition says since
    when it has held, not when it was last written.
    """
    result: list[Condition] = []
    replaced = False
    for current in conditions:
        if current.type != new.type:
            result.append(current)
            continue
        replaced = True
        if current.status == new.status:
            new = new.model_copy(update={"last_transition_time": current.last_transition_time})
        result.append(new)
    if not replaced:
        result.append(new)
    return result


def boolean_condition(
    type_: str, value: bool, reason: str, message: str, observed_generation: int, now: datetime
) -> Condition:
    """A True/False condition, transitioned ``now`` (`merge_conditions` keeps older times)."""
    return Condition(
        type=type_,
        status=ConditionStatus.TRUE if value else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=now,
    )


def merge_conditions(previous: Iterable[Condition], new: Iterable[Condition]) -> list[dict]:
    """``new`` as written to status: a condition whose status held keeps its transition time."""
    before = {c.type: c for c in previous}
    result = []
    for condition in new:
        old = before.get(condition.type)
        if old is not None and old.status == condition.status:
            condition = condition.model_copy(update={"last_transition_time": old.last_transition_time})
        result.append(condition.model_dump(mode="json", by_alias=True, exclude_none=True))
    return result


def kstatus_conditions(
    *,
    ready: bool,
    reconciling: bool,
    stalled: bool,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """The Ready / Reconciling / Stalled triple, all with the same reason and message."""

    def condition(type_: ConditionType, value: bool) -> Condition:
        return boolean_condition(type_, value, reason, message, observed_generation, now)

    return [
        condition(ConditionType.READY, ready),
        condition(ConditionType.RECONCILING, reconciling),
        condition(ConditionType.STALLED, stalled),
    ]


# Reasons a job waits for that only a change by the user can end: the job is Stalled.
USER_FIXABLE_REASONS = frozenset(
    {
        Reason.UNSCHEDULABLE,
        Reason.POOL_NOT_FOUND,
        Reason.MODEL_NOT_SERVED,
        Reason.TASK_NOT_SERVED,
        Reason.INVALID_INPUT,
    }
)


def job_conditions(
    phase: JobPhase, reason: str, message: str, observed_generation: int, now: datetime
) -> list[Condition]:
    """kstatus conditions for a job in ``phase``: done is Ready, failed is Stalled.

    A job that waits for something only its user can change (a pool that does not exist or
    cannot get a big enough GPU, a model or task the pool does not serve, input refused) is
    Stalled too, and not Reconciling, so ``kubectl wait``, Flux and Argo CD stop waiting at
    once. A cancelled job is finished as asked, so it is neither reconciling nor stalled.
    """
    waits_for_user = phase not in TERMINAL_PHASES and reason in USER_FIXABLE_REASONS
    return kstatus_conditions(
        ready=phase in (JobPhase.SUCCEEDED, JobPhase.CANCELLED),
        reconciling=phase not in TERMINAL_PHASES and not waits_for_user,
        stalled=phase is JobPhase.FAILED or waits_for_user,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        now=now,
    )
