"""A WorkerPool's status from its pods, the workers' inventories and its jobs. Pure."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import gpufleet_worker.protocol as protocol
from gpufleet.api.conditions import (
    ConditionType,
    JobPhase,
    Reason,
    boolean_condition,
    kstatus_conditions,
    merge_conditions,
)
from gpufleet.api.models import MAX_MODELS, WorkerPool
from gpufleet.api.servedmodels import S3_SCHEME


def missing_s3_credentials(pool: WorkerPool, credentials_secret: str | None) -> str | None:
    """Why the pool's s3:// models cannot be downloaded: no S3 credentials for its workers."""
    downloaded = [m.name for m in pool.spec.models if m.source.startswith(S3_SCHEME)]
    if credentials_secret or not downloaded:
        return None
    return (
        f"models {', '.join(downloaded)} come from s3:// but the workers get no S3 credentials: "
        "start the operator with --worker-s3-secret (Helm: artifacts.s3.credentialsSecret) naming a "
        "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


def pool_status(
    pool: WorkerPool,
    active: list[dict],
    ready: list[dict],
    inventories: dict[str, protocol.Inventory],
    jobs: list[dict],
    desired: int,
    queue_depth: int,
    label_selector: str,
    now: dt.datetime,
    unschedulable: bool,
    failing: dict[str, str] | None = None,
    pods_refused: str | None = None,
    model_problems: list[tuple[Reason, str]] | None = None,
) -> dict[str, Any]:
    """The pool's ``status`` as written to the API server (conditions keep their transition times).

    ``failing`` names the workers whose circuit breaker is open, with why; crash-looping
    worker pods and ones that cannot start are found here from their container statuses.
    ``pods_refused`` is the API server's word when it refused to create a worker pod.
    ``model_problems`` are (reason, message) of models the workers can never serve (see
    missing_s3_credentials, core.jobs.models_too_large): the pool serves the others, Degraded.
    """
    failing = {**(failing or {}), **crash_looping(active)}
    generation = pool.metadata.get("generation", 1)
    running: dict[str, list[str]] = {}
    for job in jobs:
        status = job.get("status") or {}
        if status.get("phase") in (JobPhase.DISPATCHED, JobPhase.RUNNING):
            running.setdefault((status.get("worker") or {}).get("pod", ""), []).append(
                job["metadata"]["name"]
            )
    workers = []
    for pod in sorted(active, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        inventory = inventories.get(name)
        workers.append(
            {
                "pod": name,
                **({"node": pod["spec"]["nodeName"]} if pod["spec"].get("nodeName") else {}),
                "ready": any(p["metadata"]["name"] == name for p in ready) and inventory is not None,
                "gpus": [
                    {
                        "id": g.uuid,
                        "product": g.product,
                        "memoryTotal": str(g.memory_total_bytes),
                        "memoryReserved": str(g.reserved_bytes),
                        "memoryFree": str(g.admittable_bytes),
                        "memoryModels": str(g.models_bytes),
                        "memoryJobs": str(g.jobs_bytes),
                        "models": sorted({m.name for m in g.models})[:MAX_MODELS],
                    }
                    for g in (inventory.gpus if inventory else [])
                ],
                "loadedModels": sorted(
                    m.name
                    for m in (inventory.models if inventory else [])
                    if m.state == protocol.ModelState.LOADED
                ),
                "jobs": sorted(running.get(name, [])),
            }
        )
    ready_count = sum(1 for w in workers if w["ready"])
    if pods_refused:
        reason, message = Reason.WORKER_POD_REFUSED, f"worker pods are refused: {pods_refused}"
    elif failing:
        reason, message = Reason.WORKERS_FAILING, "; ".join(failing[pod] for pod in sorted(failing))
    elif unschedulable:
        reason, message = (
            Reason.INSUFFICIENT_GPUS,
            "worker pods cannot be scheduled: no node has free GPUs matching spec.gpu",
        )
    elif ready_count < desired:
        reason, message = Reason.WORKERS_STARTING, f"{ready_count} of {desired} workers ready"
    elif len(active) > desired:
        # Surplus workers drain their jobs before they go: not ready yet, and not for lack of workers.
        reason, message = (
            Reason.SCALING_DOWN,
            f"{len(active)} workers, {desired} desired: draining {len(active) - desired}",
        )
    elif desired == 0:
        reason, message = Reason.SCALED_TO_ZERO, "no workers wanted"
    else:
        reason, message = Reason.WORKERS_READY, f"{ready_count} of {desired} workers ready"
    settled = not failing and ready_count >= desired and len(active) == desired
    conditions = kstatus_conditions(
        ready=settled,
        reconciling=not settled and not unschedulable and not pods_refused,
        stalled=unschedulable or bool(pods_refused),
        reason=reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    degraded = bool(failing) or 0 < ready_count < desired
    degraded_reason, degraded_message = reason, message
    if model_problems:
        degraded_reason = model_problems[0][0]
        degraded_message = "; ".join([m for _, m in model_problems] + ([message] if degraded else []))
    conditions += [
        boolean_condition(
            ConditionType.SCALING,
            len(active) != desired,
            Reason.SCALING_UP
            if len(active) < desired
            else Reason.SCALING_DOWN
            if len(active) > desired
            else Reason.RECONCILED,
            f"{len(active)} workers, {desired} desired",
            generation,
            now,
        ),
        boolean_condition(
            ConditionType.DEGRADED,
            degraded or bool(model_problems),
            degraded_reason,
            degraded_message,
            generation,
            now,
        ),
    ]
    rendered = merge_conditions(pool.status.conditions, conditions)
    return {
        "observedGeneration": generation,
        "replicas": len(active),
        "desiredReplicas": desired,
        "readyReplicas": ready_count,
        "selector": label_selector,
        "queueDepth": queue_depth,
        "runningJobs": sum(len(v) for v in running.values()),
        "workers": workers,
        "models": model_status(pool, inventories),
        "conditions": rendered,
    }


def model_status(pool: WorkerPool, inventories: dict[str, protocol.Inventory]) -> list[dict[str, Any]]:
    """Per model of the pool's spec (so the list stays bounded): its copies and counters summed
    over the workers' inventories, and the first failure message (by pod name). A worker that
    reports no GPUs per model holds a loaded model on all its GPUs."""
    counts: dict[str, Counter[str]] = {m.name: Counter() for m in pool.spec.models}
    messages: dict[str, str] = {}
    for _, inventory in sorted(inventories.items()):
        for m in inventory.models:
            count = counts.get(m.name)
            if count is None:
                continue
            legacy = m.state == protocol.ModelState.LOADED and not m.resident_gpus
            count["resident"] += len(inventory.gpus) if legacy else len(m.resident_gpus)
            count["loading"] += len(m.loading_gpus)
            count["loads"] += m.loads
            count["evictions"] += m.evictions
            count["warmHits"] += m.warm_hits
            if m.state == protocol.ModelState.FAILED:
                count["failed"] += 1
                messages.setdefault(m.name, m.message[:1024])
    return [
        {
            "name": name,
            **{key: value for key, value in count.items() if value},
            **({"message": messages[name]} if messages.get(name) else {}),
        }
        for name, count in counts.items()
    ]


CRASH_LOOP_RESTARTS = 3  # restarts after which a worker container counts as crash-looping
# Container waiting reasons that do not pass without a change to the pool (or the cluster).
CANNOT_START = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
    }
)


def crash_looping(pods: list[dict]) -> dict[str, str]:
    """Worker pods whose container keeps crashing: pod name -> what its status says."""
    found = {}
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            last = (container.get("lastState") or {}).get("terminated") or {}
            restarts = container.get("restartCount", 0)
            if waiting.get("reason") in CANNOT_START:
                found[pod["metadata"]["name"]] = (
                    f"worker {pod['metadata']['name']} cannot start: {waiting['reason']}"
                    + (f" ({waiting['message']})" if waiting.get("message") else "")
                )
            elif waiting.get("reason") == "CrashLoopBackOff" or restarts >= CRASH_LOOP_RESTARTS:
                cause = waiting.get("message") or last.get("reason") or waiting.get("reason") or "crashes"
                exit_code = last.get("exitCode")
                found[pod["metadata"]["name"]] = (
                    f"worker {pod['metadata']['name']} restarted {restarts} times"
                    f" (last exit {exit_code}: {cause})"
                    if exit_code is not None
                    else f"worker {pod['metadata']['name']} restarted {restarts} times ({cause})"
                )
    return found
