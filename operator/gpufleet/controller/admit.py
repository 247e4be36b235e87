"""A new job's first status, written when its first watch event arrives rather than by its
pool's next round.

With thousands queued a round takes seconds, and a new job would wait for the round under
way and then its own. Here a job that its pool's round would queue (core.jobs.next_step
says QUEUE, against the pool as its last round saw it, which left jobs waiting) is told so
at once: Queued, behind the jobs of at least its priority in the queue that round left and
the ones told since (core.queue.arrival_position; the round's coarse refreshes correct what
moved since). Anything else (a refusal, a cancel, a pool no round has seen yet, a pool with
room, where the round may dispatch the job at once) is left to the round, which it wakes. A
job is written by this or by its round, never both at once (Operator.claim).
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.core import jobs as jobrules
from gpufleet.core import queue

from .cache import Key, phase, pool_of
from .jobstatus import now_utc, set_phase
from .reconcile import bounded, job_view
from .state import Operator

log = logging.getLogger("gpufleet.admit")


async def first_statuses(op: Operator) -> None:
    """Writes the first status of the jobs the cache saw arrive, as they arrive."""
    await op.cache.synced.wait()
    while True:
        await op.cache.arrived.wait()
        await write_arrivals(op)


async def write_arrivals(op: Operator) -> None:
    """Writes the first statuses of the jobs that arrived since the last call; never raises
    (the rounds write what a failure leaves)."""
    op.cache.arrived.clear()
    keys = list(op.cache.arrivals)
    op.cache.arrivals.clear()
    claimed: set[Key] = set()
    writes = []
    try:
        for key in keys:
            if (write := first_status(op, key)) is not None:
                claimed.add(key)
                writes.append(write)
        await bounded(op.concurrency, writes)
    except Exception:
        log.exception("writing first statuses")
        for write in writes:
            write.close()  # any not run (a no-op for the others)
    finally:
        op.writing -= claimed


def first_status(op: Operator, key: Key) -> Coroutine[Any, Any, Any] | None:
    """The write that queues job ``key`` (claimed for it), or None when it is not one to queue
    here: gone, already written, held by its round, anything but QUEUE for it, or in a pool
    whose last round left no job waiting. The round takes the last two, woken here: it may
    dispatch the job at once (Dispatched is then its first status). A pool with jobs waiting
    is not woken: nothing frees room for this one before a run ends or a worker changes, which
    wake it anyway."""
    body = op.cache.jobs.get(key)
    if body is None or phase(body) or key in op.writing:
        return None
    pool = (key[0], pool_of(body) or "")
    memory = op.pools.get(pool)
    seen = memory.queue if memory is not None and pool in op.cache.pools else None
    job = op.cache.parsed(body)
    if (
        seen is None
        or not seen.ranks
        or job is None
        or jobrules.refusal(job.spec, seen.spec, seen.classes) is not None
    ):
        op.cache.wake(*pool)
        return None
    if jobrules.next_step(job_view(job, op.job(*key)), None, now_utc()) is not jobrules.Step.QUEUE:
        op.cache.wake(*pool)
        return None
    assert memory is not None
    position = queue.arrival_position(seen.ranks, memory.arrived, job.spec.priority)
    memory.arrived.append(job.spec.priority)
    op.claim(key)
    message = f"position {position} in pool {pool[1]}'s queue"
    return set_phase(op, job, JobPhase.QUEUED, Reason.QUEUED, message, queue_position=position)
