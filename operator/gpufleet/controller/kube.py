"""Thin async access to the API server for what the operator writes (reads come from watches)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.connection import HTTPConnection, HTTPSConnection

from gpufleet.api.models import GROUP, VERSION

log = logging.getLogger("gpufleet.kube")
POOLS, JOBS = "workerpools", "generationjobs"
COMPONENT = "gpufleet-operator"


def load_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 64  # as many as the write threads (handlers.configure)
    return client.ApiClient(configuration)


class PodRefused(Exception):
    """The API server refused to create a worker pod (admission, quota, validation)."""


class NamespaceTerminating(Exception):
    """The namespace is being deleted: the API server creates nothing more in it."""


def terminating(error: ApiException) -> bool:
    return error.status == 403 and "being terminated" in api_message(error)


def api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


CONFLICT_TRIES = 5
CONFLICT_BACKOFF_SECONDS = 0.02  # first wait after a 409; doubles, with jitter


def install_fence(api: client.ApiClient, fence: Callable[[], None]) -> None:
    """Makes every request of ``api`` call ``fence`` as its bytes go to the socket.

    Checked any earlier (before the client serialises the body and takes a connection), a
    replica frozen in between would still send once resumed, after another had taken over;
    at the socket, only the few instructions between the check and the send remain.
    """

    def fenced(connection: type[HTTPConnection]) -> type[HTTPConnection]:
        class Fenced(connection):  # type: ignore[valid-type,misc]
            def send(self, data: Any) -> None:
                fence()
                super().send(data)

        return Fenced

    class FencedHTTPPool(urllib3.HTTPConnectionPool):
        ConnectionCls = fenced(HTTPConnection)

    class FencedHTTPSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = fenced(HTTPSConnection)  # type: ignore[assignment]

    pool_manager = api.rest_client.pool_manager
    pool_manager.clear()  # no connection made before stays in use
    pool_manager.pool_classes_by_scheme = {"http": FencedHTTPPool, "https": FencedHTTPSPool}


class Kube:
    """Every write of the operator. With a ``fence`` (leader.LeaderElector.fence), each request
    checks it as it leaves (install_fence): a replica that no longer knows it leads never writes."""

    def __init__(self, api: client.ApiClient, fence: Callable[[], None] | None = None) -> None:
        if fence is not None:
            install_fence(api, fence)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.events = client.EventsV1Api(api)

    async def _send(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(call, *args, **kwargs)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patches ``status``; returns the object as now stored, None if it was deleted.

        A 409 Conflict is tried again after a short wait: the patch names no resourceVersion,
        so each try applies to the object as stored then (client-go's RetryOnConflict).
        """
        tries = 0
        while True:
            tries += 1
            try:
                stored = await self._send(
                    self.custom.patch_namespaced_custom_object_status,
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    {"status": status},
                )
                return cast(dict[str, Any], stored)
            except ApiException as error:
                if error.status == 404:
                    return None
                if error.status != 409 or tries == CONFLICT_TRIES:
                    raise
            await asyncio.sleep(CONFLICT_BACKOFF_SECONDS * 2**tries * (0.5 + random.random()))

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            await self._send(
                self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, JOBS, name
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Creates the pod; False when one of that name exists already (idempotent)."""
        try:
            await self._send(self.core.create_namespaced_pod, namespace, manifest)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            if error.status in (400, 403, 422):
                raise PodRefused(api_message(error)) from None
            raise

    async def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid) if uid else None)
        try:
            await self._send(self.core.delete_namespaced_pod, name, namespace, body=body)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    async def patch_pod_labels(self, namespace: str, name: str, pod_labels: dict[str, str | None]) -> None:
        try:
            await self._send(
                self.core.patch_namespaced_pod, name, namespace, {"metadata": {"labels": pod_labels}}
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def create_secret(self, namespace: str, manifest: dict[str, Any]) -> None:
        try:
            await self._send(self.core.create_namespaced_secret, namespace, manifest)
        except ApiException as error:
            if terminating(error):
                raise NamespaceTerminating(namespace) from None
            if error.status != 409:
                raise

    async def event(self, obj: dict[str, Any], reason: str, note: str, warning: bool = False) -> None:
        """Records a Kubernetes Event about ``obj``; failures are logged, never raised."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = client.EventsV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{meta['name']}.{secrets.token_hex(8)}", namespace=meta["namespace"]
            ),
            event_time=now,
            reporting_controller=f"{GROUP}/operator",
            reporting_instance=COMPONENT,
            action=reason,
            reason=reason,
            note=note[:1024],
            type="Warning" if warning else "Normal",
            regarding=client.V1ObjectReference(
                api_version=obj.get("apiVersion"),
                kind=obj.get("kind"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
        )
        try:
            await self._send(self.events.create_namespaced_event, meta["namespace"], body)
        except Exception as error:  # an event is worth a log line, never a failed reconcile
            log.warning("event %s on %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], error)
