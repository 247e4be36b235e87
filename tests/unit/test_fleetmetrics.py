"""The fleet's series from the pools' last rounds: DCGM exporter's label names on GPU series,
VRAM split into models, jobs and free, resident models per GPU and the model counters."""

from __future__ import annotations

import datetime as dt

from prometheus_client import REGISTRY

import gpufleet_worker.protocol as protocol
from gpufleet.api.models import GenerationJob
from gpufleet.controller import metrics
from gpufleet.core.fleetmetrics import GPU_LABELS, PoolSeen, families, workers_seen

GiB = 2**30


def gpu(index: int, models: list[protocol.ResidentModel]) -> protocol.GpuInfo:
    held = sum(m.vram_bytes for m in models)
    return protocol.GpuInfo(
        index=index,
        uuid=f"GPU-0000-{index}",
        product="NVIDIA L4",
        simulated=False,
        memory_total_bytes=24 * GiB,
        memory_used_bytes=held + 3 * GiB,
        memory_free_bytes=24 * GiB - held - 3 * GiB,
        reserved_bytes=held + 3 * GiB,
        admittable_bytes=24 * GiB - held - 3 * GiB,
        running_jobs=1,
        models_bytes=held,
        jobs_bytes=3 * GiB,
        evictable_bytes=held,
        models=models,
    )


def inventory() -> protocol.Inventory:
    sdxl = protocol.ResidentModel(
        name="sdxl", vram_bytes=8 * GiB, state=protocol.ModelState.LOADED, running_jobs=1
    )
    return protocol.Inventory(
        worker="sd-0",
        ready=True,
        max_jobs_per_gpu=2,
        gpus=[gpu(0, [sdxl]), gpu(1, [])],
        models=[
            protocol.ModelInfo(
                name="sdxl",
                source="s3://models/sdxl",
                vram_bytes=8 * GiB,
                tasks=[protocol.Task.TEXT_TO_IMAGE],
                state=protocol.ModelState.LOADED,
                resident_gpus=["GPU-0000-0"],
                loads=3,
                evictions=2,
                warm_hits=7,
            )
        ],
        jobs=[],
    )


def by_name(pools: list[PoolSeen]) -> dict[str, list[dict[str, str | float]]]:
    return {
        family.name: [
            {**dict(zip(family.labels, labels, strict=True)), "value": v} for labels, v in family.samples
        ]
        for family in families(pools)
    }


def test_gpu_series_carry_dcgm_exporters_labels_and_split_vram() -> None:
    pods = [
        {"metadata": {"name": "sd-0"}, "spec": {"nodeName": "gpu-node-7"}},
        {"metadata": {"name": "sd-1"}},
    ]
    seen = PoolSeen("studio", "sd", 2, 1, 5, workers_seen(pods, {"sd-0": inventory()}))
    series = by_name([seen])
    # DCGM exporter names a GPU by gpu (NVML index), UUID, modelName and Hostname (the node).
    assert set(GPU_LABELS) >= {"gpu", "UUID", "modelName", "Hostname"}
    [first, second] = series["gpufleet_gpu_vram_total_bytes"]
    assert first == {
        "namespace": "studio",
        "pool": "sd",
        "pod": "sd-0",
        "Hostname": "gpu-node-7",
        "gpu": "0",
        "UUID": "GPU-0000-0",
        "modelName": "NVIDIA L4",
        "value": 24 * GiB,
    }
    assert second["gpu"] == "1"
    assert [s["value"] for s in series["gpufleet_gpu_vram_models_bytes"]] == [8 * GiB, 0]
    assert [s["value"] for s in series["gpufleet_gpu_vram_jobs_bytes"]] == [3 * GiB, 3 * GiB]
    assert [s["value"] for s in series["gpufleet_gpu_vram_free_bytes"]] == [13 * GiB, 21 * GiB]
    [resident] = series["gpufleet_gpu_model_vram_bytes"]
    assert (resident["UUID"], resident["model"], resident["state"], resident["value"]) == (
        "GPU-0000-0",
        "sdxl",
        "Loaded",
        8 * GiB,
    )
    model = {"namespace": "studio", "pool": "sd", "pod": "sd-0", "model": "sdxl"}
    assert series["gpufleet_model_loads"] == [{**model, "value": 3}]
    assert series["gpufleet_model_evictions"] == [{**model, "value": 2}]
    assert series["gpufleet_model_warm_hits"] == [{**model, "value": 7}]
    assert series["gpufleet_model_resident_gpus"] == [{**model, "value": 1}]
    pool = {"namespace": "studio", "pool": "sd"}
    assert series["gpufleet_queue_depth"] == [{**pool, "value": 5}]
    assert series["gpufleet_pool_desired_workers"] == [{**pool, "value": 2}]
    assert series["gpufleet_pool_ready_workers"] == [{**pool, "value": 1}]


def test_free_vram_never_goes_below_zero() -> None:
    over = inventory().model_copy(deep=True)
    over.gpus[0].reserved_bytes = 30 * GiB
    seen = PoolSeen(
        "studio", "sd", 1, 1, 0, workers_seen([{"metadata": {"name": "sd-0"}, "spec": {}}], {"sd-0": over})
    )
    assert by_name([seen])["gpufleet_gpu_vram_free_bytes"][0]["value"] == 0


def job(attempts: int, start: dt.datetime | None) -> GenerationJob:
    return GenerationJob.model_validate(
        {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "GenerationJob",
            "metadata": {
                "name": "a",
                "namespace": "metrics-unit",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {
                "poolRef": {"name": "sd"},
                "task": "text-to-image",
                "model": "tiny-sd",
                "input": {"prompt": "x"},
                "output": {"uri": "s3://bucket/out/"},
            },
            "status": {"attempts": attempts, **({"startTime": start.isoformat()} if start else {})},
        }
    )


def test_queue_wait_counts_first_dispatches_and_run_time_needs_a_start() -> None:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    wait = {"namespace": "metrics-unit", "pool": "sd", "task": "text-to-image"}
    metrics.dispatched(job(1, created), created + dt.timedelta(seconds=40))
    metrics.dispatched(job(2, created), created + dt.timedelta(seconds=90))  # a retry: not a queue wait
    assert REGISTRY.get_sample_value("gpufleet_job_queue_wait_seconds_count", wait) == 1
    assert REGISTRY.get_sample_value("gpufleet_job_queue_wait_seconds_sum", wait) == 40
    run = {**wait, "outcome": "failed"}
    metrics.finished(job(0, None), "failed", created)  # never dispatched: counted, no run time
    assert REGISTRY.get_sample_value("gpufleet_job_run_seconds_count", run) is None
    metrics.finished(job(1, created), "failed", created + dt.timedelta(seconds=12))
    assert REGISTRY.get_sample_value("gpufleet_job_run_seconds_sum", run) == 12
    finished = {"namespace": "metrics-unit", "pool": "sd", "outcome": "failed"}
    assert REGISTRY.get_sample_value("gpufleet_jobs_finished_total", finished) == 2
    pool = {"namespace": "metrics-unit", "pool": "sd"}
    metrics.ROUND_SECONDS.labels("metrics-unit", "sd").observe(0.02)
    assert REGISTRY.get_sample_value("gpufleet_round_seconds_count", pool) == 1
    metrics.forget_pool("metrics-unit", "sd")
    assert REGISTRY.get_sample_value("gpufleet_round_seconds_count", pool) is None
    assert REGISTRY.get_sample_value("gpufleet_jobs_finished_total", finished) is None
    assert REGISTRY.get_sample_value("gpufleet_job_queue_wait_seconds_count", wait) is None
