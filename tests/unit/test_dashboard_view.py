"""What the dashboard shows (gpufleet.client.dashboard.view): pools and VRAM bars, models,
the queue with reasons, jobs with progress, durations and previews, the last hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.api.models import GenerationJob, GpuStatus, WorkerPool
from gpufleet.client.dashboard import view

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
GIB = 2**30


def stamp(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: str, reason: str, message: str = "", minutes_ago: float = 3) -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": stamp(minutes_ago),
    }


def pool(name: str = "sd", status: dict | None = None, namespace: str = "studio") -> WorkerPool:
    return WorkerPool.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {
                "image": "ghcr.io/gpufleet/worker:0.1.0",
                "models": [
                    {"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "1Gi"},
                    {"name": "sdxl", "source": "builtin://tiny-sd", "vram": "6Gi"},
                ],
                "tasks": ["text-to-image"],
                "replicas": 2,
            },
            "status": status or {},
        }
    )


def job(name: str, status: dict | None = None, created: float = 10, **spec: Any) -> GenerationJob:
    return GenerationJob.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "studio",
                "generation": 1,
                "creationTimestamp": stamp(created),
            },
            "spec": {
                "poolRef": {"name": "sd"},
                "task": "text-to-image",
                "model": "tiny-sd",
                "input": {"prompt": "p"},
                "output": {"uri": "s3://bucket/out/"},
                **spec,
            },
            "status": status or {},
        }
    )


def gpu(**fields: Any) -> GpuStatus:
    return GpuStatus.model_validate(
        {"id": "GPU-1", "product": "NVIDIA-L4", "memoryTotal": str(16 * GIB), **fields}
    )


def kinds(shown: dict) -> list[tuple[str, str, int]]:
    return [(s["kind"], s["name"], s["bytes"]) for s in shown["segments"]]


@pytest.mark.parametrize(
    ("fields", "loaded", "segments", "label"),
    [
        (  # the operator's split: a segment per resident model at its declared size
            {
                "memoryReserved": str(10 * GIB),
                "memoryModels": str(7 * GIB),
                "memoryJobs": str(3 * GIB),
                "models": ["sdxl", "tiny-sd"],
            },
            [],
            [
                ("model", "sdxl", 6 * GIB),
                ("model", "tiny-sd", GIB),
                ("jobs", "jobs", 3 * GIB),
                ("free", "free", 6 * GIB),
            ],
            "models 7.0Gi · jobs 3.0Gi · free 6.0Gi of 16.0Gi",
        ),
        (  # an idle GPU
            {"memoryReserved": "0", "memoryModels": "0", "memoryJobs": "0", "models": []},
            ["tiny-sd"],
            [("jobs", "jobs", 0), ("free", "free", 16 * GIB)],
            "models 0B · jobs 0B · free 16.0Gi of 16.0Gi",
        ),
        (  # a model the pool no longer declares: its bytes still show, unnamed
            {
                "memoryReserved": str(2 * GIB),
                "memoryModels": str(2 * GIB),
                "memoryJobs": "0",
                "models": ["gone"],
            },
            [],
            [("model", "models", 2 * GIB), ("jobs", "jobs", 0), ("free", "free", 14 * GIB)],
            "models 2.0Gi · jobs 0B · free 14.0Gi of 16.0Gi",
        ),
        (  # a status from before the split: the worker's loaded models at their size, jobs the rest
            {"memoryReserved": str(4 * GIB)},
            ["tiny-sd"],
            [("model", "tiny-sd", GIB), ("jobs", "jobs", 3 * GIB), ("free", "free", 12 * GIB)],
            "models 1.0Gi · jobs 3.0Gi · free 12.0Gi of 16.0Gi",
        ),
        (  # figures that overflow the GPU are clipped, never a bar over 100%
            {"memoryReserved": str(40 * GIB), "memoryModels": str(20 * GIB), "memoryJobs": str(20 * GIB)},
            [],
            [("model", "models", 16 * GIB), ("jobs", "jobs", 0), ("free", "free", 0)],
            "models 16.0Gi · jobs 0B · free 0B of 16.0Gi",
        ),
    ],
)
def test_vram_bar_splits_models_jobs_and_free(
    fields: dict, loaded: list[str], segments: list[tuple[str, str, int]], label: str
) -> None:
    shown = view.vram(gpu(**fields), {"tiny-sd": GIB, "sdxl": 6 * GIB}, loaded)
    assert kinds(shown) == segments
    assert shown["label"] == label
    assert sum(s["percent"] for s in shown["segments"]) == pytest.approx(100, abs=0.05)


def test_a_gpu_without_a_total_shows_an_empty_bar() -> None:
    shown = view.vram(GpuStatus(id="GPU-x", product="?"), {}, [])
    assert [s["percent"] for s in shown["segments"]] == [0.0, 0.0]


WORKER = {
    "pod": "sd-0",
    "node": "gpu-node-0",
    "ready": True,
    "jobs": ["a"],
    "gpus": [
        {
            "id": "GPU-1",
            "product": "NVIDIA-L4",
            "memoryTotal": str(16 * GIB),
            "memoryReserved": str(2 * GIB),
            "memoryModels": str(GIB),
            "memoryJobs": str(GIB),
            "models": ["tiny-sd"],
        }
    ],
    "loadedModels": ["tiny-sd"],
}


@pytest.mark.parametrize(
    ("conditions", "health"),
    [
        ([condition("Ready", "True", "WorkersReady", "2 of 2 workers ready")], "ok"),
        ([condition("Ready", "False", "WorkersStarting", "1 of 2 workers ready")], "busy"),
        (
            [
                condition("Ready", "False", "InsufficientGPUs", "no node has free GPUs"),
                condition("Stalled", "True", "InsufficientGPUs", "no node has free GPUs"),
            ],
            "error",
        ),
        ([], "busy"),
    ],
)
def test_pool_health_follows_its_conditions(conditions: list[dict], health: str) -> None:
    shown = view.pools_view([pool(status={"conditions": conditions})], NOW)[0]
    assert shown["health"] == health
    if conditions:
        assert shown["summary"] == conditions[0]["message"]
        assert shown["conditions"][0]["since"] == "3m00s"
    else:
        assert shown["summary"] == "no status from the operator yet"


def test_pools_show_counts_workers_and_their_gpus() -> None:
    status = {
        "replicas": 2,
        "desiredReplicas": 3,
        "readyReplicas": 1,
        "queueDepth": 4,
        "runningJobs": 1,
        "workers": [WORKER, {"pod": "sd-1", "ready": False}],
    }
    (shown,) = view.pools_view([pool(status=status)], NOW)
    assert {
        k: shown[k] for k in ("namespace", "name", "ready", "desired", "replicas", "queue", "running")
    } == {
        "namespace": "studio",
        "name": "sd",
        "ready": 1,
        "desired": 3,
        "replicas": 2,
        "queue": 4,
        "running": 1,
    }
    first, second = shown["workers"]
    assert (first["pod"], first["ready"], first["jobs"]) == ("sd-0", True, ["a"])
    assert kinds(first["gpus"][0])[:2] == [("model", "tiny-sd", GIB), ("jobs", "jobs", GIB)]
    assert (second["gpus"], second["node"]) == ([], "")
    # Without desiredReplicas yet, spec.replicas is what is wanted.
    assert view.pools_view([pool()], NOW)[0]["desired"] == 2


def test_models_say_where_they_are_resident() -> None:
    other = {**WORKER, "pod": "sd-1", "gpus": [{**WORKER["gpus"][0], "id": "GPU-2", "models": []}]}
    shown = view.models_view([pool(status={"workers": [WORKER, other]})])
    assert [(m["name"], m["where"], m["vramBytes"]) for m in shown] == [
        ("sdxl", [], 6 * GIB),
        ("tiny-sd", ["sd-0 gpu 0"], GIB),
    ]


QUEUED = {"phase": "Queued", "reason": "Queued"}


def test_the_queue_is_in_order_with_why_each_job_waits() -> None:
    stalled = {
        "phase": "Pending",
        "reason": "Unschedulable",
        "message": "needs 80Gi",
        "conditions": [
            condition("Stalled", "True", "Unschedulable", "needs 80Gi of VRAM; the largest GPU has 24Gi")
        ],
    }
    jobs = [
        job("third", {**QUEUED, "queuePosition": 2}, created=1),
        job("first", {**QUEUED, "queuePosition": 0}, created=2),
        job("huge", stalled, created=9),
        job("second", {**QUEUED, "queuePosition": 1}, created=3),
        job(
            "orphan",
            {"phase": "Pending", "conditions": [condition("Stalled", "True", "PoolNotFound", "no pool x")]},
            poolRef={"name": "x"},
        ),
        job("running", {"phase": "Running"}),
        job("done", {"phase": "Succeeded"}),
        job("new", None, created=0.5),
    ]
    shown = view.queue_view(jobs, NOW)
    assert [(q["pool"], q["name"], q["position"], q["reason"], q["blocked"]) for q in shown] == [
        ("sd", "first", 0, "Queued", False),
        ("sd", "second", 1, "Queued", False),
        ("sd", "third", 2, "Queued", False),
        ("sd", "huge", None, "Unschedulable", True),
        ("sd", "new", None, "Pending", False),
        ("x", "orphan", None, "PoolNotFound", True),
    ]
    assert shown[0]["message"] == "position 0 in pool sd" and shown[0]["waiting"] == "2m00s"
    assert shown[3]["message"] == "needs 80Gi of VRAM; the largest GPU has 24Gi"
    assert shown[4]["message"] == "not yet admitted to its pool's queue"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {
                "phase": "Running",
                "startTime": stamp(2),
                "progress": {"percent": 40, "step": 8, "totalSteps": 20},
                "worker": {"pod": "sd-0", "gpu": "GPU-1"},
            },
            {
                "phase": "Running",
                "percent": 40,
                "step": 8,
                "waited": "8m00s",
                "ran": "2m00s",
                "worker": "sd-0",
                "gpu": "GPU-1",
            },
        ),
        (
            {
                "phase": "Succeeded",
                "startTime": stamp(9),
                "completionTime": stamp(8.5),
                "progress": {"percent": 95},
            },
            {"phase": "Succeeded", "percent": 100, "finished": True, "ran": "30s"},
        ),
        (
            {
                "phase": "Failed",
                "reason": "OutOfMemory",
                "message": "CUDA out of memory",
                "startTime": stamp(9),
                "completionTime": stamp(8),
            },
            {"reason": "OutOfMemory", "message": "CUDA out of memory", "percent": 0, "finished": True},
        ),
        (
            {
                "phase": "Pending",
                "conditions": [condition("Stalled", "True", "ModelNotServed", "not served")],
            },
            {"stalled": True, "reason": "ModelNotServed", "ran": "", "waited": ""},
        ),
    ],
)
def test_job_rows(status: dict, expected: dict) -> None:
    shown = view.job_view(job("a", status), NOW)
    assert {k: shown[k] for k in expected} == expected
    assert shown["age"] == "10m00s"


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        ("image/png", "image"),
        ("image/svg+xml", "image"),  # shown in <img>: its scripts never run
        ("text/plain", "text"),
        ("application/json", "text"),
        ("application/octet-stream", "file"),
    ],
)
def test_artifacts_are_previewed_by_kind_through_the_dashboards_redirect(media_type: str, kind: str) -> None:
    artifact = {
        "name": "out-0.x",
        "url": "s3://bucket/out/a/out-0.x",
        "mediaType": media_type,
        "sizeBytes": 10,
        "sha256": "a" * 64,
    }
    shown = view.job_view(job("a b", {"phase": "Succeeded", "artifacts": [artifact]}), NOW)
    assert shown["artifacts"] == [
        {
            "name": "out-0.x",
            "mediaType": media_type,
            "sizeBytes": 10,
            "kind": kind,
            "href": "/artifacts/studio/a%20b/out-0.x",
        }
    ]


def test_jobs_running_first_then_newest_and_bounded() -> None:
    finished = [
        job(f"old-{i}", {"phase": "Succeeded", "completionTime": stamp(300 + i)}, created=400 + i)
        for i in range(view.MAX_JOBS_SHOWN + 5)
    ]
    running = job("busy", {"phase": "Running"}, created=1)
    shown = view.jobs_view([*finished, running], NOW)
    assert len(shown) == view.MAX_JOBS_SHOWN
    assert [j["name"] for j in shown[:3]] == ["busy", "old-0", "old-1"]


def test_history_counts_finished_jobs_per_minute_and_wait_times() -> None:
    jobs = [
        job("ok1", {"phase": "Succeeded", "startTime": stamp(3), "completionTime": stamp(0.5)}, created=4),
        job("ok2", {"phase": "Succeeded", "startTime": stamp(2), "completionTime": stamp(0.2)}, created=5),
        job("bad", {"phase": "Failed", "startTime": stamp(10), "completionTime": stamp(9.5)}, created=10.5),
        job(
            "ancient",
            {"phase": "Succeeded", "startTime": stamp(90), "completionTime": stamp(80)},
            created=100,
        ),
        job("running", {"phase": "Running", "startTime": stamp(1)}, created=1.5),
        job("queued", {"phase": "Queued"}, created=1),
    ]
    shown = view.history_view(jobs, NOW)
    assert len(shown["succeeded"]) == len(shown["unsuccessful"]) == 60
    assert shown["succeeded"][59] == 2 and shown["unsuccessful"][50] == 1
    assert shown["finished"] == 3 and shown["jobsPerMinute"] == 0.05
    # Waits: ok1 60s, ok2 180s, bad 30s, running 30s (ancient started before the hour).
    assert shown["started"] == 4
    assert (shown["waitP50"], shown["waitP95"]) == ("30s", "3m00s")
    assert shown["meanWaitSeconds"][57:59] == [60.0, 180.0] and shown["meanWaitSeconds"][0] is None


def test_an_empty_fleet_and_the_problems_reading_it() -> None:
    fleet = view.Fleet(
        scope="namespace studio",
        problems={"generationjobs": "no permission to watch generationjobs.gpufleet.io"},
        connected=False,
    )
    shown = view.page(fleet, NOW)
    assert shown["problems"] == [
        {"resource": "generationjobs", "message": "no permission to watch generationjobs.gpufleet.io"}
    ]
    assert (shown["connected"], shown["pools"], shown["jobs"], shown["queue"]) == (False, [], [], [])
    assert shown["history"]["waitP50"] == "" and shown["now"] == "2026-12-02T12:00:00Z"


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, ""), (0, "0s"), (59.9, "59s"), (125, "2m05s"), (3725, "1h02m")]
)
def test_durations(seconds: float | None, text: str) -> None:
    assert view.duration_text(seconds) == text
