"""Leader election on a coordination.k8s.io Lease: one active operator at a time.

A replica acquires the Lease (or waits for it to expire), then renews it; a leader that
fails to renew before the Lease would expire exits at once, so two leaders never act
together: the one that lost its Lease is gone before another can take it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("gpufleet.leader")
LEASE_SECONDS = 15
RENEW_SECONDS = 5


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _expired(lease: client.V1Lease, now: dt.datetime) -> bool:
    spec = lease.spec
    if spec is None or spec.renew_time is None or not spec.holder_identity:
        return True
    return now > spec.renew_time + dt.timedelta(seconds=spec.lease_duration_seconds or LEASE_SECONDS)


class LeaderElector:
    def __init__(
        self,
        coordination: client.CoordinationV1Api,
        namespace: str,
        name: str = "gpufleet-operator",
        identity: str | None = None,
    ) -> None:
        self.api = coordination
        self.namespace = namespace
        self.name = name
        # The pod name when run in a pod (the chart sets POD_NAME), else host and process.
        self.identity = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"

    def _try_acquire(self) -> bool:
        now = _now()
        spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=LEASE_SECONDS,
            acquire_time=now,
            renew_time=now,
        )
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            try:
                self.api.create_namespaced_lease(
                    self.namespace, client.V1Lease(metadata=client.V1ObjectMeta(name=self.name), spec=spec)
                )
                return True
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
        if (lease.spec and lease.spec.holder_identity == self.identity) or _expired(lease, now):
            if lease.spec and lease.spec.holder_identity == self.identity:
                spec.acquire_time = lease.spec.acquire_time
            lease.spec = spec
            try:
                self.api.replace_namespaced_lease(
                    self.name, self.namespace, lease
                )  # resourceVersion guards it
                return True
            except ApiException as error:
                if error.status == 409:
                    return False
                raise
        return False

    def acquire(self) -> None:
        """Blocks until this replica holds the Lease, then renews it in the background."""
        while not self._try_acquire():
            time.sleep(RENEW_SECONDS)
        log.info("leader: %s holds lease %s/%s", self.identity, self.namespace, self.name)
        threading.Thread(target=self._renew, name="lease-renewal", daemon=True).start()

    def _renew(self) -> None:
        last_renewal = time.monotonic()
        while True:
            time.sleep(RENEW_SECONDS)
            try:
                if self._try_acquire():
                    last_renewal = time.monotonic()
                    continue
                log.error("leader: lease %s/%s taken by another replica; exiting", self.namespace, self.name)
            except Exception as error:
                if time.monotonic() - last_renewal < LEASE_SECONDS - RENEW_SECONDS:
                    log.warning("leader: renewal failed (%s); retrying", error)
                    continue
                log.error("leader: could not renew lease %s/%s in time; exiting", self.namespace, self.name)
            os._exit(1)
