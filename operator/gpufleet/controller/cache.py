"""What the operator knows of the cluster: fed by the watches and by its own writes.

The watch handlers and the operator's writes both store bodies here; a body older than the
one held is ignored (by resourceVersion), so a round never acts on a watch event that has
not caught up with the operator's own last write. Jobs are indexed by pool, and each job
body is parsed once per resourceVersion, so a round over a queue of thousands costs no
re-parsing. Pool rounds wait on a per-pool wake-up that the job changes a round has work in
(`gives_work`), pods, pools and finished runs set.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from gpufleet import labels
from gpufleet.api.conditions import TERMINAL_PHASES, JobPhase
from gpufleet.api.models import GenerationJob, GenerationJobStatus
from gpufleet.core.jobs import GpuClass

log = logging.getLogger("gpufleet.cache")
Key = tuple[str, str]  # (namespace, name)


def resource_version(body: dict[str, Any]) -> int:
    version = body.get("metadata", {}).get("resourceVersion", "")
    return int(version) if str(version).isdigit() else 0


def newer(current: dict[str, Any] | None, body: dict[str, Any]) -> bool:
    """Whether ``body`` should replace ``current``: another object of that name, or a later
    version. The watch's echo of the operator's own write (the version it holds) is not: it
    neither replaces the body a round decided on nor wakes a round."""
    return (
        current is None
        or current["metadata"].get("uid") != body["metadata"].get("uid")
        or resource_version(body) > resource_version(current)
    )


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def kept(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the cache holds it: without what the operator never reads and the API server
    sends with every object, managedFields and kubectl's copy of the applied manifest, which
    together outweigh a small object's spec and status (and every held job has one); and with
    its strings shared (`shared_strings`)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    if LAST_APPLIED in (annotations := meta.get("annotations") or {}):
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return shared_strings({**body, "metadata": meta})  # a new tree: the input is left as it is


def shared_strings(value: Any) -> Any:
    """``value`` (decoded JSON) rebuilt with each of its strings the one interned copy: every
    watch event is decoded on its own, so each held body had its own copies of the same keys,
    phases, reasons, models and pool names, and a job's message once per condition (4.9 KB of
    strings per queued job, 0.4 KB of them distinct). A parsed model keeps the body's strings."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): shared_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shared_strings(v) for v in value]
    return value


def phase(job: dict[str, Any]) -> str | None:
    return (job.get("status") or {}).get("phase")


def gives_work(current: dict[str, Any] | None, body: dict[str, Any]) -> bool:
    """Whether a job's new version ``body`` can give its pool's round something to do: a job
    it has not seen, a change of spec or a deletion, a run that ended (a slot is free) or went
    back to the queue. Not the operator's own progress along the way (Queued, Dispatched,
    Running, progress, positions): those come from the rounds and followers, and waking a
    round for each would walk a long queue again for nothing."""
    if current is None or current["metadata"].get("uid") != body["metadata"].get("uid"):
        return True
    before, after = current["metadata"], body["metadata"]
    if before.get("generation") != after.get("generation") or bool(before.get("deletionTimestamp")) != bool(
        after.get("deletionTimestamp")
    ):
        return True
    old, new = phase(current), phase(body)
    return old != new and (new in TERMINAL_PHASES or (new == JobPhase.QUEUED and old is not None))


def pool_of(job: dict[str, Any]) -> str | None:
    return ((job.get("spec") or {}).get("poolRef") or {}).get("name")


class SharedFieldsSet(set[str]):
    """The fields set of every held model with those fields: pydantic keeps a set per model
    instance (which fields the input gave), 5.7 of the 10.1 KB a queued job's parsed
    GenerationJob takes. A copy (``model_copy``) gets a set of its own; changing a shared one,
    as assigning a field of a held model would, raises instead of reaching every other model."""

    def __copy__(self) -> set[str]:
        return set(self)

    def _refuse(self, *_: Any) -> Any:
        raise TypeError("a held model is not changed in place: model_copy(update=...) it")

    add = discard = remove = pop = clear = _refuse
    update = difference_update = intersection_update = symmetric_difference_update = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse


def share_fields_sets(model: BaseModel, shared: dict[frozenset[str], SharedFieldsSet]) -> None:
    """Gives ``model`` and the models it holds the shared set of their fields (see above)."""
    fields = frozenset(model.__pydantic_fields_set__)
    if (one := shared.get(fields)) is None:
        one = shared[fields] = SharedFieldsSet(fields)
    object.__setattr__(model, "__pydantic_fields_set__", one)
    for value in model.__dict__.values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, BaseModel):
                share_fields_sets(item, shared)


@dataclass(frozen=True)
class Parsed:
    """A job body's typed form, and what it was parsed from."""

    body: dict[str, Any]
    uid: str
    version: int
    job: GenerationJob | None


