"""Leader election on the real API server: a replica that was frozen past its renew deadline
stops before its next write, and another takes the Lease only after that deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes import client

from gpufleet.controller.kube import Kube
from gpufleet.controller.leader import LeaderElector
from gpufleet.localcluster.waiting import wait_for

pytestmark = [pytest.mark.cluster]


class Exited(Exception):
    pass


def elector(cluster: Any, namespace: str, identity: str) -> LeaderElector:
    return LeaderElector(
        client.CoordinationV1Api(cluster.api_client()),
        namespace,
        identity=identity,
        lease_seconds=3,
        renew_deadline_seconds=2,
        retry_seconds=0.5,
    )


def stopping_by_exception(leader: LeaderElector) -> list[str]:
    """Makes ``leader.stop`` raise Exited instead of ending the test process; returns its calls."""
    exits: list[str] = []

    def stop_instead() -> None:
        exits.append("stopped")
        raise Exited

    leader.stop = stop_instead  # type: ignore[method-assign]
    return exits


def test_a_frozen_leader_stops_before_another_takes_over(cluster, namespace):
    first, second = elector(cluster, namespace, "first"), elector(cluster, namespace, "second")
    exits = stopping_by_exception(first)
    assert first._try_acquire() and first.holds()
    assert not second._try_acquire()  # held, not expired

    # The first replica freezes: it renews no more, and its clock runs on meanwhile.
    frozen_at = time.monotonic()
    took_over = wait_for(
        lambda: second._try_acquire(), bool, 30, interval=0.1, what="the second replica takes the Lease"
    )
    assert took_over
    took_over_after = time.monotonic() - frozen_at
    # It could not take over before the first one's renew deadline had passed...
    assert took_over_after >= first.renew_deadline_seconds
    assert not first.holds()
    # ...and the first one, resumed, exits at its next write instead of writing.
    kube = Kube(cluster.api_client(), fence=first.fence)
    with pytest.raises(Exited):
        asyncio.run(kube.patch_status("generationjobs", namespace, "any", {"phase": "Running"}))
    assert exits == ["stopped"]
    lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(
        "gpufleet-operator", namespace
    )
    assert lease.spec.holder_identity == "second"


class FreezesWhenRead(dict):
    """A manifest part whose serialisation stands for a freeze: the replica is paused past its
    renew deadline while the client prepares the request, after any check made before it."""

    def __init__(self, leader: LeaderElector, *args: Any) -> None:
        super().__init__(*args)
        self.leader = leader

    def items(self) -> Any:
        assert self.leader.holds()  # the write began while the replica led
        self.leader.renewed_at = time.monotonic() - self.leader.renew_deadline_seconds - 1
        return super().items()


def test_a_freeze_while_a_write_is_prepared_stops_it_before_it_leaves(cluster, namespace):
    leader = elector(cluster, namespace, "first")
    exits = stopping_by_exception(leader)
    assert leader._try_acquire()
    kube = Kube(cluster.api_client(), fence=leader.fence)
    manifest = {
        "metadata": {"name": "written-by-a-frozen-replica"},
        "stringData": FreezesWhenRead(leader, {"token": "x"}),
    }
    with pytest.raises(Exited):
        asyncio.run(kube.create_secret(namespace, manifest))
    assert exits == ["stopped"]
    with pytest.raises(client.ApiException) as missing:
        client.CoreV1Api(cluster.api_client()).read_namespaced_secret(
            "written-by-a-frozen-replica", namespace
        )
    assert missing.value.status == 404


def test_timings_that_would_let_two_leaders_overlap_are_refused(cluster):
    api = client.CoordinationV1Api(cluster.api_client())
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaderElector(api, "default", lease_seconds=5, renew_deadline_seconds=5, retry_seconds=1)
    with pytest.raises(ValueError, match="retry period < renew deadline"):
        LeaderElector(api, "default", lease_seconds=5, renew_deadline_seconds=2, retry_seconds=3)


def test_a_released_lease_is_taken_at_once_and_the_releaser_writes_no_more(cluster, namespace):
    first, second = elector(cluster, namespace, "first"), elector(cluster, namespace, "second")
    exits = stopping_by_exception(first)
    assert first._try_acquire()
    assert not second._try_acquire()
    first.release()
    # No wait for expiry: the next try of the standby takes it.
    assert second._try_acquire()
    kube = Kube(cluster.api_client(), fence=first.fence)
    with pytest.raises(Exited):
        asyncio.run(kube.patch_status("generationjobs", namespace, "any", {"phase": "Running"}))
    assert exits == ["stopped"]
    first.release()  # no longer held: releasing again writes nothing
    lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(
        "gpufleet-operator", namespace
    )
    assert lease.spec.holder_identity == "second"


def test_a_renewal_is_one_write_and_a_stale_one_reads_the_lease_again(cluster, namespace):
    from unittest import mock

    first, second = elector(cluster, namespace, "first"), elector(cluster, namespace, "second")
    assert first._try_acquire()
    with (
        mock.patch.object(first.api, "read_namespaced_lease", wraps=first.api.read_namespaced_lease) as reads,
        mock.patch.object(
            first.api, "replace_namespaced_lease", wraps=first.api.replace_namespaced_lease
        ) as writes,
    ):
        assert first._try_acquire() and first._try_acquire()
        assert (reads.call_count, writes.call_count) == (0, 2)
        # The first replica stalls past its Lease; the second takes it over.
        wait_for(lambda: second._try_acquire(), bool, 30, interval=0.1, what="the second takes the Lease")
        # The first one's renewal from its stale copy is refused (409): it reads the Lease,
        # finds it held by another, and does not take it back.
        assert not first._try_acquire()
        assert (reads.call_count, writes.call_count) == (1, 3)
    lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(
        "gpufleet-operator", namespace
    )
    assert lease.spec.holder_identity == "second"
