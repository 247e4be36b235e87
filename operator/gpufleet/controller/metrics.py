"""The operator's Prometheus metrics (names are what dashboards, alerts and KEDA use)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("gpufleet_queue_depth", "Jobs waiting in a pool's queue", ["namespace", "pool"])
READY_WORKERS = Gauge("gpufleet_pool_ready_workers", "Workers ready to take jobs", ["namespace", "pool"])
DESIRED_WORKERS = Gauge(
    "gpufleet_pool_desired_workers", "Workers the pool should have", ["namespace", "pool"]
)
TRANSITIONS = Counter("gpufleet_job_transitions_total", "Job phase changes written", ["phase"])
FINISHED = Counter("gpufleet_jobs_finished_total", "Jobs that ended", ["namespace", "pool", "outcome"])
RUN_SECONDS = Histogram(
    "gpufleet_job_run_seconds",
    "From first dispatch to success",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
DISPATCH_ERRORS = Counter("gpufleet_dispatch_errors_total", "Dispatches a worker refused or never answered")
RECONCILE_ERRORS = Counter("gpufleet_reconcile_errors_total", "Pool reconcile rounds that raised", ["pool"])


TRAINING_STEP = Gauge(
    "gpufleet_training_step", "Optimizer steps done by a running train job", ["namespace", "job"]
)
TRAINING_LOSS = Gauge("gpufleet_training_loss", "Smoothed loss of a running train job", ["namespace", "job"])
TRAINING_STEPS_PER_SECOND = Gauge(
    "gpufleet_training_steps_per_second",
    "Optimizer steps per second of a running train job",
    ["namespace", "job"],
)
TRAINING_ETA = Gauge(
    "gpufleet_training_eta_seconds", "Time left of a running train job", ["namespace", "job"]
)
TRAINING_GAUGES = (TRAINING_STEP, TRAINING_LOSS, TRAINING_STEPS_PER_SECOND, TRAINING_ETA)


def observe_training(namespace: str, job: str, step: int, training: Any) -> None:
    """A train job's latest progress (a gpufleet_worker.protocol.TrainingProgress)."""
    TRAINING_STEP.labels(namespace, job).set(step)
    for gauge, value in (
        (TRAINING_LOSS, training.smoothed_loss),
        (TRAINING_STEPS_PER_SECOND, training.steps_per_second),
        (TRAINING_ETA, training.eta_seconds),
    ):
        if value is not None:
            gauge.labels(namespace, job).set(value)


def forget_training(namespace: str, job: str) -> None:
    """Removes a finished train job's series: one series set per running job, not per job ever."""
    for gauge in TRAINING_GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, job)


def count_transition(phase: str) -> None:
    TRANSITIONS.labels(str(phase)).inc()


def finished(namespace: str, pool: str, outcome: str, seconds: float) -> None:
    FINISHED.labels(namespace, pool, outcome).inc()
    if outcome == "succeeded":
        RUN_SECONDS.observe(seconds)


def forget_pool(namespace: str, pool: str) -> None:
    """Removes a deleted pool's series, so dashboards and KEDA stop seeing it."""
    for gauge in (QUEUE_DEPTH, READY_WORKERS, DESIRED_WORKERS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, pool)
    for outcome in ("succeeded", "failed", "cancelled"):
        with contextlib.suppress(KeyError):
            FINISHED.remove(namespace, pool, outcome)
