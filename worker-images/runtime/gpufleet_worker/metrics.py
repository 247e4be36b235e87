"""Prometheus metrics of one worker, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .admission import GpuBudget
    from .inventory import GpuReading

PREFIX = "gpufleet_worker"
JOB_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
MODEL_LOAD_SECONDS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 120, 300, 600)


class GpuCollector(Collector):
    """VRAM and utilization gauges, read from NVML (or the simulated GPU) at scrape time."""

    def __init__(self, read: Callable[[], list[tuple[GpuReading, GpuBudget]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        memory = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_bytes",
            "GPU memory: total, used and free as NVML reports them; reserved, admittable, "
            "models (resident and loading), jobs and evictable (idle models) by this worker's "
            "accounting",
            labels=["gpu", "product", "kind"],
        )
        utilization = GaugeMetricFamily(
            f"{PREFIX}_gpu_utilization_percent", "GPU busy percent (NVML)", labels=["gpu"]
        )
        jobs = GaugeMetricFamily(
            f"{PREFIX}_gpu_running_jobs", "Runs holding a reservation on the GPU", labels=["gpu"]
        )
        resident = GaugeMetricFamily(
            f"{PREFIX}_model_resident",
            "1 for each model loaded on a GPU (loading ones not counted)",
            labels=["model", "gpu"],
        )
        for reading, budget in self._read():
            for kind, value in (
                ("total", reading.memory_total_bytes),
                ("used", reading.memory_used_bytes),
                ("free", reading.memory_free_bytes),
                ("reserved", budget.reserved_bytes),
                ("admittable", budget.admittable_bytes),
                ("models", budget.models_bytes),
                ("jobs", budget.jobs_bytes),
                ("evictable", budget.evictable_bytes),
            ):
                memory.add_metric([reading.uuid, reading.product, kind], value)
            if reading.utilization_percent is not None:
                utilization.add_metric([reading.uuid], reading.utilization_percent)
            jobs.add_metric([reading.uuid], len(budget.reservations))
            for name in sorted(set(budget.models) - budget.loading):
                resident.add_metric([name, reading.uuid], 1)
        yield memory
        yield utilization
        yield jobs
        yield resident


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            f"{PREFIX}_jobs",
            "Runs that ended, by outcome",
            ["model", "phase", "reason"],
            registry=self.registry,
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals", "Submissions refused at admission", ["reason"], registry=self.registry
        )
        self.job_seconds = Histogram(
            f"{PREFIX}_job_seconds",
            "Run time from admission to end",
            ["model", "phase"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.running_jobs = Gauge(f"{PREFIX}_running_jobs", "Runs in progress", registry=self.registry)
        self.model_loads = Counter(
            f"{PREFIX}_model_loads", "Loads of a model onto a GPU", ["model"], registry=self.registry
        )
        self.model_evictions = Counter(
            f"{PREFIX}_model_evictions",
            "Evictions of a model from a GPU to make room for another",
            ["model"],
            registry=self.registry,
        )
        self.model_warm_hits = Counter(
            f"{PREFIX}_model_warm_hits",
            "Runs admitted on a GPU where their model was resident",
            ["model"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            f"{PREFIX}_model_load_seconds",
            "Time a load of the model onto a GPU took (fetching its files included)",
            ["model"],
            buckets=MODEL_LOAD_SECONDS_BUCKETS,
            registry=self.registry,
        )

    def watch_gpus(self, read: Callable[[], list[tuple[GpuReading, GpuBudget]]]) -> None:
        self.registry.register(GpuCollector(read))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
