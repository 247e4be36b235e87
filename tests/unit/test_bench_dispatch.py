"""The dispatch benchmark's fast worker speaks the worker protocol as the operator's own
client expects it, and the benchmark's summary arithmetic."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import gpufleet_worker.protocol as protocol
from bench.dispatch.__main__ import timings
from bench.dispatch.fastworker import FastWorker
from gpufleet.api.inputs import JobInput, Task
from gpufleet.controller.workers import WorkerClient, WorkerError

GIB = 2**30


def request(run: int, vram: int = GIB) -> protocol.SubmitRequest:
    return protocol.SubmitRequest(
        job_id=f"bench/j{run}",
        attempt=1,
        task=Task.TEXT_TO_IMAGE,
        model="tiny-sd",
        input=JobInput(prompt="a dot", width=64, height=64, steps=1),
        vram_bytes=vram,
        output_uri="s3://bench-artifacts/out/",
    )


def test_the_fast_worker_speaks_the_protocol_the_operator_uses():
    async def scenario() -> None:
        worker = FastWorker("fast-0", "secret", max_jobs=2, gpus=1, product="NVIDIA-L4", memory=24 * GIB)
        worker.run_seconds = 0.05
        server = await asyncio.start_server(worker.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient() as http:
            client = WorkerClient(http, "127.0.0.1", "secret", port)
            first = await client.submit(request(1))
            assert first.phase == protocol.Phase.RUNNING
            assert (await client.submit(request(1))).run_id == first.run_id  # a repeat is the same run
            await client.submit(request(2))
            with pytest.raises(WorkerError) as full:
                await client.submit(request(3))
            assert (full.value.status, full.value.reason) == (409, "TooManyJobs")
            inventory = await client.inventory()
            assert inventory.gpus[0].running_jobs == 2 and inventory.gpus[0].reserved_bytes == 2 * GIB
            events = [event async for _, event in client.events(first.run_id)]
            assert [e.event for e in events] == [protocol.EventName.RESULT]
            assert events[0].status is not None and events[0].status.phase == protocol.Phase.SUCCEEDED
            assert await client.get("bench_nothing_1") is None
            with pytest.raises(WorkerError) as refused:
                await WorkerClient(http, "127.0.0.1", "wrong", port).inventory()
            assert refused.value.status == 401

    asyncio.run(scenario())


def test_timings_give_the_rate_from_first_to_last_start_and_the_wait_percentiles():
    created = {f"j{i}": float(i) for i in range(10)}
    started = {f"j{i}": 100.0 + i / 2 for i in range(10)}  # 2 a second
    summary = timings(created, started)
    assert summary["jobs"] == 10
    assert summary["rate"] == pytest.approx(2.0)
    assert summary["p50"] == pytest.approx(98.0)  # waits 95.5 .. 100 in steps of 0.5; the 6th of 10


def test_the_held_jobs_measure_counts_shared_objects_once_and_sees_the_compact_jobs():
    from bench.dispatch import held

    shared = "x" * 1000
    assert held.deep_size([[shared, shared]]) == held.deep_size([[shared]]) + 8
    figures = asyncio.run(held.measure(40))
    assert set(figures) == {"queued", "finished"}
    for operator_holds, as_decoded in figures.values():
        assert 0 < operator_holds < as_decoded
