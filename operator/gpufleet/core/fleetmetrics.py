"""What the operator's /metrics says about each pool's last round: sizes, queue, and the GPUs
and models of its workers' inventories. Pure: the controller turns these families into
Prometheus samples at scrape time.

GPU series carry DCGM exporter's label names (``gpu`` the NVML index, ``UUID``, ``modelName``,
``Hostname`` the node), so ``... * on (UUID) group_left (pool) DCGM_FI_DEV_FB_USED`` joins.
``pod`` is the worker pod, as DCGM exporter's pod mapping names the pod using a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import gpufleet_worker.protocol as protocol

POOL_LABELS = ("namespace", "pool")
WORKER_LABELS = (*POOL_LABELS, "pod")
GPU_LABELS = (*WORKER_LABELS, "Hostname", "gpu", "UUID", "modelName")


@dataclass(frozen=True)
class WorkerSeen:
    """A ready worker pod, the node it runs on and the inventory it last reported."""

    pod: str
    node: str
    inventory: protocol.Inventory


@dataclass(frozen=True)
class PoolSeen:
    """One pool as its last reconcile round found it."""

    namespace: str
    pool: str
    desired_workers: int
    ready_workers: int
    queue_depth: int
    workers: tuple[WorkerSeen, ...] = ()


def workers_seen(pods: list[dict], inventories: dict[str, protocol.Inventory]) -> tuple[WorkerSeen, ...]:
    """The pods whose inventory was read this round, with their node."""
    return tuple(
        WorkerSeen(pod["metadata"]["name"], pod["spec"].get("nodeName", ""), inventory)
        for pod in pods
        if (inventory := inventories.get(pod["metadata"]["name"])) is not None
    )


@dataclass
class Family:
    """A metric family: its samples are label values (in ``labels`` order) and a value."""

    name: str
    help: str
    kind: Literal["gauge", "counter"]
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def families(pools: Iterable[PoolSeen]) -> list[Family]:
    queue_depth = Family("gpufleet_queue_depth", "Jobs waiting in a pool's queue", "gauge", POOL_LABELS)
    ready = Family("gpufleet_pool_ready_workers", "Workers ready to take jobs", "gauge", POOL_LABELS)
    desired = Family("gpufleet_pool_desired_workers", "Workers the pool should have", "gauge", POOL_LABELS)
    vram_total = Family("gpufleet_gpu_vram_total_bytes", "A worker GPU's memory", "gauge", GPU_LABELS)
    vram_models = Family(
        "gpufleet_gpu_vram_models_bytes",
        "GPU memory held by resident and loading models",
        "gauge",
        GPU_LABELS,
    )
    vram_jobs = Family(
        "gpufleet_gpu_vram_jobs_bytes", "GPU memory reserved by running jobs", "gauge", GPU_LABELS
    )
    vram_free = Family(
        "gpufleet_gpu_vram_free_bytes",
        "GPU memory neither held by models nor reserved by jobs (total - reserved)",
        "gauge",
        GPU_LABELS,
    )
    vram_evictable = Family(
        "gpufleet_gpu_vram_evictable_bytes",
        "GPU memory of idle, unpinned resident models a load may evict",
        "gauge",
        GPU_LABELS,
    )
    running = Family(
        "gpufleet_gpu_running_jobs", "Runs holding a reservation on the GPU", "gauge", GPU_LABELS
    )
    model_vram = Family(
        "gpufleet_gpu_model_vram_bytes",
        "A model resident (or loading) on a GPU, by the VRAM it holds there",
        "gauge",
        (*GPU_LABELS, "model", "state"),
    )
    model_labels = (*WORKER_LABELS, "model")
    resident_gpus = Family(
        "gpufleet_model_resident_gpus", "GPUs of the worker holding the model", "gauge", model_labels
    )
    loads = Family(
        "gpufleet_model_loads", "Model loads onto a GPU since the worker started", "counter", model_labels
    )
    evictions = Family(
        "gpufleet_model_evictions",
        "Model evictions from a GPU since the worker started",
        "counter",
        model_labels,
    )
    warm_hits = Family(
        "gpufleet_model_warm_hits",
        "Runs that found their model resident on their GPU",
        "counter",
        model_labels,
    )
    for seen in pools:
        pool = (seen.namespace, seen.pool)
        queue_depth.samples.append((pool, seen.queue_depth))
        ready.samples.append((pool, seen.ready_workers))
        desired.samples.append((pool, seen.desired_workers))
        for worker in seen.workers:
            for gpu in worker.inventory.gpus:
                on_gpu = (*pool, worker.pod, worker.node, str(gpu.index), gpu.uuid, gpu.product)
                vram_total.samples.append((on_gpu, gpu.memory_total_bytes))
                vram_models.samples.append((on_gpu, gpu.models_bytes))
                vram_jobs.samples.append((on_gpu, gpu.jobs_bytes))
                vram_free.samples.append((on_gpu, max(0, gpu.memory_total_bytes - gpu.reserved_bytes)))
                vram_evictable.samples.append((on_gpu, gpu.evictable_bytes))
                running.samples.append((on_gpu, gpu.running_jobs))
                for resident in gpu.models:
                    model_vram.samples.append(
                        ((*on_gpu, resident.name, str(resident.state)), resident.vram_bytes)
                    )
            for model in worker.inventory.models:
                of_model = (*pool, worker.pod, model.name)
                resident_gpus.samples.append((of_model, len(model.resident_gpus)))
                loads.samples.append((of_model, model.loads))
                evictions.samples.append((of_model, model.evictions))
                warm_hits.samples.append((of_model, model.warm_hits))
    return [
        queue_depth,
        ready,
        desired,
        vram_total,
        vram_models,
        vram_jobs,
        vram_free,
        vram_evictable,
        running,
        model_vram,
        resident_gpus,
        loads,
        evictions,
        warm_hits,
    ]
