"""New jobs' first statuses, written between rounds, and the claim that keeps them and the
rounds from writing one job at once."""

from __future__ import annotations

import pytest

from gpufleet.controller import admit, reconcile

from .fakes import NAMESPACE
from .test_round import in_loop, rounds


@in_loop
async def test_a_new_job_is_queued_before_its_pools_next_round_behind_its_priority_or_more(fleet):
    fleet.pool(workers=0)
    for name in ("a", "b", "c"):
        fleet.job(name)
    await fleet.round()
    assert [fleet.status(n)["queuePosition"] for n in "abc"] == [0, 1, 2]
    fleet.job("d")
    fleet.job("e")
    await admit.write_arrivals(fleet.op)
    assert fleet.status("d")["phase"] == "Queued"
    assert [fleet.status(n)["queuePosition"] for n in "de"] == [3, 4]
    assert fleet.status("e")["message"] == "position 4 in pool sd's queue"
    fleet.job("urgent", priority=50)
    await admit.write_arrivals(fleet.op)
    assert fleet.status("urgent")["queuePosition"] == 0  # ahead of all five
    await rounds(fleet, 1)
    assert fleet.status("urgent")["queuePosition"] == 0
    # The round keeps what was written, each job written once: the others moved back by one
    # place behind "urgent", which positions, rewritten coarsely (queue.position_due), leave.
    assert [fleet.status(n)["queuePosition"] for n in "abcde"] == [0, 1, 2, 3, 4]
    assert all(fleet.kube.status_writes[n] == 1 for n in "abcde"), fleet.kube.status_writes


@in_loop
async def test_jobs_the_writer_cannot_judge_are_left_to_their_round(fleet):
    fleet.pool(workers=0)
    fleet.job("before-any-round")
    assert admit.first_status(fleet.op, (NAMESPACE, "before-any-round")) is None
    await fleet.round()
    fleet.job("too-big", vram="80Gi")  # no GPU of the cluster has that: Pending, by its round
    fleet.job("cancelled", cancel=True)
    fleet.job("elsewhere", pool="no-such-pool")
    fleet.job("held")
    assert fleet.op.claim((NAMESPACE, "held"))  # as a round holds a job it writes
    for name in ("too-big", "cancelled", "elsewhere", "held"):
        assert admit.first_status(fleet.op, (NAMESPACE, name)) is None, name
    assert fleet.op.writing == {(NAMESPACE, "held")}
    assert not any(fleet.kube.status_writes[n] for n in ("too-big", "cancelled", "elsewhere", "held"))
    fleet.op.writing.clear()
    await rounds(fleet, 1)
    assert fleet.status("too-big")["phase"] == "Pending"
    assert fleet.status("cancelled")["phase"] == "Cancelled"
    assert fleet.status("held")["phase"] == "Queued"


@in_loop
async def test_a_round_neither_dispatches_nor_writes_a_job_whose_first_status_is_being_written(fleet):
    [worker] = fleet.pool()
    fleet.job("a")
    fleet.job("b")
    assert fleet.op.claim((NAMESPACE, "a"))  # the first-status writer holds it
    await rounds(fleet, 1)
    assert fleet.status("b")["phase"] == "Succeeded"
    assert fleet.kube.status_writes["a"] == 0 and len(worker.submits) == 1
    fleet.op.writing.clear()
    await rounds(fleet, 1)
    assert fleet.status("a")["phase"] == "Succeeded"


@in_loop
async def test_a_job_claimed_between_a_rounds_snapshot_and_its_dispatch_is_left_to_the_next(fleet):
    [worker] = fleet.pool()
    fleet.job("a")
    inventory = worker.inventory

    def claimed_meanwhile():  # the round awaits inventories after its snapshot
        fleet.op.claim((NAMESPACE, "a"))
        return inventory()

    worker.inventory = claimed_meanwhile
    await rounds(fleet, 1)
    assert fleet.kube.status_writes["a"] == 0 and worker.submits == []
    assert fleet.op.writing == {(NAMESPACE, "a")}  # the round released only its own claims
    worker.inventory = inventory
    fleet.op.writing.clear()
    await rounds(fleet, 1)
    assert fleet.status("a")["phase"] == "Succeeded" and len(worker.submits) == 1


@in_loop
async def test_a_pool_with_room_gets_its_new_job_from_its_round_at_once_a_full_one_is_not_woken(fleet):
    fleet.pool("full", workers=0)
    [worker] = fleet.pool("idle", workers=1)
    fleet.job("waiting", pool="full")
    await fleet.round("full")
    await fleet.round("idle")
    full, idle = (fleet.op.cache.wakeup(NAMESPACE, pool) for pool in ("full", "idle"))
    fleet.job("a", pool="full")
    fleet.job("b", pool="idle")
    full.clear()
    idle.clear()
    write = admit.first_status(fleet.op, (NAMESPACE, "a"))
    assert write is not None
    await write
    fleet.op.writing.clear()
    assert fleet.status("a")["phase"] == "Queued" and not full.is_set()
    # Where the last round left room the round takes the job, woken now: its first status is
    # Dispatched, with no Queued write before it.
    assert admit.first_status(fleet.op, (NAMESPACE, "b")) is None and idle.is_set()
    await rounds(fleet, 1, pool="idle")
    assert fleet.status("b")["phase"] == "Succeeded" and worker.submits
    assert fleet.kube.status_writes["b"] == 2


@in_loop
async def test_the_writer_outlives_a_failed_write_and_the_round_writes_that_job(fleet):
    fleet.pool(workers=0)
    fleet.job("waiting")
    await fleet.round()
    patch_status = fleet.kube.patch_status

    async def failing_for_a(plural, namespace, name, status):  # type: ignore[no-untyped-def]
        if name == "a":
            fleet.kube.writes["failed a"] += 1
            raise RuntimeError("the API server is unavailable")
        return await patch_status(plural, namespace, name, status)

    fleet.kube.patch_status = failing_for_a
    fleet.job("a")
    fleet.job("b")
    await admit.write_arrivals(fleet.op)  # does not raise: the writer's loop goes on
    assert fleet.kube.writes["failed a"] == 1  # the fault landed, in the same batch as b
    assert fleet.status("b")["phase"] == "Queued" and not fleet.op.writing
    fleet.job("c")
    await admit.write_arrivals(fleet.op)
    assert fleet.status("c")["phase"] == "Queued"
    assert fleet.status("a") == {}
    fleet.kube.patch_status = patch_status
    await fleet.round()
    assert fleet.status("a")["phase"] == "Queued"


@in_loop
async def test_a_round_that_fails_midway_releases_the_jobs_it_held(fleet):
    fleet.pool(workers=0)
    fleet.job("a", cancel=True)  # a write in the round's per-job step, so a claim
    fleet.job("b")
    job_view = reconcile.job_view

    def failing_for_b(job, memory):  # type: ignore[no-untyped-def]
        if job.metadata["name"] == "b":
            raise RuntimeError("a decision that fails")
        return job_view(job, memory)

    reconcile.job_view = failing_for_b
    try:
        with pytest.raises(RuntimeError):
            await fleet.round()
    finally:
        reconcile.job_view = job_view
    assert not fleet.op.writing
    await fleet.round()
    assert fleet.status("a")["phase"] == "Cancelled" and fleet.status("b")["phase"] == "Queued"
