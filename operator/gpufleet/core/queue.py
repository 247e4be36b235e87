"""Queue order of a pool's waiting jobs: priority first, FIFO within a priority, with aging.

Aging raises a job's effective priority by one level for every ``aging_seconds`` it has
waited, so a steady stream of high-priority work cannot starve low-priority jobs forever.
Ties keep arrival order (FIFO), then the name, so the order is total and stable.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_AGING_SECONDS = 300.0


@dataclass(frozen=True)
class WaitingJob:
    """A job waiting in a pool's queue, as the queue needs to see it."""

    key: str  # namespace/name
    priority: int
    enqueued_at: float  # seconds (epoch) when it entered the queue: creation or last requeue


def effective_priority(job: WaitingJob, now: float, aging_seconds: float = DEFAULT_AGING_SECONDS) -> int:
    waited = max(0.0, now - job.enqueued_at)
    return job.priority + (math.floor(waited / aging_seconds) if aging_seconds > 0 else 0)


def order(
    jobs: Iterable[WaitingJob], now: float, aging_seconds: float = DEFAULT_AGING_SECONDS
) -> list[WaitingJob]:
    """Jobs in dispatch order: highest effective priority, then earliest arrival, then name."""
    return sorted(jobs, key=lambda j: (-effective_priority(j, now, aging_seconds), j.enqueued_at, j.key))


def positions(ordered: Sequence[WaitingJob]) -> dict[str, int]:
    """1-based queue position of each job (``status.queuePosition`` is 0-based: this less one)."""
    return {job.key: index for index, job in enumerate(ordered, start=1)}


def position_due(written: int | None, actual: int) -> bool:
    """Whether a queued job's written ``status.queuePosition`` should be rewritten.

    Positions are written rarely and coarsely: when first queued, when the job has moved at
    least halfway to the head, and when it has fallen far behind what was written. A job that
    waits behind N others costs about log2(N) position writes, not N.
    """
    if written is None:
        return True
    return (actual < written and actual <= written // 2) or actual > 2 * written + 1


def ranks(
    ordered: Sequence[WaitingJob], now: float, aging_seconds: float = DEFAULT_AGING_SECONDS
) -> tuple[int, ...]:
    """The queue ``ordered`` (by `order`, at ``now``) as `arrival_position` reads it."""
    return tuple(-effective_priority(job, now, aging_seconds) for job in ordered)


def arrival_position(queue_ranks: Sequence[int], arrived: Iterable[int], priority: int) -> int:
    """0-based position of a job of ``priority`` that has just arrived: behind each job of the
    queue (its `ranks`) whose effective priority is at least its own, first come first served,
    and behind each job that ``arrived`` (their priorities) since that queue was ordered with a
    priority at least its own."""
    return bisect_right(queue_ranks, -priority) + sum(1 for other in arrived if other >= priority)
