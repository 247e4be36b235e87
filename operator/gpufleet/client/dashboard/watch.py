"""The dashboard's copy of the fleet, kept current by Kubernetes watches with the user's
identity: one thread per resource lists, then watches from that list's resourceVersion, and
lists again after an error. Readers wait on `changed` for the next version."""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import urllib3.exceptions
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from gpufleet.api.models import GROUP, VERSION, GenerationJob, WorkerPool
from gpufleet.client.dashboard.view import Fleet
from gpufleet.client.errors import api_error
from gpufleet.client.jobs import JOB_RESOURCE, JOBS, POOL_RESOURCE, POOLS, Client

log = logging.getLogger("gpufleet.dashboard")

WATCH_SECONDS = 60  # the API server ends a watch after this; it is opened again at once
RETRY_SECONDS = (0.5, 1, 2, 4)  # waits after consecutive errors, then the last one again
REQUEST_TIMEOUT = (5, WATCH_SECONDS + 15)  # connect, read: a dead connection is noticed
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, OSError)
MODELS: dict[str, type[WorkerPool] | type[GenerationJob]] = {POOLS: WorkerPool, JOBS: GenerationJob}
RESOURCES = {POOLS: POOL_RESOURCE, JOBS: JOB_RESOURCE}


class FleetWatch:
    """WorkerPools and GenerationJobs of one namespace (or all), as the user may read them."""

    def __init__(self, client: Client, all_namespaces: bool) -> None:
        self.client = client
        self.all_namespaces = all_namespaces
        self.scope = "all namespaces" if all_namespaces else f"namespace {client.namespace}"
        self.server = str(client.api.configuration.host)
        self.changed = threading.Condition()
        self.version = 0  # bumped on every change; readers wait for a newer one
        self._objects: dict[str, dict[tuple[str, str], Any]] = {POOLS: {}, JOBS: {}}
        self._problems: dict[str, str] = {}
        self._unreachable: set[str] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._follow, args=(plural,), name=f"watch-{plural}", daemon=True)
            for plural in MODELS
        ]

    def start(self) -> FleetWatch:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.changed:
            self.changed.notify_all()

    def snapshot(self) -> tuple[int, Fleet]:
        with self.changed:
            return self.version, Fleet(
                pools=list(self._objects[POOLS].values()),
                jobs=list(self._objects[JOBS].values()),
                scope=self.scope,
                problems=dict(self._problems),
                connected=not self._unreachable,
            )

    def job(self, namespace: str, name: str) -> GenerationJob | None:
        with self.changed:
            return self._objects[JOBS].get((namespace, name))

    def wait_newer(self, version: int, timeout: float) -> None:
        """Returns when the version passed ``version``, after ``timeout`` seconds, or on stop."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or self._stop.is_set(), timeout)

    # --- the watch threads ----------------------------------------------------------------

    def _bump(self) -> None:  # call holding self.changed
        self.version += 1
        self.changed.notify_all()

    def _list_call(self, plural: str) -> tuple[Any, tuple]:
        custom = self.client.custom
        if self.all_namespaces:
            return custom.list_cluster_custom_object, (GROUP, VERSION, plural)
        return custom.list_namespaced_custom_object, (GROUP, VERSION, self.client.namespace, plural)

    def _parse(self, plural: str, item: dict) -> Any | None:
        try:
            return MODELS[plural].model_validate(item)
        except ValidationError:  # one odd object must not hide the others
            log.warning("%s %s does not parse; not shown", plural, item.get("metadata", {}).get("name"))
            return None

    def _follow(self, plural: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._list_and_watch(plural)
                failures = 0
            except ApiException as exc:
                where = "(all namespaces)" if self.all_namespaces else self.client.namespace
                self._set_problem(plural, str(api_error(exc, "watch", RESOURCES[plural], where)), False)
                failures += 1
            except CONNECTION_ERRORS as exc:
                self._set_problem(
                    plural,
                    f"watching {RESOURCES[plural]}: cannot reach the API server at {self.server}: {exc}",
                    True,
                )
                failures += 1
            if failures:
                self._stop.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])

    def _set_problem(self, plural: str, message: str, unreachable: bool) -> None:
        with self.changed:
            if self._problems.get(plural) == message and (plural in self._unreachable) == unreachable:
                return
            self._problems[plural] = message
            if unreachable:
                self._unreachable.add(plural)
            else:
                self._unreachable.discard(plural)
            self._bump()

    def _list_and_watch(self, plural: str) -> None:
        call, args = self._list_call(plural)
        listing = cast(dict[str, Any], call(*args, _request_timeout=REQUEST_TIMEOUT))
        objects = {}
        for item in listing["items"]:
            if (parsed := self._parse(plural, item)) is not None:
                objects[_key(item)] = parsed
        with self.changed:
            self._objects[plural] = objects
            self._problems.pop(plural, None)
            self._unreachable.discard(plural)
            self._bump()
        version = listing["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            stream = k8s_watch.Watch().stream(
                call,
                *args,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=REQUEST_TIMEOUT,
            )
            try:
                for event in stream:
                    if self._stop.is_set():
                        return
                    item = event["object"]
                    if event["type"] == "ERROR":
                        return  # the history expired (410 as an event): list again
                    version = item["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    with self.changed:
                        if event["type"] == "DELETED":
                            self._objects[plural].pop(_key(item), None)
                        elif (parsed := self._parse(plural, item)) is not None:
                            self._objects[plural][_key(item)] = parsed
                        self._bump()
            except ApiException as exc:
                if exc.status == 410:
                    return
                raise


def _key(item: dict) -> tuple[str, str]:
    metadata = item["metadata"]
    return str(metadata.get("namespace", "")), str(metadata["name"])