@dataclass
class Cache:
    pools: dict[Key, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Any]] = field(default_factory=dict)
    gpu_nodes: dict[str, GpuClass] = field(default_factory=dict)
    # Set once kopf has delivered its first listing of every watched kind (see handlers).
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    # Jobs seen without a status yet, in arrival order, for the first-status writer (admit).
    arrivals: dict[Key, None] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _jobs_by_pool: dict[Key, set[str]] = field(default_factory=dict)
    _parsed: dict[Key, Parsed] = field(default_factory=dict)
    _fields_sets: dict[frozenset[str], SharedFieldsSet] = field(default_factory=dict)
    _wakeups: dict[Key, asyncio.Event] = field(default_factory=dict)

    # -- jobs ----------------------------------------------------------------------------------
    def remember_job(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Holds ``body`` unless an as-new version is held; returns the body held, or None."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self.jobs.get(key)
        if not newer(current, body):
            return None
        body = kept(body)
        if current is not None and pool_of(current) != pool_of(body):
            self._jobs_by_pool.get((key[0], pool_of(current) or ""), set()).discard(key[1])
        self.jobs[key] = body
        pool = (key[0], pool_of(body) or "")
        self._jobs_by_pool.setdefault(pool, set()).add(key[1])
        if not phase(body) and not meta.get("deletionTimestamp"):
            self.arrivals[key] = None  # its first status, and the wake-up, are admit's
            self.arrived.set()
        elif gives_work(current, body):
            self.wake(*pool)
        return body

    def forget_job(self, namespace: str, name: str) -> None:
        body = self.jobs.pop((namespace, name), None)
        self._parsed.pop((namespace, name), None)
        self.arrivals.pop((namespace, name), None)
        if body is not None:
            pool = (namespace, pool_of(body) or "")
            self._jobs_by_pool.get(pool, set()).discard(name)
            self.wake(*pool)

    def pool_jobs(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        names = self._jobs_by_pool.get((namespace, pool), ())
        return [self.jobs[(namespace, n)] for n in sorted(names) if (namespace, n) in self.jobs]

    def poolless_jobs(self) -> list[dict[str, Any]]:
        """The jobs whose pool the cache does not hold (found by pool, not by walking every job)."""
        return [
            self.jobs[(namespace, name)]
            for (namespace, pool), names in self._jobs_by_pool.items()
            if (namespace, pool) not in self.pools
            for name in sorted(names)
            if (namespace, name) in self.jobs
        ]

    def parsed(self, body: dict[str, Any]) -> GenerationJob | None:
        """The typed job of ``body``, parsed once per resourceVersion; None when it does not parse.

        Most new versions are the operator's own status writes: while the spec is the one parsed
        before, only the status is parsed again (the spec's validation is most of the cost)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        held = self._parsed.get(key)
        if held is not None and held.body is body:
            return held.job
        uid, version = meta.get("uid", ""), resource_version(body)
        if held is not None and held.uid == uid and held.version == version and version:
            return held.job
        job: GenerationJob | None
        try:
            same_spec = held is not None and held.body.get("spec") == body.get("spec")
            if held is not None and held.job is not None and held.uid == uid and same_spec:
                status = GenerationJobStatus.model_validate(body.get("status") or {})
                job = held.job.model_copy(update={"metadata": meta, "status": status})
            else:
                job = GenerationJob.model_validate(body)
            share_fields_sets(job, self._fields_sets)
        except ValidationError as error:
            log.warning("job %s/%s does not parse: %s", key[0], key[1], error)
            job = None
        self._parsed[key] = Parsed(body, uid, version, job)
        return job

    def forget_parsed(self, namespace: str, name: str) -> None:
        """Drops the parsed form of a job the round holds compact (see state.JobDecision)."""
        self._parsed.pop((namespace, name), None)

    def current(self, job: GenerationJob) -> GenerationJob | None:
        """The latest known version of ``job``, None once it is gone (or replaced by a new uid)."""
        meta = job.metadata
        body = self.jobs.get((meta["namespace"], meta["name"]))
        if body is None or body["metadata"].get("uid") != meta.get("uid"):
            return None
        return self.parsed(body)

    # -- pools, pods, nodes --------------------------------------------------------------------
    def remember_pool(self, body: dict[str, Any]) -> None:
        """Holds the pool's newer version; wakes its round unless only its status changed
        (which its round writes: each write woke the next round at once)."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        current = self.pools.get(key)
        if newer(current, body):
            self.pools[key] = kept(body)
            if current is None or any(
                current["metadata"].get(field) != body["metadata"].get(field)
                for field in ("uid", "generation", "deletionTimestamp", "labels", "annotations")
            ):
                self.wake(*key)

    def forget_pool(self, namespace: str, name: str) -> None:
        self.pools.pop((namespace, name), None)
        self.wake(namespace, name)

    def remember_pod(self, body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if newer(self.pods.get(key), body):
            self.pods[key] = body = kept(body)
            pool = body["metadata"].get("labels", {}).get(labels.POOL)
            if pool:
                self.wake(key[0], pool)

    def forget_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get((namespace, name))

    def pool_pods(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        return [
            p
            for (ns, _), p in self.pods.items()
            if ns == namespace and p["metadata"].get("labels", {}).get(labels.POOL) == pool
        ]

    def gpu_classes(self) -> list[GpuClass]:
        return list({(c.product, c.memory_bytes): c for c in self.gpu_nodes.values()}.values())

    # -- wake-ups ------------------------------------------------------------------------------
    def wakeup(self, namespace: str, pool: str) -> asyncio.Event:
        return self._wakeups.setdefault((namespace, pool), asyncio.Event())

    def wake(self, namespace: str, pool: str) -> None:
        """Asks the pool's next round to start now rather than at its next tick."""
        self.wakeup(namespace, pool).set()
