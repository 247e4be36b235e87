"""The placer's view of the models on a worker's GPUs, as the controller reads an inventory."""

from __future__ import annotations

import datetime as dt

import gpufleet_worker.protocol as protocol
from gpufleet.controller.reconcile import _within, gpu_models

GiB = 2**30
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def resident(
    name: str, state: protocol.ModelState = protocol.ModelState.LOADED, **kw
) -> protocol.ResidentModel:
    return protocol.ResidentModel(
        name=name, vram_bytes=2 * GiB, state=state, running_jobs=kw.pop("jobs", 0), **kw
    )


def inventory(models: list[protocol.ResidentModel], infos: list[protocol.ModelInfo]) -> protocol.Inventory:
    gpus = [
        protocol.GpuInfo(
            index=i,
            uuid=f"GPU-{i}",
            product="NVIDIA-L4",
            simulated=True,
            memory_total_bytes=24 * GiB,
            memory_used_bytes=0,
            memory_free_bytes=24 * GiB,
            reserved_bytes=0,
            admittable_bytes=24 * GiB,
            running_jobs=0,
            models=models if i == 0 else [],
        )
        for i in range(2)
    ]
    return protocol.Inventory(worker="w", ready=True, max_jobs_per_gpu=2, gpus=gpus, models=infos, jobs=[])


def info(name: str, state: protocol.ModelState, **kw) -> protocol.ModelInfo:
    return protocol.ModelInfo(
        name=name,
        source=f"s3://m/{name}",
        vram_bytes=2 * GiB,
        tasks=[protocol.Task.TEXT_TO_IMAGE],
        state=state,
        **kw,
    )


def test_only_idle_unpinned_loaded_models_are_evictable_least_recently_used_first() -> None:
    models = [
        resident("newer", last_used_at=T0 + dt.timedelta(minutes=5)),
        resident("older", last_used_at=T0),
        resident("busy", jobs=1),
        resident("pinned", pinned=True),
        resident("loading", protocol.ModelState.LOADING),
    ]
    held, idle = gpu_models(
        inventory(models, [info(m.name, protocol.ModelState.LOADED, resident_gpus=["GPU-0"]) for m in models])
    )
    assert held == {"GPU-0": {"newer", "older", "busy", "pinned", "loading"}, "GPU-1": set()}
    assert list(idle["GPU-0"]) == ["older", "newer"] and idle["GPU-1"] == {}


def test_a_worker_without_models_per_gpu_holds_each_loaded_model_on_every_gpu() -> None:
    held, idle = gpu_models(
        inventory([], [info("a", protocol.ModelState.LOADED), info("b", protocol.ModelState.AVAILABLE)])
    )
    assert held == {"GPU-0": {"a"}, "GPU-1": {"a"}}
    assert idle == {"GPU-0": {}, "GPU-1": {}}  # never evicted by the placer's count


def test_idle_models_beyond_the_reported_room_are_not_counted() -> None:
    assert _within({"a": 4 * GiB, "b": 8 * GiB, "c": 2 * GiB}, 7 * GiB) == (("a", 4 * GiB), ("c", 2 * GiB))
