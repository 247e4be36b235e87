"""The operator's Prometheus metrics (names are what dashboards, alerts and KEDA use).

Pool sizes, queues and the workers' GPUs and models come from each pool's last round
(`PoolMemory.seen`), read at scrape time by `FleetCollector`: a deleted pool's series go
with it. Counters and histograms of finished jobs are kept here and removed by `forget_pool`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gpufleet.api.inputs import Task
from gpufleet.api.models import GenerationJob
from gpufleet.core.fleetmetrics import families

if TYPE_CHECKING:
    from .state import Operator

OUTCOMES = ("succeeded", "failed", "cancelled")
# Queue waits and run times of generation jobs: seconds to an hour and more.
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

TRANSITIONS = Counter("gpufleet_job_transitions_total", "Job phase changes written", ["phase"])
FINISHED = Counter("gpufleet_jobs_finished_total", "Jobs that ended", ["namespace", "pool", "outcome"])
QUEUE_WAIT = Histogram(
    "gpufleet_job_queue_wait_seconds",
    "From a job's creation to its first dispatch a worker accepted",
    ["namespace", "pool", "task"],
    buckets=DURATION_BUCKETS,
)
RUN_SECONDS = Histogram(
    "gpufleet_job_run_seconds",
    "From a job's first dispatch to its end, by outcome",
    ["namespace", "pool", "task", "outcome"],
    buckets=DURATION_BUCKETS,
)
DISPATCH_ERRORS = Counter("gpufleet_dispatch_errors_total", "Dispatches a worker refused or never answered")
RECONCILE_ERRORS = Counter(
    "gpufleet_reconcile_errors_total", "Pool reconcile rounds that raised", ["namespace", "pool"]
)
ROUND_SECONDS = Histogram(
    "gpufleet_round_seconds",
    "How long a pool's rounds take (snapshot, decisions, sizing, placement, writes)",
    ["namespace", "pool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEADER = Gauge("gpufleet_leader", "1 on the replica that holds the leader Lease and acts, 0 on a standby")
BUILD = Info("gpufleet_build", "The running operator's version")


class FleetCollector(Collector):
    """Pools, GPUs and models from the operator's memory of each live pool's last round."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # Runs on the metrics server's thread: read a copy; each round replaces `seen` whole.
        pools = list(self.operator.pools.items())
        live = [memory.seen for key, memory in pools if memory.seen and key in self.operator.cache.pools]
        for family in families(live):
            kind = GaugeMetricFamily if family.kind == "gauge" else CounterMetricFamily
            metric = kind(family.name, family.help, labels=family.labels)
            for labels, value in family.samples:
                metric.add_metric(labels, value)
            yield metric


def serve_fleet(operator: Operator) -> None:
    """Publishes the build and the fleet's series; this replica is a standby until it leads."""
    BUILD.info({"version": version(), "python": platform.python_version()})
    LEADER.set(0)
    REGISTRY.register(FleetCollector(operator))


def version() -> str:
    try:
        return importlib.metadata.version("gpufleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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


def pool_seen(namespace: str, pool: str, tasks: list[Task]) -> None:
    """Starts a pool's job series at zero, so rates and ratios exist before its first job ends."""
    RECONCILE_ERRORS.labels(namespace, pool)
    for outcome in OUTCOMES:
        FINISHED.labels(namespace, pool, outcome)
    for task in tasks:
        QUEUE_WAIT.labels(namespace, pool, task.value)
        for outcome in OUTCOMES:
            RUN_SECONDS.labels(namespace, pool, task.value, outcome)


def dispatched(job: GenerationJob, now: dt.datetime) -> None:
    """A worker accepted a job's first attempt: it waited since its creation."""
    created = job.metadata.get("creationTimestamp")
    if job.status.attempts != 1 or not created:
        return
    waited = (now - dt.datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds()
    QUEUE_WAIT.labels(job.metadata["namespace"], job.spec.pool_ref.name, job.spec.task.value).observe(
        max(0.0, waited)
    )


def finished(job: GenerationJob, outcome: str, now: dt.datetime) -> None:
    """A job ended: count it, and its run time when it was ever dispatched."""
    namespace, pool = job.metadata["namespace"], job.spec.pool_ref.name
    FINISHED.labels(namespace, pool, outcome).inc()
    started = job.status.start_time
    if started is not None:
        RUN_SECONDS.labels(namespace, pool, job.spec.task.value, outcome).observe(
            max(0.0, (now - started).total_seconds())
        )


def forget_pool(namespace: str, pool: str) -> None:
    """Removes a deleted pool's counters and histograms, so dashboards and KEDA stop seeing it."""
    for outcome in OUTCOMES:
        with contextlib.suppress(KeyError):
            FINISHED.remove(namespace, pool, outcome)
    for task in Task:
        with contextlib.suppress(KeyError):
            QUEUE_WAIT.remove(namespace, pool, task.value)
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):
                RUN_SECONDS.remove(namespace, pool, task.value, outcome)
    for labelled in (RECONCILE_ERRORS, ROUND_SECONDS):
        with contextlib.suppress(KeyError):
            labelled.remove(namespace, pool)
