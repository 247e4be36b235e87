"""Leader election on a coordination.k8s.io Lease: one active operator at a time.

A replica acquires the Lease (or waits for it to expire), then renews it every
``retry_seconds``. It acts only while it knows it holds the Lease: every write checks
`LeaderElector.holds` first, which is true only within ``renew_deadline_seconds`` (shorter
than the Lease's duration) of the start of the last successful renewal, measured on the
monotonic clock. A process that was frozen (SIGSTOP, a long pause) finds on resuming that its
deadline has passed and exits before its next write, and another replica can take the Lease
only once it has expired, after the deadline: the two never act together. Failover takes at
most the Lease's duration plus one retry period.
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
# client-go's defaults are 15 / 10 / 2; a shorter Lease brings failover to 15 s at most.
LEASE_SECONDS = 13
RENEW_DEADLINE_SECONDS = 10
RETRY_SECONDS = 2


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
        lease_seconds: int = LEASE_SECONDS,
        renew_deadline_seconds: float = RENEW_DEADLINE_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        if not 0 < retry_seconds < renew_deadline_seconds < lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{retry_seconds} / {renew_deadline_seconds} / {lease_seconds}"
            )
        self.api = coordination
        self.namespace = namespace
        self.name = name
        self.lease_seconds = lease_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self.renewed_at: float | None = None  # monotonic start of the last successful renewal
        self._lease_lock = threading.Lock()  # one Lease write at a time: renewal or release
        self._released = False
        self._written: client.V1Lease | None = None  # the Lease as this replica last wrote it
        # The pod name when run in a pod (the chart sets POD_NAME), else host and process.
        self.identity = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"

    def holds(self) -> bool:
        """Whether this replica may act: it renewed the Lease within the renew deadline."""
        return (
            self.renewed_at is not None and time.monotonic() - self.renewed_at < self.renew_deadline_seconds
        )

    def fence(self) -> None:
        """Called before every write: a replica that no longer knows it leads exits instead."""
        if not self.holds():
            log.error(
                "leader: lease %s/%s not renewed in time; exiting before writing", self.namespace, self.name
            )
            self.stop()

    def stop(self) -> None:
        """Ends the process at once: nothing it still has in flight may reach the API server."""
        logging.shutdown()
        os._exit(1)

    def _try_acquire(self) -> bool:
        started = time.monotonic()
        if self._write_lease():
            self.renewed_at = started
            return True
        return False

    def _write_lease(self) -> bool:
        now = _now()
        spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=now,
            renew_time=now,
        )
        written = self._written
        if written is not None and written.spec is not None:
            # Renewal: one PUT of the Lease as last written (half the round trips of read and
            # write, which matters when the API server is slow). Its resourceVersion makes it
            # fail if anyone wrote the Lease since; then it is read again below.
            self._written = None
            spec.acquire_time = written.spec.acquire_time
            written.spec = spec
            try:
                self._written = self.api.replace_namespaced_lease(self.name, self.namespace, written)
                return True
            except ApiException as error:
                if error.status != 409:
                    raise
            spec.acquire_time = now
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            try:
                self._written = self.api.create_namespaced_lease(
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
                self._written = self.api.replace_namespaced_lease(
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
            time.sleep(self.retry_seconds)
        log.info("leader: %s holds lease %s/%s", self.identity, self.namespace, self.name)
        threading.Thread(target=self._renew, name="lease-renewal", daemon=True).start()

    def release(self) -> None:
        """Gives the Lease up on a clean stop, so a standby takes over at its next try rather
        than when the Lease expires (client-go's ReleaseOnCancel). Only while still holding it."""
        with self._lease_lock:
            if not self.holds():
                return
            self._released = True
            self.renewed_at = None  # from here on, no write of this replica passes the fence
            self._written = None
            try:
                lease = self.api.read_namespaced_lease(self.name, self.namespace)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("leader: %s released lease %s/%s", self.identity, self.namespace, self.name)
            except ApiException as error:  # expiry hands it over anyway
                log.warning("leader: could not release lease %s/%s: %s", self.namespace, self.name, error)

    def _renew(self) -> None:
        while True:
            time.sleep(self.retry_seconds)
            try:
                with self._lease_lock:
                    if self._released:
                        return
                    renewed = self.holds() and self._try_acquire()
                if renewed:
                    continue
                log.error(
                    "leader: lease %s/%s lost or taken by another replica; exiting", self.namespace, self.name
                )
            except Exception as error:
                if self.holds():
                    log.warning("leader: renewal failed (%s); retrying", error)
                    continue
                log.error("leader: could not renew lease %s/%s in time; exiting", self.namespace, self.name)
            self.stop()
