"""kopf wiring: watches feed in-memory views; one daemon per WorkerPool reconciles it.

No change-detecting handlers (create/update/delete) are used, so kopf writes nothing into
the resources' annotations: everything the operator learns goes to ``status``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import kopf

from gpufleet import labels
from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.api.models import GROUP, VERSION, GenerationJob
from gpufleet.core import jobs as jobrules
from gpufleet.core import placement

from . import metrics, reconcile
from .kube import JOBS, Kube, load_client
from .state import Operator

log = logging.getLogger("gpufleet.operator")
RECONCILE_INTERVAL = 1.0

# Views of the cluster, kept current by the watches below.
POOLS: dict[tuple[str, str], dict[str, Any]] = {}
JOB_BODIES: dict[tuple[str, str], dict[str, Any]] = {}
PODS: dict[tuple[str, str], dict[str, Any]] = {}
GPU_NODES: dict[str, jobrules.GpuClass] = {}
SETTINGS: dict[str, Any] = {}  # filled by main() before kopf starts
STATE: dict[str, Operator] = {}


def pod_of(namespace: str, name: str) -> dict[str, Any] | None:
    return PODS.get((namespace, name))


def _version(body: dict[str, Any]) -> int:
    version = body.get("metadata", {}).get("resourceVersion", "")
    return int(version) if str(version).isdigit() else 0


def remember(view: dict, key: Any, body: dict[str, Any]) -> None:
    """Stores ``body`` unless the view already holds a newer version of the object.

    The operator stores what its own writes return, so the next round does not act on a
    watch event that has not caught up with them yet.
    """
    current = view.get(key)
    if (
        current is None
        or current["metadata"].get("uid") != body["metadata"].get("uid")
        or _version(body) >= _version(current)
    ):
        view[key] = body


def _track(view: dict, key: Any, event_type: str | None, body: Any) -> None:
    if event_type == "DELETED":
        view.pop(key, None)
    else:
        remember(view, key, dict(body))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    STATE["op"] = Operator(kube=Kube(load_client()), http=httpx.AsyncClient(), **SETTINGS)
    # Compiling the placer takes ~10 s the first time (then it loads from NUMBA_CACHE_DIR).
    await asyncio.to_thread(placement.warm_up)
    asyncio.get_running_loop().create_task(orphans(), name="orphan-jobs")


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    if "op" in STATE:
        await STATE["op"].http.aclose()


@kopf.on.event(GROUP, VERSION, "workerpools")
def pool_event(event: Any, namespace: Any, name: Any, body: Any, **_: Any) -> None:
    _track(POOLS, (namespace, name), event.get("type"), body)


@kopf.on.event(GROUP, VERSION, "generationjobs")
def job_event(event: Any, namespace: Any, name: Any, body: Any, **_: Any) -> None:
    _track(JOB_BODIES, (namespace, name), event.get("type"), body)


@kopf.on.event("", "v1", "pods", labels={labels.POOL: kopf.PRESENT})
def pod_event(event: Any, namespace: Any, name: Any, body: Any, **_: Any) -> None:
    _track(PODS, (namespace, name), event.get("type"), body)


@kopf.on.event("", "v1", "nodes")
def node_event(event: Any, name: Any, labels: Any, **_: Any) -> None:
    from gpufleet import labels as keys

    memory = labels.get(keys.GPU_MEMORY_MIB)
    if event.get("type") == "DELETED" or not memory or not memory.isdigit():
        GPU_NODES.pop(name, None)
        return
    GPU_NODES[name] = jobrules.GpuClass(labels.get(keys.GPU_PRODUCT, ""), int(memory) * 2**20)


@kopf.daemon(GROUP, VERSION, "workerpools", cancellation_timeout=5.0)
async def pool_daemon(namespace: Any, name: Any, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Reconciles one pool every second, for as long as it exists."""
    while not stopped:
        body = POOLS.get((namespace, name))
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            try:
                await reconcile.reconcile_pool(
                    STATE["op"],
                    body,
                    [
                        p
                        for (ns, _), p in PODS.items()
                        if ns == namespace and p["metadata"].get("labels", {}).get(labels.POOL) == name
                    ],
                    [
                        j
                        for (ns, _), j in JOB_BODIES.items()
                        if ns == namespace and (j.get("spec") or {}).get("poolRef", {}).get("name") == name
                    ],
                    list({(c.product, c.memory_bytes): c for c in GPU_NODES.values()}.values()),
                )
            except Exception:
                metrics.RECONCILE_ERRORS.labels(name).inc()
                log.exception("reconciling pool %s/%s", namespace, name)
        await stopped.wait(RECONCILE_INTERVAL)


async def orphans() -> None:
    """Jobs whose pool does not exist: Pending with PoolNotFound; deleted ones released."""
    await asyncio.sleep(3)  # let the first listings of pools and jobs arrive
    while True:
        op = STATE["op"]
        for (namespace, name), body in list(JOB_BODIES.items()):
            pool = (body.get("spec") or {}).get("poolRef", {}).get("name")
            if (namespace, pool) in POOLS:
                continue
            try:
                await orphan(op, body)
            except Exception:
                log.exception("job %s/%s without pool", namespace, name)
        await asyncio.sleep(2)


async def orphan(op: Operator, body: dict) -> None:
    meta = body["metadata"]
    finalizers = meta.get("finalizers") or []
    if meta.get("deletionTimestamp"):
        if labels.FINALIZER in finalizers:
            await op.kube.patch_metadata(
                JOBS,
                meta["namespace"],
                meta["name"],
                {"finalizers": [f for f in finalizers if f != labels.FINALIZER]},
            )
        return
    job = GenerationJob.model_validate(body)
    if job.status.phase not in (None, JobPhase.PENDING, JobPhase.QUEUED):
        return  # running elsewhere or finished: the pool's deletion took its workers
    refused = jobrules.refusal(job.spec, None, [])
    assert refused is not None
    if job.status.reason != refused.reason:
        await reconcile.set_job_phase(
            op, job, JobPhase.PENDING, Reason.POOL_NOT_FOUND, refused.message, queue_position=None
        )
        await op.kube.event(body, Reason.POOL_NOT_FOUND, refused.message, warning=True)
