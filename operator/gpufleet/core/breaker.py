"""A circuit breaker per worker: a worker whose runs keep failing stops getting jobs.

Closed: the worker takes jobs. After ``threshold`` failed runs in a row (worker errors, lost
runs, refused dispatches — not failures that are the job's own, such as refused input) it
opens: no new jobs. After ``cooldown_seconds`` it is half-open: one probe job may go; a
success closes it, a failure makes it due for replacement (its pod is deleted and the pool
creates a new one). Pure: the caller keeps each worker's state and passes a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"
    REPLACE = "Replace"


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int = 3
    cooldown_seconds: float = 30.0


@dataclass(frozen=True)
class WorkerHealth:
    failures_in_a_row: int = 0
    last_cause: str = ""
    opened_at: float | None = None
    probing: bool = False  # the half-open worker's probe job is out
    replace_due: bool = False  # the probe failed too


def record(
    health: WorkerHealth, succeeded: bool, cause: str, now: float, policy: BreakerPolicy
) -> WorkerHealth:
    """The worker's health after one of its runs ended (or a dispatch to it failed)."""
    if succeeded:
        return WorkerHealth()
    failures = health.failures_in_a_row + 1
    opened_at = health.opened_at
    if opened_at is None and failures >= policy.threshold:
        opened_at = now
    return WorkerHealth(failures, cause, opened_at, probing=health.probing, replace_due=health.probing)


def state(health: WorkerHealth, now: float, policy: BreakerPolicy) -> BreakerState:
    if health.opened_at is None:
        return BreakerState.CLOSED
    if health.replace_due:
        return BreakerState.REPLACE
    if now - health.opened_at >= policy.cooldown_seconds:
        return BreakerState.HALF_OPEN
    return BreakerState.OPEN


def takes_jobs(health: WorkerHealth, now: float, policy: BreakerPolicy) -> bool:
    """Whether the placer may give this worker a job now (a half-open one: its one probe)."""
    current = state(health, now, policy)
    return current is BreakerState.CLOSED or (current is BreakerState.HALF_OPEN and not health.probing)


def probe_sent(health: WorkerHealth, now: float, policy: BreakerPolicy) -> WorkerHealth:
    """Marks the half-open worker's probe as out (its next failure means replacement)."""
    if state(health, now, policy) is BreakerState.HALF_OPEN:
        return replace(health, probing=True)
    return health


def describe(pod: str, health: WorkerHealth) -> str:
    return f"worker {pod} failed {health.failures_in_a_row} runs in a row (last: {health.last_cause})"
