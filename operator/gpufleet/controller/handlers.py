"""kopf wiring: watches feed the operator's cache; one daemon per WorkerPool runs its rounds.

The ``Operator`` (all the state there is) reaches every handler as kopf's ``memo``. Index
handlers fill the cache: kopf calls no other handler, daemon included, before every watched
kind's first listing has been indexed, so the cache is complete when rounds start. Event
handlers take the deletions, which kopf does not pass to index handlers.

No change-detecting handlers (create/update/delete) are used, so kopf writes nothing into
the resources' annotations: everything the operator learns goes to ``status``. The cache
handlers are coroutines: kopf runs plain functions in a thread, a hop per watch event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from gpufleet import labels
from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.api.models import GROUP, VERSION
from gpufleet.core import jobs as jobrules
from gpufleet.core import placement

from . import admit, metrics, reconcile
from .jobstatus import body_of, set_phase
from .kube import NamespaceTerminating
from .state import Operator

log = logging.getLogger("gpufleet.operator")
RECONCILE_INTERVAL = 1.0  # a pool's round runs at least this often, and at once on a wake-up
# Unwoken, the next round waits this many times as long as the last one took, when longer: the
# clock's work (deadlines, TTLs, backoffs, sizing windows) waits a little more in a pool of
# thousands of jobs, whose rounds walk them all, rather than round after round taking the
# CPU its first statuses and dispatches need. A wake-up still starts a round at once.
IDLE_TICK_FACTOR = 2.0
ORPHAN_INTERVAL = 2.0


def operator_of(memo: Any) -> Operator:
    op = memo.operator
    assert isinstance(op, Operator)
    return op


class QuietEchoes(logging.Filter):
    """Drops kopf's INFO line for each watch event the cache handlers took: every status
    write of the operator comes back as one, thousands a minute under load."""

    HANDLERS = ("job_seen", "job_event", "pool_seen", "pool_event", "pod_seen", "pod_event", "node_event")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            record.levelno <= logging.INFO
            and message.endswith("succeeded.")
            and any(f"'{name}'" in message for name in self.HANDLERS)
        )


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf copies every watched body to diff it for change-detecting handlers, which the
    operator has none of (see above): a deep copy per watch event, thousands a minute, saved."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # A job's events are handled 10 ms after the last one (kopf's default waits 100 ms).
    settings.batching.batch_window = 0.01
    logging.getLogger("kopf.objects").addFilter(QuietEchoes())
    op = operator_of(memo)
    # API writes run in threads (the Kubernetes client blocks): enough of them for a round's
    # concurrent writes, where the default pool has only cores + 4.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(op.concurrency * 2))
    await warm_up_placer()
    # Watch events and writes allocate fast, and reference counts free nearly all of it: with
    # the collector's defaults (a young collection every 700 allocations), draining 5,000
    # queued jobs in-process spent 6.0 of its 21.8 s of CPU collecting; with young collections
    # 14 times rarer, 1.2 of 16.4 s. What start-up loaded (kopf, the Kubernetes client, the
    # compiled placer) is not scanned again.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    op.spawn(orphans(op), name="orphan-jobs")
    op.spawn(admit.first_statuses(op), name="first-statuses")


WARM_UP_PLACER = "from gpufleet.core import placement; placement.warm_up()"


async def warm_up_placer() -> None:
    """Compiles the placer (~10 s the first time) in a child process that fills its disk cache,
    then loads the machine code from there: compiling here would keep LLVM's working memory,
    60 MB, for the operator's lifetime (`core.compiled`). Where nothing can be cached, or the
    child fails, this process compiles."""
    if placement.warm_up_cached():
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", WARM_UP_PLACER)
        if await child.wait() != 0:
            log.warning(
                "compiling the placer in a child failed (status %s): compiling here", child.returncode
            )
    await asyncio.to_thread(placement.warm_up)


@kopf.on.cleanup()
async def close(memo: Any, **_: Any) -> None:
    await operator_of(memo).close()


@kopf.index(GROUP, VERSION, "workerpools")
async def pool_seen(body: Any, memo: Any, **_: Any) -> None:
    operator_of(memo).cache.remember_pool(dict(body))


@kopf.on.event(GROUP, VERSION, "workerpools")
async def pool_event(event: Any, namespace: Any, name: Any, memo: Any, **_: Any) -> None:
    op = operator_of(memo)
    op.cache.synced.set()
    if event.get("type") == "DELETED":
        op.cache.forget_pool(namespace, name)
        metrics.forget_pool(namespace, name)
        op.pools.pop((namespace, name), None)


@kopf.index(GROUP, VERSION, "generationjobs")
async def job_seen(body: Any, memo: Any, **_: Any) -> None:
    operator_of(memo).cache.remember_job(dict(body))


@kopf.on.event(GROUP, VERSION, "generationjobs")
async def job_event(event: Any, namespace: Any, name: Any, memo: Any, **_: Any) -> None:
    op = operator_of(memo)
    op.cache.synced.set()
    if event.get("type") == "DELETED":
        op.cache.forget_job(namespace, name)
        op.followers.stop((namespace, name))
        op.jobs.pop((namespace, name), None)


@kopf.index("", "v1", "pods", labels={labels.POOL: kopf.PRESENT})
async def pod_seen(body: Any, memo: Any, **_: Any) -> None:
    operator_of(memo).cache.remember_pod(dict(body))


@kopf.on.event("", "v1", "pods", labels={labels.POOL: kopf.PRESENT})
async def pod_event(event: Any, namespace: Any, name: Any, memo: Any, **_: Any) -> None:
    op = operator_of(memo)
    op.cache.synced.set()
    if event.get("type") == "DELETED":
        op.cache.forget_pod(namespace, name)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: Any, name: Any, labels: Any, memo: Any, **_: Any) -> None:
    from gpufleet import labels as keys

    nodes = operator_of(memo).cache.gpu_nodes
    memory = labels.get(keys.GPU_MEMORY_MIB)
    if event.get("type") == "DELETED" or not memory or not memory.isdigit():
        nodes.pop(name, None)
        return
    nodes[name] = jobrules.GpuClass(labels.get(keys.GPU_PRODUCT, ""), int(memory) * 2**20)


@kopf.daemon(GROUP, VERSION, "workerpools", cancellation_timeout=5.0)
async def pool_daemon(namespace: Any, name: Any, stopped: kopf.DaemonStopped, memo: Any, **_: Any) -> None:
    """Runs the pool's rounds for as long as it exists: at once when woken (a job arrived or
    changed, a run ended, a worker changed), else every RECONCILE_INTERVAL (or IDLE_TICK_FACTOR
    times the last round's length)."""
    op = operator_of(memo)
    wakeup = op.cache.wakeup(namespace, name)
    while not stopped:
        wakeup.clear()
        started = time.perf_counter()
        try:
            await reconcile.reconcile_pool(op, namespace, name)
        except NamespaceTerminating:  # the pool goes with its namespace: nothing to do meanwhile
            log.debug("pool %s/%s: its namespace is being deleted", namespace, name)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
            log.exception("reconciling pool %s/%s", namespace, name)
        took = time.perf_counter() - started
        metrics.ROUND_SECONDS.labels(namespace, name).observe(took)
        if stopped:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), max(RECONCILE_INTERVAL, IDLE_TICK_FACTOR * took))


