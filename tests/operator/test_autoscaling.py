"""Autoscaling on the real control plane: grow with a burst, drain to zero, come back; external scaling."""

from __future__ import annotations

import threading
import time

import pytest

from gpufleet.localcluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3]


def live_workers(fleet, pool: str) -> list:
    return [p for p in fleet.worker_pods(pool) if p.metadata.deletion_timestamp is None]


def test_pool_grows_with_a_burst_drains_to_zero_without_interrupting_and_comes_back(fleet):
    fleet.pool(
        "auto",
        replicas=1,
        max_jobs_per_gpu=2,
        autoscaling={
            "minReplicas": 0,
            "maxReplicas": 4,
            "targetJobsPerWorker": 2,
            "scaleUpStabilizationSeconds": 0,
            "scaleDownStabilizationSeconds": 5,
            "idleSecondsBeforeZero": 10,
        },
    )
    fleet.wait_pool_status(
        "auto", lambda s: s.get("desiredReplicas") == 0, 60, what="an idle pool to want no workers"
    )
    names = [f"burst-{i}" for i in range(40)]
    for name in names:
        fleet.job(name, pool="auto", steps=30, size=64)

    peak = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(len(live_workers(fleet, "auto")))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for name in names:
            fleet.wait_phase(name, "Succeeded", "Failed", timeout=300)
    finally:
        done.set()
        sampler.join(5)
    assert max(peak) == 4, peak
    for name in names:
        status = fleet.get_job(name)["status"]
        # Scale-down never interrupted a job: every one succeeded on its first attempt.
        assert status["phase"] == "Succeeded" and status["attempts"] == 1, (name, status.get("message"))

    wait_for(
        lambda: live_workers(fleet, "auto"),
        lambda pods: pods == [],
        90,
        what="the idle pool to drain to zero",
        describe=lambda pods: str([p.metadata.name for p in pods]),
    )
    # The operator writes a pool's status at the end of its pass, after removing the drained
    # worker, so the status may say 1 for a moment after the last pod went.
    fleet.wait_pool_status(
        "auto", lambda s: s.get("desiredReplicas") == 0, 10, what="the drained pool to want no workers"
    )

    fleet.job("after-zero", pool="auto")
    fleet.wait_phase("after-zero", "Succeeded", timeout=180)
    assert fleet.get_pool("auto")["status"]["desiredReplicas"] >= 1


def test_kubectl_scale_drives_a_pool_without_autoscaling(cluster, fleet):
    fleet.pool("fixed", replicas=1)
    fleet.wait_ready_workers("fixed", 1)
    cluster.kubectl("scale", "-n", fleet.namespace, "wp/fixed", "--replicas=3")
    fleet.wait_ready_workers("fixed", 3)
    fleet.wait_pool_status("fixed", lambda s: s.get("readyReplicas") == 3, 60, what="status.readyReplicas 3")
    cluster.kubectl("scale", "-n", fleet.namespace, "wp/fixed", "--replicas=0")
    wait_for(lambda: live_workers(fleet, "fixed"), lambda pods: pods == [], 90, what="pool scaled to zero")
