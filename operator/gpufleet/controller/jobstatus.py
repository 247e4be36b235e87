"""Every write of a GenerationJob's status goes through here: one writer per job.

A follower writes the outcome of its own attempt only while that attempt is still the job's
current one (same uid, same attempt number, not yet finished): a follower that outlived its
attempt, or a round that acted on an older copy, cannot move a finished job back.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gpufleet.api.conditions import TERMINAL_PHASES, JobPhase, job_conditions, merge_conditions
from gpufleet.api.models import GenerationJob

from . import metrics
from .kube import JOBS
from .state import Operator


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def stamp(moment: dt.datetime | None = None) -> str:
    return (moment or now_utc()).strftime("%Y-%m-%dT%H:%M:%SZ")


def body_of(job: GenerationJob) -> dict:
    """What an Event needs of the job."""
    return {"apiVersion": job.api_version, "kind": job.kind, "metadata": job.metadata}


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


async def set_phase(
    op: Operator, job: GenerationJob, phase: JobPhase, reason: str, message: str, **fields: Any
) -> GenerationJob:
    """Writes phase, reason, message, conditions and any extra status fields (snake_case here,
    camelCase in the API); returns the job as now stored (unchanged if it was deleted)."""
    generation = job.metadata.get("generation", 1)
    merged = merge_conditions(
        job.status.conditions, job_conditions(phase, reason, message, generation, now_utc())
    )
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
    if stored is None:
        return job
    held = op.cache.remember_job(stored)
    metrics.count_transition(phase)
    return (op.cache.parsed(held) if held is not None else op.cache.current(job)) or job


def still_current(op: Operator, job: GenerationJob, attempt: int) -> GenerationJob | None:
    """The job as now known if ``attempt`` is still its live attempt, else None."""
    current = op.cache.current(job)
    meta = job.metadata
    if (
        current is None
        or current.status.attempts != attempt
        or current.status.phase in TERMINAL_PHASES
        or op.job(meta["namespace"], meta["name"]).finished_attempt >= attempt
    ):
        return None
    return current


async def set_outcome(
    op: Operator, job: GenerationJob, attempt: int, phase: JobPhase, reason: str, message: str, **fields: Any
) -> GenerationJob | None:
    """Writes how ``attempt`` ended (a final phase, or back to the queue), at most once per
    attempt; None when the attempt is no longer the job's live one and nothing was written."""
    current = still_current(op, job, attempt)
    if current is None:
        return None
    op.job(job.metadata["namespace"], job.metadata["name"]).finished_attempt = attempt
    return await set_phase(op, current, phase, reason, message, **fields)
