"""The Python client: submit, read, follow, cancel and delete GenerationJobs with the user's
kubeconfig and RBAC, and read the pools they run on.

    from gpufleet.client import Client
    client = Client()                        # $KUBECONFIG or ~/.kube/config, its namespace
    job = client.submit(yaml_text_or_dict)   # -> GenerationJob
    for seen in client.watch([job.metadata["name"]]):
        print(seen.status.phase, seen.status.progress)
    final = client.wait(job.metadata["name"], timeout=600)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from gpufleet.api.conditions import TERMINAL_PHASES, ConditionStatus, ConditionType, JobPhase, find_condition
from gpufleet.api.models import GROUP, VERSION, GenerationJob, WorkerPool, to_manifest
from gpufleet.client.errors import ClientError, NotFoundError, api_error

if TYPE_CHECKING:
    from gpufleet.client.artifacts import S3Settings

JOBS = "generationjobs"
POOLS = "workerpools"
JOB_RESOURCE = f"{JOBS}.{GROUP}"
POOL_RESOURCE = f"{POOLS}.{GROUP}"
WATCH_WINDOW_SECONDS = 60  # a watch is re-opened this often; the API server ends longer ones anyway


def stalled(job: GenerationJob) -> bool:
    """The operator says the job cannot progress until its user changes something."""
    condition = find_condition(job.status.conditions, ConditionType.STALLED)
    generation = job.metadata.get("generation")
    return (
        condition is not None
        and condition.status is ConditionStatus.TRUE
        and (generation is None or condition.observed_generation in (None, generation))
    )


def finished(job: GenerationJob) -> bool:
    """Nothing more will happen without a change: a terminal phase, or Stalled."""
    return job.status.phase in TERMINAL_PHASES or stalled(job)


def succeeded(job: GenerationJob) -> bool:
    return job.status.phase is JobPhase.SUCCEEDED


def name_of(job: GenerationJob) -> str:
    return str(job.metadata.get("name", ""))


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about a job, as ``describe`` shows it."""

    type: str
    reason: str
    message: str
    count: int
    last_seen: str