async def orphans(op: Operator) -> None:
    """Jobs whose pool does not exist: Pending with PoolNotFound."""
    await op.cache.synced.wait()
    while True:
        for body in op.cache.poolless_jobs():
            meta = body["metadata"]
            try:
                await orphan(op, body)
            except Exception:
                log.exception("job %s/%s without pool", meta["namespace"], meta["name"])
        await asyncio.sleep(ORPHAN_INTERVAL)


async def orphan(op: Operator, body: dict) -> None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    job = op.cache.parsed(body)
    if job is None or job.status.phase not in (None, JobPhase.PENDING, JobPhase.QUEUED, *reconcile.ACTIVE):
        return
    refused = jobrules.refusal(job.spec, None, [])
    assert refused is not None
    message = refused.message
    fields: dict[str, Any] = {"queue_position": None}
    if job.status.phase in reconcile.ACTIVE:
        # Its pool went (perhaps while no operator ran) and took the workers with it.
        worker = job.status.worker.pod if job.status.worker else "?"
        message = f"{message}: it was deleted while attempt {job.status.attempts} ran on {worker}"
        op.followers.stop((meta["namespace"], meta["name"]))
        fields["worker"] = None
    if job.status.reason != refused.reason:
        await set_phase(op, job, JobPhase.PENDING, Reason.POOL_NOT_FOUND, message, **fields)
        await op.kube.event(body_of(job), Reason.POOL_NOT_FOUND, message, warning=True)
