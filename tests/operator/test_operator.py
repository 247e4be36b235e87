"""The operator on the real control plane, with real worker processes and the real S3 server."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import httpx
import pytest
from kubernetes import client, watch

from gpufleet import labels
from gpufleet.localcluster.fleet import OperatorProcess
from gpufleet.localcluster.processes import pod_process_ids
from gpufleet.localcluster.waiting import wait_for
from tests.conftest import S3_SECRET

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3]


def worker_pids(pod_name: str) -> list[int]:
    return pod_process_ids(pod_name, "gpufleet-worker")


def test_jobs_run_in_priority_order_without_overcommit_and_artifacts_match(fleet, s3_server):
    priorities = [0, 10, 5, 0, 10, 5, 0, 10, 5, 0, 10, 5, 0, 10, 5, 0, 10, 5, 100, -5]
    fleet.pool("sd", replicas=0, min_memory="20Gi", max_jobs_per_gpu=2)
    for i, priority in enumerate(priorities):  # all queued before any worker exists
        fleet.job(f"j{i}", priority=priority, steps=6)
    for i in range(len(priorities)):
        fleet.wait_phase(f"j{i}", "Queued")
    fleet.custom.patch_namespaced_custom_object_scale(
        "gpufleet.io", "v1alpha1", fleet.namespace, "workerpools", "sd", {"spec": {"replicas": 2}}
    )

    dispatch_order: list[str] = []
    samples: list[str] = []
    done = threading.Event()

    def record_dispatches() -> None:
        # A watch delivers every status change in order, so no dispatch slips between samples.
        seen: set[str] = set()
        stream = watch.Watch()
        events = stream.stream(
            fleet.custom.list_namespaced_custom_object,
            "gpufleet.io",
            "v1alpha1",
            fleet.namespace,
            "generationjobs",
            timeout_seconds=300,
        )
        try:
            for event in events:
                job = event["object"]
                name, phase = job["metadata"]["name"], job.get("status", {}).get("phase")
                if phase in ("Dispatched", "Running", "Succeeded") and name not in seen:
                    seen.add(name)
                    dispatch_order.append(name)
                if len(seen) == len(priorities):
                    return
        finally:
            stream.stop()

    def sample_inventories() -> None:
        while not done.is_set():
            for inventory in fleet.inventories("sd"):
                for gpu in inventory.gpus:
                    if (
                        gpu.reserved_bytes > gpu.memory_total_bytes
                        or gpu.running_jobs > inventory.max_jobs_per_gpu
                    ):
                        samples.append(f"{inventory.worker} {gpu.uuid}: {gpu}")
            time.sleep(0.2)

    watchers = [
        threading.Thread(target=record_dispatches, daemon=True),
        threading.Thread(target=sample_inventories, daemon=True),
    ]
    for watcher in watchers:
        watcher.start()
    try:
        for i in range(len(priorities)):
            fleet.wait_phase(f"j{i}", "Succeeded", timeout=240)
    finally:
        done.set()
        watchers[1].join(5)
    wait_for(
        lambda: dispatch_order, lambda seen: len(seen) == len(priorities), 30, what="every dispatch watched"
    )

    assert samples == [], "a GPU was over-committed"
    for pod in fleet.worker_pods("sd"):
        node = fleet.core.read_node(pod.spec.node_name)
        assert int(node.metadata.labels[labels.GPU_MEMORY_MIB]) >= 20 * 1024
    # The highest priorities went first: every priority-10+ job before any priority-0 or lower one.
    rank = {name: dispatch_order.index(name) for name in dispatch_order}
    high = [f"j{i}" for i, p in enumerate(priorities) if p >= 10]
    low = [f"j{i}" for i, p in enumerate(priorities) if p <= 0]
    assert max(rank[n] for n in high) < min(rank[n] for n in low), dispatch_order
    assert rank["j18"] < 4, dispatch_order  # priority 100: in the first round (2 workers x 2 slots)

    s3 = s3_server.client()
    for i in range(len(priorities)):
        status = fleet.get_job(f"j{i}")["status"]
        assert status["attempts"] == 1 and status["reason"] == "Completed"
        assert [c["type"] for c in status["conditions"] if c["status"] == "True"] == ["Ready"]
        for artifact in status["artifacts"]:
            bucket, key = artifact["url"].removeprefix("s3://").split("/", 1)
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
            assert len(data) == artifact["sizeBytes"]
    pool = fleet.get_pool("sd")["status"]
    assert pool["readyReplicas"] == 2 and pool["replicas"] == 2
    assert pool["selector"] == "app.kubernetes.io/name=gpufleet-worker,gpufleet.io/pool=sd"
    assert {w["gpus"][0]["product"] for w in pool["workers"]} <= {"NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"}


def test_job_needing_more_vram_than_any_gpu_stays_pending_unschedulable(fleet):
    fleet.pool("sd", replicas=0)
    fleet.job("huge", vram="200Gi")
    job = fleet.wait_job("huge", lambda j: j.get("status", {}).get("reason") == "Unschedulable", 60)
    status = job["status"]
    assert status["phase"] == "Pending"
    assert "201.00Gi" in status["message"] and "80.00Gi" in status["message"], status["message"]


def test_job_naming_missing_pool_waits_then_runs_when_pool_appears(fleet):
    fleet.job("early", pool="later")
    job = fleet.wait_job("early", lambda j: j.get("status", {}).get("reason") == "PoolNotFound", 60)
    assert job["status"]["phase"] == "Pending" and "later" in job["status"]["message"]
    fleet.pool("later", replicas=1)
    fleet.wait_phase("early", "Succeeded", timeout=120)


def test_killed_worker_process_gives_job_to_another_worker_as_attempt_two(fleet):
    fleet.pool("sd", replicas=2)
    fleet.wait_ready_workers("sd", 2)
    # Seconds of CPU work, so the worker is killed mid-run, and attempt two still ends soon.
    fleet.job("long", steps=250, size=384, retry={"maxAttempts": 3, "backoffSeconds": 1})
    running = fleet.wait_job(
        "long",
        lambda j: (
            j.get("status", {}).get("phase") == "Running"
            and j["status"].get("progress", {}).get("step", 0) >= 2
        ),
        120,
    )
    first_worker = running["status"]["worker"]["pod"]
    for pid in worker_pids(first_worker):
        os.kill(pid, signal.SIGKILL)
    done = fleet.wait_phase("long", "Succeeded", "Failed", timeout=240)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["attempts"] == 2
    assert done["status"]["worker"]["pod"] != first_worker


def test_attempts_past_the_limit_fail_with_a_reason(fleet):
    fleet.pool("sd", replicas=1)
    fleet.wait_ready_workers("sd", 1)
    # Minutes of CPU work: still running when its worker is killed.
    fleet.job("fragile", steps=250, size=512, images=4, retry={"maxAttempts": 1, "backoffSeconds": 0})
    running = fleet.wait_job("fragile", lambda j: j.get("status", {}).get("phase") == "Running", 120)
    for pid in worker_pids(running["status"]["worker"]["pod"]):
        os.kill(pid, signal.SIGKILL)
    failed = fleet.wait_phase("fragile", "Failed", timeout=120)
    assert failed["status"]["reason"] == "BackoffLimitExceeded"
    assert "1 attempts" in failed["status"]["message"]
    assert {c["type"]: c["status"] for c in failed["status"]["conditions"]}["Stalled"] == "True"


def test_cancel_and_delete_stop_the_run_on_its_worker(fleet):
    fleet.pool("sd", replicas=1, max_jobs_per_gpu=4)
    fleet.wait_ready_workers("sd", 1)
    # Minutes of CPU work each: both still run when they are cancelled and deleted.
    fleet.job("to-cancel", steps=250, size=512, images=4)
    fleet.job("to-delete", steps=250, size=512, images=4)
    for name in ("to-cancel", "to-delete"):
        fleet.wait_job(name, lambda j: j.get("status", {}).get("phase") == "Running", 120)
    fleet.patch_job("to-cancel", {"cancel": True})
    fleet.custom.delete_namespaced_custom_object(
        "gpufleet.io", "v1alpha1", fleet.namespace, "generationjobs", "to-delete"
    )
    cancelled = fleet.wait_phase("to-cancel", "Cancelled", timeout=60)
    assert cancelled["status"]["reason"] == "Cancelled"

    def gone() -> bool:
        try:
            fleet.get_job("to-delete")
        except client.ApiException as error:
            return error.status == 404
        return False

    from gpufleet.localcluster.waiting import wait_for

    wait_for(gone, bool, 60, what="deleted job to go")
    runs = {run.job_id: run for worker_runs in fleet.worker_runs("sd").values() for run in worker_runs}
    for name in ("to-cancel", "to-delete"):
        run = wait_for(
            lambda name=name: {r.job_id: r for w in fleet.worker_runs("sd").values() for r in w}[
                f"{fleet.namespace}/{name}"
            ],
            lambda r: r.phase.value != "Running",
            30,
            what=f"{name} stopped on its worker",
        )
        assert run.phase.value == "Cancelled" and run.vram_reserved_bytes == 0
    assert runs


def test_job_past_its_timeout_fails_and_its_run_is_cancelled(fleet):
    fleet.pool("sd", replicas=1)
    # Minutes of CPU work against a 3 s budget, so the deadline, not the run, ends it.
    fleet.job("slow", steps=250, size=512, images=4, timeoutSeconds=3)
    failed = fleet.wait_phase("slow", "Failed", "Succeeded", timeout=120)
    assert failed["status"]["reason"] == "DeadlineExceeded", failed["status"]
    assert "spec.timeoutSeconds (3s)" in failed["status"]["message"]
    assert not failed["status"].get("artifacts")
    from gpufleet.localcluster.waiting import wait_for

    run = wait_for(
        lambda: {r.job_id: r for w in fleet.worker_runs("sd").values() for r in w}[f"{fleet.namespace}/slow"],
        lambda r: r.phase.value != "Running",
        30,
        what="slow stopped on its worker",
    )
    assert run.phase.value == "Cancelled" and run.vram_reserved_bytes == 0


def test_operator_killed_three_times_runs_every_job_once(fleet, operator):
    fleet.pool("sd", replicas=2, max_jobs_per_gpu=4)
    fleet.wait_ready_workers("sd", 2)
    names = [f"r{i}" for i in range(30)]
    for name in names:
        fleet.job(name, steps=40, size=64)
    for _ in range(3):
        time.sleep(3)
        operator.kill()
        time.sleep(1)
        operator.start()
    for name in names:
        fleet.wait_phase(name, "Succeeded", timeout=300)
    runs: dict[tuple[str, int], list[str]] = {}
    for worker, worker_runs in fleet.worker_runs("sd").items():
        for run in worker_runs:
            runs.setdefault((run.job_id, run.attempt), []).append(worker)
    for name in names:
        status = fleet.get_job(name)["status"]
        key = f"{fleet.namespace}/{name}"
        attempts_run = [k for k in runs if k[0] == key]
        # One attempt ran, on one worker, once: its artifacts were written once.
        assert attempts_run == [(key, status["attempts"])], (name, attempts_run)
        assert len(runs[(key, status["attempts"])]) == 1


def test_operator_killed_while_writing_first_statuses_gives_every_job_one_after_restart(fleet, operator):
    """New jobs get their first status from the first-status writer (one slot: the queue
    builds at once). The kill lands while jobs created before it still have none; the next
    operator writes theirs, and every job runs once."""
    fleet.pool("sd", replicas=1, max_jobs_per_gpu=1)
    fleet.wait_ready_workers("sd", 1)
    names = [f"f{i:02d}" for i in range(60)]
    creator = threading.Thread(target=lambda: [fleet.job(n, steps=1) for n in names])
    creator.start()

    def phases(jobs: list[dict]) -> list[str | None]:
        return [j.get("status", {}).get("phase") for j in jobs]

    try:
        seen = wait_for(
            fleet.jobs,
            lambda jobs: phases(jobs).count("Queued") >= 3 and None in phases(jobs),
            60,
            interval=0.02,
            what="jobs queued by the first-status writer while others still have no status",
        )
        operator.kill()
    finally:
        creator.join()
    # The writer was at work (jobs Queued) and had more to do (jobs without a status) when it died.
    assert [j["metadata"]["name"] for j in seen if "status" not in j]
    operator.start()
    for name in names:
        fleet.wait_job(name, lambda j: "status" in j, 60, what=f"{name}'s first status after the restart")
    for name in names:
        fleet.wait_phase(name, "Succeeded", timeout=300)
    runs: dict[str, list[int]] = {}
    for worker_runs in fleet.worker_runs("sd").values():
        for run in worker_runs:
            runs.setdefault(run.job_id, []).append(run.attempt)
    for name in names:
        assert runs[f"{fleet.namespace}/{name}"] == [1], (name, runs.get(f"{fleet.namespace}/{name}"))
        assert fleet.get_job(name)["status"]["attempts"] == 1


def test_sigterm_with_runs_in_flight_exits_0_and_a_restart_finishes_them(fleet, operator):
    fleet.pool("sd", replicas=1, max_jobs_per_gpu=2)
    fleet.wait_ready_workers("sd", 1)
    names = ["t0", "t1"]
    for name in names:
        fleet.job(name, steps=250, size=256)  # long enough to be seen running on a quiet machine
    for name in names:  # the SIGTERM lands while both runs are in progress, followed
        fleet.wait_job(
            name,
            lambda j: (
                j.get("status", {}).get("phase") == "Running"
                and j["status"].get("progress", {}).get("step", 0) >= 1
            ),
            180,
        )
    assert operator.process is not None
    code = operator.process.stop(30)
    log = operator.log_tail(400)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert all(fleet.get_job(n)["status"]["phase"] == "Running" for n in names)
    operator.start()
    for name in names:
        done = fleet.wait_phase(name, "Succeeded", "Failed", timeout=300)
        assert (done["status"]["phase"], done["status"]["attempts"]) == ("Succeeded", 1), done["status"]


def test_sigterm_to_a_standby_replica_exits_0(cluster, fleet, operator, s3_server, tmp_path):
    standby = OperatorProcess(
        cluster.api_client(),
        cluster.server,
        cluster.control_plane.ca_cert,
        tmp_path / "standby",
        s3_server.endpoint,
        S3_SECRET,
    )
    standby.start()
    assert standby.process is not None
    try:
        # The session's operator holds the Lease: this replica waits, answering "standby".
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{standby.health_port}/healthz", timeout=2).text,
            lambda text: text.strip() == "standby",
            60,
            what="the second replica waiting for the Lease",
        )
        assert standby.process.stop(30) == 0, standby.log_tail()
    finally:
        standby.stop()