class Client:
    """GenerationJobs and WorkerPools of one namespace, through the Kubernetes API."""

    def __init__(
        self,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_client: k8s.ApiClient | None = None,
    ) -> None:
        self.api = api_client or _load_api_client(kubeconfig, context)
        self.namespace = namespace or _context_namespace(kubeconfig, context)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, job: GenerationJob | dict[str, Any]) -> GenerationJob:
        """Creates the job (in its metadata.namespace, else the client's) and returns it."""
        body = _job_body(job)
        namespace = body["metadata"].get("namespace") or self.namespace
        name = body["metadata"].get("name") or body["metadata"].get("generateName", "")
        try:
            # Strict, as kubectl: an unknown or duplicated field is an error, not dropped.
            created = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, JOBS, body, field_validation="Strict"
            )
        except ApiException as exc:
            raise api_error(exc, "create", JOB_RESOURCE, namespace, name) from exc
        return GenerationJob.model_validate(created)

    def get(self, name: str, namespace: str | None = None) -> GenerationJob:
        namespace = namespace or self.namespace
        try:
            found = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, JOBS, name)
        except ApiException as exc:
            raise api_error(exc, "get", JOB_RESOURCE, namespace, name) from exc
        return GenerationJob.model_validate(found)

    def jobs(self, all_namespaces: bool = False, label_selector: str = "") -> list[GenerationJob]:
        items = self._list(JOBS, JOB_RESOURCE, all_namespaces, label_selector)
        return [GenerationJob.model_validate(item) for item in items]

    def cancel(self, name: str) -> GenerationJob:
        """Sets spec.cancel; the operator stops the job wherever it is."""
        try:
            patched = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, JOBS, name, {"spec": {"cancel": True}}
            )
        except ApiException as exc:
            raise api_error(exc, "patch", JOB_RESOURCE, self.namespace, name) from exc
        return GenerationJob.model_validate(patched)

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, JOBS, name)
        except ApiException as exc:
            raise api_error(exc, "delete", JOB_RESOURCE, self.namespace, name) from exc

    def watch(self, names: Iterable[str], timeout: float | None = None) -> Iterator[GenerationJob]:
        """Each state of the named jobs as it changes, until every one has finished.

        Yields every job once at the start. Ends when all are finished (see `finished`);
        raises NotFoundError when one is deleted, ClientError after ``timeout`` seconds.
        """
        pending = set(names)
        deadline = None if timeout is None else time.monotonic() + timeout
        versions: dict[str, str] = {}  # the resourceVersion last yielded, per job
        for name in sorted(pending):
            job = self.get(name)
            versions[name] = job.metadata.get("resourceVersion", "")
            yield job
            if finished(job):
                pending.discard(name)
        while pending:
            # One name: the API server filters; several: the namespace's jobs, filtered here.
            selector = f"metadata.name={next(iter(pending))}" if len(pending) == 1 else ""
            try:
                listing = cast(
                    dict[str, Any],
                    self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, JOBS, field_selector=selector
                    ),
                )
            except ApiException as exc:
                raise api_error(exc, "list", JOB_RESOURCE, self.namespace) from exc
            current = {item["metadata"]["name"]: item for item in listing["items"]}
            if gone := pending - set(current):
                raise NotFoundError(f"generationjob {sorted(gone)[0]!r} was deleted while being watched")
            for name in sorted(pending):  # changes between two watch windows
                if current[name]["metadata"].get("resourceVersion") != versions.get(name):
                    job = GenerationJob.model_validate(current[name])
                    versions[name] = job.metadata.get("resourceVersion", "")
                    yield job
                    if finished(job):
                        pending.discard(name)
            if not pending:
                return
            window = WATCH_WINDOW_SECONDS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(
                        f"timed out after {timeout:g}s waiting for {', '.join(sorted(pending))}"
                    )
                window = max(1, min(window, int(left) + 1))
            stream = k8s_watch.Watch().stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                JOBS,
                field_selector=selector,
                resource_version=listing["metadata"]["resourceVersion"],
                timeout_seconds=window,
            )
            try:
                for event in stream:
                    obj = event["object"]
                    name = obj.get("metadata", {}).get("name")
                    if name not in pending:
                        continue
                    if event["type"] == "DELETED":
                        raise NotFoundError(f"generationjob {name!r} was deleted while being watched")
                    job = GenerationJob.model_validate(obj)
                    versions[name] = job.metadata.get("resourceVersion", "")
                    yield job
                    if finished(job):
                        pending.discard(name)
                        if not pending:
                            return
            except ApiException as exc:
                if exc.status != 410:  # 410: history expired; list again
                    raise api_error(exc, "watch", JOB_RESOURCE, self.namespace) from exc

    def wait(self, name: str, timeout: float | None = None) -> GenerationJob:
        """The job once finished: Succeeded, Failed, Cancelled, or Stalled."""
        states = list(self.watch([name], timeout))
        return states[-1]  # watch yields each job at least once

    def download(self, name: str, directory: Path, settings: S3Settings) -> list[Path]:
        """The job's artifacts, each verified against its sha256, saved in ``directory``."""
        from gpufleet.client import artifacts  # boto3 is loaded only when artifacts are fetched

        return artifacts.download(self.get(name), directory, settings)

    def events(self, name: str) -> list[Event]:
        """Events about the job, oldest first."""
        selector = f"involvedObject.name={name},involvedObject.kind=GenerationJob"
        try:
            listing = self.core.list_namespaced_event(self.namespace, field_selector=selector)
        except ApiException as exc:
            raise api_error(exc, "list", "events", self.namespace) from exc
        found = [
            Event(
                type=e.type or "",
                reason=e.reason or "",
                message=(e.message or "").strip(),
                count=e.count or 1,
                last_seen=str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""),
            )
            for e in listing.items
        ]
        return sorted(found, key=lambda e: e.last_seen)

    # --- pools ----------------------------------------------------------------------------

    def pools(self, all_namespaces: bool = False) -> list[WorkerPool]:
        return [WorkerPool.model_validate(item) for item in self._list(POOLS, POOL_RESOURCE, all_namespaces)]

    def _list(self, plural: str, resource: str, all_namespaces: bool, label_selector: str = "") -> list[dict]:
        try:
            if all_namespaces:
                found = self.custom.list_cluster_custom_object(
                    GROUP, VERSION, plural, label_selector=label_selector
                )
            else:
                found = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, plural, label_selector=label_selector
                )
        except ApiException as exc:
            where = "(all namespaces)" if all_namespaces else self.namespace
            raise api_error(exc, "list", resource, where) from exc
        return list(cast(dict[str, Any], found)["items"])


def _job_body(job: GenerationJob | dict[str, Any]) -> dict[str, Any]:
    body = to_manifest(job) if isinstance(job, GenerationJob) else dict(job)
    body.pop("status", None)  # the operator's to write
    body["metadata"] = {
        k: v
        for k, v in dict(body.get("metadata") or {}).items()
        if k in ("name", "generateName", "namespace", "labels", "annotations")
    }
    return body


def _load_api_client(kubeconfig: str | None, context: str | None) -> k8s.ApiClient:
    try:
        return k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError) as exc:
        if kubeconfig is None and context is None:
            try:  # inside a pod: the ServiceAccount's identity
                k8s_config.load_incluster_config()
                return k8s.ApiClient()
            except ConfigException:
                pass
        raise ClientError(f"no usable kubeconfig: {exc} (set KUBECONFIG or pass --kubeconfig)") from exc


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    try:
        contexts, current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, FileNotFoundError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    return str((chosen or {}).get("context", {}).get("namespace") or "default")
