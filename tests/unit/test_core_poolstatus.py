"""A pool's status (gpufleet.core.poolstatus): counts, the per-worker view and kstatus conditions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.api.conditions import ConditionType, JobPhase, Reason
from gpufleet.api.models import WorkerPool, WorkerPoolStatus
from gpufleet.core.poolstatus import pool_status
from gpufleet_worker import protocol

GiB = 2**30
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workerpool.yaml"
T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
SELECTOR = "app.kubernetes.io/name=gpufleet-worker,gpufleet.io/pool=sd15"


def pool(conditions: list[dict[str, Any]] | None = None, generation: int = 4) -> WorkerPool:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    return WorkerPool.model_validate(
        {
            "metadata": {"name": "sd15", "namespace": "studio", "uid": "u", "generation": generation},
            "spec": spec,
            "status": {"conditions": conditions or []},
        }
    )


def pod(name: str, node: str | None = "gpu-node-0") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"nodeName": node} if node else {}}


def inventory(
    name: str, *, reserved_gib: int = 6, jobs: int = 1, models: tuple[str, ...] = ("tiny-sd",)
) -> protocol.Inventory:
    total = 24 * GiB
    return protocol.Inventory(
        worker=name,
        ready=True,
        max_jobs_per_gpu=4,
        gpus=[
            protocol.GpuInfo(
                index=0,
                uuid=f"GPU-{name}",
                product="NVIDIA-L4",
                simulated=True,
                memory_total_bytes=total,
                memory_used_bytes=reserved_gib * GiB,
                memory_free_bytes=total - reserved_gib * GiB,
                reserved_bytes=reserved_gib * GiB,
                admittable_bytes=total - reserved_gib * GiB,
                running_jobs=jobs,
                models_bytes=2 * GiB * len(models),
                jobs_bytes=reserved_gib * GiB - 2 * GiB * len(models),
                models=[
                    protocol.ResidentModel(
                        name=model,
                        vram_bytes=2 * GiB,
                        state=protocol.ModelState.LOADED if index == 0 else protocol.ModelState.LOADING,
                        running_jobs=0,
                    )
                    for index, model in enumerate(models)
                ],
            )
        ],
        models=[
            protocol.ModelInfo(
                name=model,
                source=f"builtin://{model}",
                vram_bytes=2 * GiB,
                tasks=[protocol.Task.TEXT_TO_IMAGE],
                state=protocol.ModelState.LOADED if index == 0 else protocol.ModelState.LOADING,
            )
            for index, model in enumerate(models)
        ],
        jobs=[],
    )


def job(name: str, phase: JobPhase | None, worker: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {} if phase is None else {"phase": phase.value}
    if worker is not None:
        status["worker"] = {"pod": worker}
    return {"metadata": {"name": name, "namespace": "studio"}, "status": status}


def status_of(
    *,
    active: int = 2,
    ready: int = 2,
    desired: int = 2,
    jobs: list[dict[str, Any]] | None = None,
    unschedulable: bool = False,
    wp: WorkerPool | None = None,
    now: dt.datetime = T0,
    queue_depth: int = 0,
) -> dict[str, Any]:
    pods = [pod(f"sd15-{i}") for i in range(active)]
    return pool_status(
        wp or pool(),
        pods,
        pods[:ready],
        {p["metadata"]["name"]: inventory(p["metadata"]["name"]) for p in pods[:ready]},
        jobs or [],
        desired,
        queue_depth,
        SELECTOR,
        now,
        unschedulable,
    )


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# --- counts and the per-worker view -----------------------------------------------------------


def test_counts_selector_and_generation() -> None:
    jobs = [
        job("a", JobPhase.RUNNING, "sd15-0"),
        job("b", JobPhase.DISPATCHED, "sd15-0"),
        job("c", JobPhase.RUNNING, "sd15-1"),
        job("queued", JobPhase.QUEUED),
        job("done", JobPhase.SUCCEEDED, "sd15-1"),
        job("new", None),
    ]
    status = status_of(active=3, ready=2, desired=3, jobs=jobs, queue_depth=7)
    assert {k: v for k, v in status.items() if k not in ("workers", "models", "conditions")} == {
        "observedGeneration": 4,
        "replicas": 3,
        "desiredReplicas": 3,
        "readyReplicas": 2,
        "selector": SELECTOR,
        "queueDepth": 7,
        "runningJobs": 3,
    }
    assert [w["jobs"] for w in status["workers"]] == [["a", "b"], ["c"], []]


def test_the_worker_view_comes_from_the_inventory() -> None:
    pods = [pod("sd15-1"), pod("sd15-0", node=None)]
    status = pool_status(
        pool(),
        pods,
        pods,
        {"sd15-1": inventory("sd15-1", reserved_gib=10, models=("tiny-sd", "sdxl"))},
        [],
        2,
        0,
        SELECTOR,
        T0,
        False,
    )
    unreported, reported = status["workers"]  # sorted by pod name
    assert unreported == {"pod": "sd15-0", "ready": False, "gpus": [], "loadedModels": [], "jobs": []}
    assert reported == {
        "pod": "sd15-1",
        "node": "gpu-node-0",
        "ready": True,
        "gpus": [
            {
                "id": "GPU-sd15-1",
                "product": "NVIDIA-L4",
                "memoryTotal": str(24 * GiB),
                "memoryReserved": str(10 * GiB),
                "memoryFree": str(14 * GiB),
                "memoryModels": str(4 * GiB),  # resident and loading models hold their VRAM
                "memoryJobs": str(6 * GiB),
                "models": ["sdxl", "tiny-sd"],
            }
        ],
        "loadedModels": ["tiny-sd"],  # sdxl is still loading
        "jobs": [],
    }
    assert status["readyReplicas"] == 1  # a ready pod whose worker did not answer is not ready


def test_an_inventory_without_a_ready_pod_does_not_make_a_worker_ready() -> None:
    pods = [pod("sd15-0")]
    status = pool_status(pool(), pods, [], {"sd15-0": inventory("sd15-0")}, [], 1, 0, SELECTOR, T0, False)
    assert status["workers"][0]["ready"] is False
    assert status["readyReplicas"] == 0


# --- conditions -------------------------------------------------------------------------------


def test_all_workers_ready() -> None:
    assert conditions(status_of()) == {
        "Ready": ("True", Reason.WORKERS_READY),
        "Reconciling": ("False", Reason.WORKERS_READY),
        "Stalled": ("False", Reason.WORKERS_READY),
        "Scaling": ("False", Reason.RECONCILED),
        "Degraded": ("False", Reason.WORKERS_READY),
    }


def test_scaled_to_zero_is_ready() -> None:
    status = status_of(active=0, ready=0, desired=0)
    assert conditions(status)["Ready"] == ("True", Reason.SCALED_TO_ZERO)
    assert conditions(status)["Reconciling"][0] == "False"


def test_workers_starting() -> None:
    status = status_of(active=2, ready=0, desired=2)
    got = conditions(status)
    assert got["Ready"] == ("False", Reason.WORKERS_STARTING)
    assert got["Reconciling"] == ("True", Reason.WORKERS_STARTING)
    assert got["Degraded"][0] == "False"  # nothing serves yet: starting, not degraded
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert message == "0 of 2 workers ready"


def test_fewer_ready_than_desired_is_degraded() -> None:
    got = conditions(status_of(active=2, ready=1, desired=2))
    assert got["Degraded"] == ("True", Reason.WORKERS_STARTING)
    assert got["Ready"][0] == "False"


def test_scaling_up() -> None:
    got = conditions(status_of(active=1, ready=1, desired=3))
    assert got["Scaling"] == ("True", Reason.SCALING_UP)
    assert got["Ready"][0] == "False" and got["Reconciling"][0] == "True"


@pytest.mark.parametrize(("active", "desired"), [(3, 2), (1, 0)])
def test_scaling_down_says_so_rather_than_ready_or_scaled_to_zero(active: int, desired: int) -> None:
    status = status_of(active=active, ready=active, desired=desired)
    got = conditions(status)
    assert got["Scaling"] == ("True", Reason.SCALING_DOWN)
    assert got["Ready"] == ("False", Reason.SCALING_DOWN)
    assert got["Reconciling"] == ("True", Reason.SCALING_DOWN)
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert f"{active} workers, {desired} desired" in message


def test_pods_that_cannot_be_scheduled_stall_the_pool() -> None:
    status = status_of(active=2, ready=1, desired=2, unschedulable=True)
    got = conditions(status)
    assert got["Stalled"] == ("True", Reason.INSUFFICIENT_GPUS)
    assert got["Ready"][0] == "False"
    assert got["Reconciling"][0] == "False"  # kstatus: stalled, not in progress
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Stalled")
    assert "spec.gpu" in message


def test_transition_times_move_only_when_a_status_changes() -> None:
    earlier = status_of(active=2, ready=1, desired=2, now=T0)
    later = T0 + dt.timedelta(minutes=5)
    now_ready = status_of(active=2, ready=2, desired=2, wp=pool(earlier["conditions"]), now=later)
    times = {c["type"]: c["lastTransitionTime"] for c in now_ready["conditions"]}
    before = {c["type"]: c["lastTransitionTime"] for c in earlier["conditions"]}
    assert times["Ready"] != before["Ready"]  # False -> True
    assert times["Degraded"] != before["Degraded"]  # True -> False
    assert times["Stalled"] == before["Stalled"]  # False all along
    assert times["Scaling"] == before["Scaling"]
    again = status_of(
        active=2, ready=2, desired=2, wp=pool(now_ready["conditions"]), now=later + dt.timedelta(hours=1)
    )
    assert again == now_ready  # nothing changed: the same status, so nothing to write


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    active=st.integers(0, 5),
    ready_share=st.integers(0, 5),
    desired=st.integers(0, 5),
    unschedulable=st.booleans(),
    placements=st.lists(st.tuples(st.sampled_from(list(JobPhase)), st.integers(-1, 5)), max_size=12),
)
def test_status_is_valid_and_kstatus_consistent(
    active: int, ready_share: int, desired: int, unschedulable: bool, placements: list[tuple[JobPhase, int]]
) -> None:
    ready = min(active, ready_share)
    unschedulable = unschedulable and ready < active  # a pod that cannot be scheduled is not ready
    jobs = [
        job(f"j{i}", phase, None if index < 0 else f"sd15-{index}")
        for i, (phase, index) in enumerate(placements)
    ]
    status = status_of(active=active, ready=ready, desired=desired, jobs=jobs, unschedulable=unschedulable)
    WorkerPoolStatus.model_validate(status)  # the shape the CRD's status schema accepts
    got = conditions(status)
    assert set(got) == {t.value for t in ConditionType}
    is_ready, reconciling, stalled = (got[t][0] == "True" for t in ("Ready", "Reconciling", "Stalled"))
    assert not (is_ready and (reconciling or stalled))
    assert not (reconciling and stalled)
    assert is_ready == (ready >= desired and active == desired)
    assert stalled == unschedulable
    assert (got["Scaling"][0] == "True") == (active != desired)
    assert status["readyReplicas"] == ready <= status["replicas"] == active
    running = [j for j in jobs if j["status"].get("phase") in (JobPhase.DISPATCHED, JobPhase.RUNNING)]
    assert status["runningJobs"] == len(running)
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])


def conditions_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


@pytest.mark.parametrize(
    ("waiting", "restarts", "expected"),
    [
        (
            {"reason": "CreateContainerConfigError", "message": 'configmap "studio-env" not found'},
            0,
            'cannot start: CreateContainerConfigError (configmap "studio-env" not found)',
        ),
        ({"reason": "ImagePullBackOff"}, 0, "cannot start: ImagePullBackOff"),
        ({"reason": "CrashLoopBackOff"}, 4, "restarted 4 times"),
        ({}, 0, None),  # starting normally: not failing
    ],
)
def test_workers_that_cannot_start_or_keep_crashing_make_the_pool_say_workers_failing(
    waiting: dict[str, str], restarts: int, expected: str | None
):
    worker = pod("sd15-0")
    worker["status"] = {
        "containerStatuses": [{"name": "worker", "restartCount": restarts, "state": {"waiting": waiting}}]
    }
    status = pool_status(pool(), [worker], [], {}, [], 1, 0, SELECTOR, T0, False)
    ready = conditions_of(status)[ConditionType.READY]
    if expected is None:
        assert ready["reason"] == Reason.WORKERS_STARTING
        return
    assert ready["reason"] == Reason.WORKERS_FAILING
    assert "sd15-0" in ready["message"] and expected in ready["message"], ready["message"]
    assert conditions_of(status)[ConditionType.DEGRADED]["status"] == "True"


def test_refused_worker_pods_make_the_pool_stalled_with_the_api_servers_words():
    message = 'pods "sd15-0" is forbidden: no PriorityClass with name gpu-high was found'
    status = pool_status(pool(), [], [], {}, [], 1, 0, SELECTOR, T0, False, None, message)
    found = conditions_of(status)
    assert found[ConditionType.STALLED]["status"] == "True"
    assert found[ConditionType.STALLED]["reason"] == Reason.WORKER_POD_REFUSED
    assert message in found[ConditionType.READY]["message"]
    assert found[ConditionType.RECONCILING]["status"] == "False"


def test_s3_models_without_s3_credentials_make_the_pool_degraded_naming_them():
    from gpufleet.core.poolstatus import missing_s3_credentials

    spec = pool().spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    spec["runtime"] = "diffusers"
    spec["models"] = [
        {"name": "sd15", "source": "file:///models/sd15", "vram": "2Gi"},
        {"name": "dream", "source": "s3://models/dream", "vram": "2Gi"},
        {"name": "xl", "source": "s3://models/xl", "vram": "2Gi"},
    ]
    wp = WorkerPool.model_validate({"metadata": pool().metadata, "spec": spec})
    assert missing_s3_credentials(wp, "s3-credentials") is None
    assert missing_s3_credentials(pool(), None) is None  # no s3:// models, nothing to download
    problem = missing_s3_credentials(wp, None)
    assert problem is not None and problem.startswith(
        "models dream, xl come from s3:// but the workers get no S3"
    )
    assert "--worker-s3-secret" in problem

    pods = [pod("sd15-0")]
    invs = {"sd15-0": inventory("sd15-0")}
    problems = [(Reason.S3_CREDENTIALS_MISSING, problem)]
    status = pool_status(wp, pods, pods, invs, [], 1, 0, SELECTOR, T0, False, None, None, problems)
    found = conditions_of(status)
    assert found[ConditionType.DEGRADED]["status"] == "True"
    assert found[ConditionType.DEGRADED]["reason"] == Reason.S3_CREDENTIALS_MISSING
    assert found[ConditionType.DEGRADED]["message"] == problem
    assert found[ConditionType.READY]["status"] == "True"  # its other models are served
    healthy = pool_status(wp, pods, pods, invs, [], 1, 0, SELECTOR, T0, False)
    assert conditions_of(healthy)[ConditionType.DEGRADED]["status"] == "False"


# --- per model ---------------------------------------------------------------------------------


def model_info(name: str, state: protocol.ModelState, **kw: Any) -> protocol.ModelInfo:
    return protocol.ModelInfo(
        name=name,
        source=f"s3://models/{name}",
        vram_bytes=2 * GiB,
        tasks=[protocol.Task.TEXT_TO_IMAGE],
        state=state,
        **kw,
    )


def test_each_served_model_sums_its_copies_loads_evictions_warm_hits_and_failures() -> None:
    wp = pool()
    wp.spec.models = [
        wp.spec.models[0].model_copy(update={"name": name}) for name in ("hot", "cold", "broken", "idle")
    ]
    a, b = inventory("sd15-0"), inventory("sd15-1")
    a.models = [
        model_info(
            "hot",
            protocol.ModelState.LOADED,
            resident_gpus=["GPU-sd15-0"],
            loads=3,
            evictions=1,
            warm_hits=40,
        ),
        model_info("cold", protocol.ModelState.LOADING, loading_gpus=["GPU-sd15-0"], loads=1),
        model_info("broken", protocol.ModelState.FAILED, message="s3://models/broken: NoSuchKey"),
        model_info("not-served", protocol.ModelState.LOADED, resident_gpus=["GPU-sd15-0"]),
    ]
    b.models = [
        model_info("hot", protocol.ModelState.LOADED, resident_gpus=["GPU-sd15-1"], loads=1, warm_hits=9),
        model_info("cold", protocol.ModelState.AVAILABLE, evictions=2),
        model_info("broken", protocol.ModelState.FAILED, message="digest mismatch"),
    ]
    pods = [pod("sd15-0"), pod("sd15-1")]
    status = pool_status(wp, pods, pods, {"sd15-1": b, "sd15-0": a}, [], 2, 0, SELECTOR, T0, False)
    assert status["models"] == [
        {"name": "hot", "resident": 2, "loads": 4, "evictions": 1, "warmHits": 49},
        {"name": "cold", "loading": 1, "loads": 1, "evictions": 2},
        {"name": "broken", "failed": 2, "message": "s3://models/broken: NoSuchKey"},
        {"name": "idle"},
    ]
    WorkerPoolStatus.model_validate(status)  # the CRD's schema takes it


def test_a_worker_that_reports_no_gpus_per_model_holds_a_loaded_one_on_each_gpu() -> None:
    status = status_of(active=2, ready=2)
    assert status["models"] == [{"name": "tiny-sd", "resident": 2}]
